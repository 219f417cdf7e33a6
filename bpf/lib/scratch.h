// SPDX-License-Identifier: GPL-2.0
/*
 * Counters and the per-CPU scratch slots a decision works in.
 * Part of execgate.bpf.c, included by it in order; not a header of its own.
 */
#ifndef EXECGATE_SCRATCH_H
#define EXECGATE_SCRATCH_H

static __always_inline void count(enum stat s)
{
	__u32 zero = 0;
	struct counters *st = bpf_map_lookup_elem(&stats, &zero);

	/* atomic add (BPF_XADD, 5.10+, result unused): a preempting exec on
	 * this CPU may count between our load and store */
	if (st && s < STAT_MAX)
		__sync_fetch_and_add(&st->count[s], 1);
}

/*
 * claim_scratch returns a slot of this CPU's scratch that no other decision
 * holds, or NULL when all are held. Only an atomic add whose result is
 * unused (BPF_XADD: 5.10 has no fetching atomics) and a plain load: each
 * decision between its add and its give-back counts one in claim, so a
 * decision that reads 1 right after its own add is alone in the slot until
 * it gives it back. Two contenders may both read 2 and both move on: that
 * costs a slot, never exclusivity.
 */
static __always_inline struct scratch *claim_scratch(void)
{
	struct scratch *s;

	/* Unrolled, and the key apart from the counter: the 6.1 and 6.12
	 * verifiers lose the counter once its address is passed to a helper
	 * and call the loop infinite. */
#pragma unroll
	for (__u32 i = 0; i < SCRATCH_SLOTS; i++) {
		__u32 key = i;

		s = bpf_map_lookup_elem(&scratch, &key);
		if (!s)
			return NULL;
		__sync_fetch_and_add(&s->claim, 1);
		if (*(volatile __u32 *)&s->claim == 1)
			return s;
		__sync_fetch_and_add(&s->claim, -1);
	}
	return NULL;
}

static __always_inline void release_scratch(struct scratch *s)
{
	__sync_fetch_and_add(&s->claim, -1);
}

#endif /* EXECGATE_SCRATCH_H */
