// SPDX-License-Identifier: GPL-2.0
/*
 * Events to user space through the ring buffer.
 * Part of execgate.bpf.c, included by it in order; not a header of its own.
 */
#ifndef EXECGATE_EVENTS_H
#define EXECGATE_EVENTS_H

static __always_inline void emit(struct scratch *s, struct task_struct *task, __u32 path_len, enum how how)
{
	struct event *ev = &s->ev;
	__u64 size;

	ev->boot_ns = bpf_ktime_get_boot_ns();
	ev->pid = BPF_CORE_READ(task, tgid);
	ev->tid = BPF_CORE_READ(task, pid);
	ev->ppid = BPF_CORE_READ(task, real_parent, tgid);
	ev->uid = BPF_CORE_READ(task, cred, uid.val);
	ev->argv_len = 0;
	if (how == HOW_COMMITTED) /* the new mm holds argv at [arg_start, arg_end) */
		copy_args(ev, path_len, (const char *)BPF_CORE_READ(task, mm, arg_start),
			  (const char *)BPF_CORE_READ(task, mm, arg_end));
	else if (how == HOW_SYSCALL)
		read_argv_syscall(ev, path_len);
	else /* argv is in the blocked task's memory: the gate reads it from /proc */
		ev->flags |= ARGV_MISSING;
	/* The parent's executable path is looked up by user space from ppid:
	 * a second path walk here would double the verifier's work. */
	BPF_CORE_READ_STR_INTO(&ev->parent_comm, task, real_parent, comm);

	size = offsetof(struct event, data) + (path_len & (PATH_LEN - 1)) + (ev->argv_len & (ARGV_LEN * 2 - 1));
	if (size > sizeof(struct event))
		size = sizeof(struct event);
	if (how == HOW_GATE) {
		s->gate_len = size;
		return;
	}
	if (bpf_ringbuf_output(&events, ev, size, 0))
		count(STAT_DROPPED);
}

#endif /* EXECGATE_EVENTS_H */
