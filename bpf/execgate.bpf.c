//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/*
 * execgate: one shared program on the exec path.
 *
 * For every execve on the node the program answers one question: may the
 * task's cgroup run this file? The cost is at most one hash lookup per level
 * of the task's cgroup (usually 3-5) plus, only for tasks in a bound cgroup,
 * one path walk, one mount namespace pin lookup, one SipHash and one or two
 * rule lookups. Nothing depends on how many policies are loaded.
 *
 * Attach points (the agent uses exactly one; tracing ones as twins, see
 * exec_stamp):
 *   lsm/bprm_creds_for_exec              BPF LSM, 5.7+, "bpf" in the LSM list
 *   fmod_ret/security_bprm_creds_for_exec trampolines, 5.7+, no boot flag
 *   tp_btf/sched_process_exec            5.5+, for kernels that refuse
 *                                        trampolines: the exec has succeeded,
 *                                        a denied one is killed (SIGKILL)
 *                                        before its first instruction.
 * and, beside exec_kill, the fanotify gate (iter/task_file, 6.2+): user space
 * holds a FAN_OPEN_EXEC_PERM event, runs this program on the event's file and
 * the blocked task, and answers FAN_DENY when it denies, so execve fails with
 * EPERM. Same decide(), same maps: the gate only moves the denial earlier.
 * bprm->file is the file the kernel executes, so the decision is about the
 * real file (symlinks already resolved, no TOCTOU on the name), named from
 * the root of the task's mount namespace: a chroot changes nothing.
 *
 * Helpers and their kernels: bpf_probe_read_kernel(_str) 5.5,
 * bpf_ringbuf_output 5.8, bpf_ktime_get_boot_ns 5.8, bpf_get_current_task_btf
 * 5.11 and bpf_task_pt_regs 5.15 (argv only, both gated by have_task_pt_regs:
 * the verifier never sees a call on the branch a frozen false skips).
 * Cgroup ancestors are read with CO-RE (cgroup->ancestors[] 6.1+,
 * ancestor_ids[] before), not bpf_get_current_ancestor_cgroup_id: tracing
 * and LSM programs may call that helper only from 5.18.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#include "lib/types.h"
#include "lib/maps.h"
#include "lib/scratch.h"
#include "lib/siphash.h"
#include "lib/path.h"
#include "lib/argv.h"
#include "lib/events.h"
#include "lib/bindings.h"
#include "lib/runtime.h"

/*
 * decide returns -EPERM when task must not run file. In exec_kill mode
 * (HOW_COMMITTED) the exec already happened and the caller kills. The gate
 * (HOW_GATE) acts only on denials: an exec it lets through is decided again,
 * counted and reported by exec_kill once it commits.
 */
static __always_inline int decide(struct scratch *s, struct task_struct *task, struct file *file, int argc,
				  enum how how, bool *bound)
{
	struct cgroup *cg = BPF_CORE_READ(task, cgroups, dfl_cgrp);
	struct binding bind, *found;
	__u64 leaf_id, bound_id = 0;
	struct siphash_key *key;
	struct event *ev;
	struct exact_key ek = {};
	__u32 zero = 0, len, start = 0, mntns;
	bool allowed = false, denied;
	enum action action;
	__u16 flags = 0;

	found = find_binding(cg, &bound_id);
	if (!found)
		return 0;
	bind = *found;
	*bound = true;
	leaf_id = BPF_CORE_READ(cg, kn, id);

	key = bpf_map_lookup_elem(&config, &zero);
	if (!s || !key) { /* no working memory: Protect and unknown modes fail closed */
		count(STAT_SCRATCH_BUSY);
		return bind.mode != MODE_LEARN && bind.mode != MODE_MONITOR ? -EPERM : 0;
	}
	ev = &s->ev;

	len = resolve_path(s, file, BPF_CORE_READ(task, nsproxy, mnt_ns, root), &flags, &start);
	mntns = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	/* before the pin: the runtime's exec must not pin the host's namespace */
	if (runtime_reexec(task, file, mntns, flags)) {
		count(STAT_RUNTIME);
		return 0;
	}
	if (foreign_mntns(leaf_id, bound_id, mntns))
		flags |= FOREIGN_MNTNS;
	if (!(flags & PATH_UNTRUSTED)) {
		ek.slot = bind.slot;
		ek.hash = siphash(key, s->path, start, len);
		allowed = bpf_map_lookup_elem(&exact_rules, &ek) != NULL;
		if (!allowed && (bind.flags & BINDING_HAS_PREFIX))
			allowed = prefix_allowed(s, bind.slot, start, len);
	}
	/* Protect, and any mode we do not know: fail closed. */
	denied = !allowed && bind.mode != MODE_LEARN && bind.mode != MODE_MONITOR;
	if (how == HOW_GATE && !denied)
		return 0;
	count(STAT_CHECKED);
	if (flags & PATH_UNTRUSTED)
		count(STAT_UNTRUSTED);
	if (allowed) {
		count(STAT_ALLOWED);
		return 0;
	}

	ev->cgroup_id = leaf_id;
	ev->bound_cgroup_id = bound_id;
	ev->slot = bind.slot;
	ev->mode = bind.mode;
	ev->flags = flags;
	ev->path_len = len;
	bpf_probe_read_kernel(ev->data, len & (PATH_LEN - 1), &s->path[start & (PATH_LEN - 1)]);
	ev->argc = argc;
	switch (bind.mode) {
	case MODE_LEARN:
		action = ACTION_LEARNED;
		count(STAT_LEARNED);
		break;
	case MODE_MONITOR:
		action = ACTION_REPORTED;
		count(STAT_REPORTED);
		break;
	default: /* Protect, and any mode we do not know: fail closed */
		action = ACTION_DENIED;
		count(STAT_DENIED);
		break;
	}
	ev->action = action;
	if (how == HOW_COMMITTED && action == ACTION_DENIED)
		ev->flags |= KILLED;
	emit(s, task, len, how);
	return action == ACTION_DENIED ? -EPERM : 0;
}

/*
 * A twin (see exec_stamp) first looks for its sibling's verdict on this very
 * exec, and stamps its own after deciding. Both steps stay outside decide(),
 * so the verifier walks decide() once, as for a single program. Only a bound
 * task gets storage: for any other the lookup finds none at once.
 */
static __always_inline int decide_current(struct linux_binprm *bprm, enum how how, bool twin)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file *file = BPF_CORE_READ(bprm, file);
	struct exec_stamp id = {}, *st;
	struct scratch *s;
	bool bound = false;
	int ret;

	if (twin) {
		id.exec_id = BPF_CORE_READ(task, self_exec_id);
		id.ino = BPF_CORE_READ(file, f_inode, i_ino);
		id.dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
		st = bpf_task_storage_get(&decided, bpf_get_current_task_btf(), 0, 0);
		if (st && st->exec_id == id.exec_id && st->ino == id.ino && st->dev == id.dev) {
			count(STAT_TWIN_DECIDED);
			/* after the commit the twin has already killed a denied exec */
			return how == HOW_COMMITTED ? 0 : st->ret;
		}
	}
	s = claim_scratch();
	/* decide() fails closed, and counts, on a NULL s */
	ret = decide(s, task, file, BPF_CORE_READ(bprm, argc), how, &bound);
	if (s)
		release_scratch(s);
	if (twin && bound) {
		st = bpf_task_storage_get(&decided, bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (st) {
			id.ret = ret;
			*st = id;
		}
	}
	return ret;
}

SEC("lsm/bprm_creds_for_exec")
int BPF_PROG(execgate_lsm, struct linux_binprm *bprm, int ret)
{
	if (ret)
		return ret; /* an earlier LSM program already denied */
	return decide_current(bprm, HOW_SYSCALL, false);
}

/*
 * fmod_ret and tp_btf programs are tracing programs: the kernel skips one
 * that is entered on a CPU where it is already running (the recursion guard,
 * prog->active, counted as recursion misses), and LSM programs are exempt.
 * On a kernel that preempts inside BPF programs (CONFIG_PREEMPT, and
 * PREEMPT_LAZY as Debian's 7.2 builds) a task preempted mid-decision makes
 * the next exec on that CPU skip the program: fmod_ret then returns the
 * original 0 and exec_kill sends nothing, so the exec runs undecided. Where
 * the kernel has task storage (5.11+) the agent attaches two copies, the _a
 * and _b twins, each with its own guard: the first to run decides and
 * stamps the exec, the other finds the stamp and returns the same verdict.
 * An exec is undecided only if both copies are busy on its CPU at once.
 * Kernels without task storage get the single program.
 */
#define FMOD_RET_PROG(name, twin)                               \
	SEC("fmod_ret/security_bprm_creds_for_exec")            \
	int BPF_PROG(name, struct linux_binprm *bprm, int ret)  \
	{                                                       \
		if (ret)                                        \
			return ret;                             \
		return decide_current(bprm, HOW_SYSCALL, twin); \
	}

/*
 * For a script bprm->file is now the interpreter: exec_kill checks the
 * binary that actually runs, lsm and fmod_ret check the file named by exec.
 * bpf_send_signal: SIGKILL (5.3+), delivered before returning to user space.
 */
#define EXEC_KILL_PROG(name, twin)                                                        \
	SEC("tp_btf/sched_process_exec")                                                  \
	int BPF_PROG(name, struct task_struct *p, int old_pid, struct linux_binprm *bprm) \
	{                                                                                 \
		if (decide_current(bprm, HOW_COMMITTED, twin) == -EPERM)                  \
			bpf_send_signal(9);                                               \
		return 0;                                                                 \
	}

FMOD_RET_PROG(execgate_fmod_ret, false)
FMOD_RET_PROG(execgate_fmod_ret_a, true)
FMOD_RET_PROG(execgate_fmod_ret_b, true)
EXEC_KILL_PROG(execgate_exec_kill, false)
EXEC_KILL_PROG(execgate_exec_kill_a, true)
EXEC_KILL_PROG(execgate_exec_kill_b, true)

extern struct task_struct *bpf_task_from_pid(__s32 pid) __ksym; /* 6.2+ */
extern void bpf_task_release(struct task_struct *p) __ksym;

/*
 * The fanotify gate's question, run as an iterator over the gate's own file
 * table (user space links it to the gate's tid): the file at
 * gate_question.fd is the one task gate_question.pid is opening for exec,
 * still blocked in execve. bpf_seq_write is the answer.
 */
SEC("iter/task_file")
int execgate_gate(struct bpf_iter__task_file *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct file *file = ctx->file;
	struct gate_verdict v = {};
	struct gate_request *rq;
	struct task_struct *task;
	struct scratch *s;
	bool bound = false; /* unused: the gate keeps no stamp */
	__u32 zero = 0, len;

	rq = bpf_map_lookup_elem(&gate_question, &zero);
	s = bpf_map_lookup_elem(&gate_scratch, &zero);
	if (!file || !rq || !s || ctx->fd != (__u32)rq->fd)
		return 0;
	s->gate_len = 0;
	task = bpf_task_from_pid(rq->pid);
	if (!task) {
		v.verdict = -ESRCH;
		bpf_seq_write(seq, &v, sizeof(v));
		return 0;
	}
	/*
	 * The file execve names is opened before bprm_execve() sets
	 * in_execve (6.8+: in alloc_bprm); an ELF or #! interpreter is opened
	 * after. Like the lsm hook, the gate checks the former only; exec_kill
	 * checks the binary that finally runs.
	 */
	if (!BPF_CORE_READ_BITFIELD_PROBED(task, in_execve))
		v.verdict = decide(s, task, file, 0, HOW_GATE, &bound);
	if (v.verdict)
		v.argv = (__u64)syscall_argv(task);
	bpf_task_release(task);
	len = s->gate_len;
	if (len > sizeof(struct event))
		len = sizeof(struct event);
	if (v.verdict)
		v.event_len = len;
	bpf_seq_write(seq, &v, sizeof(v));
	if (v.verdict && len)
		bpf_seq_write(seq, &s->ev, len);
	return 0;
}
