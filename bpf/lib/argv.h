// SPDX-License-Identifier: GPL-2.0
/*
 * The command line of an exec, for events.
 * Part of execgate.bpf.c, included by it in order; not a header of its own.
 */
#ifndef EXECGATE_ARGV_H
#define EXECGATE_ARGV_H

/* Copies NUL-separated argv from user memory at [from, to) into ev->data. */
static __always_inline void copy_args(struct event *ev, __u32 start, const char *from, const char *to)
{
	__u32 len = to - from;
	long n;

	if (!from || to <= from) {
		ev->flags |= ARGV_MISSING;
		return;
	}
	if (len > ARGV_LEN) {
		len = ARGV_LEN;
		ev->flags |= ARGV_TRUNCATED;
	}
	/* keep the mask: clang would drop it, the verifier needs it */
	asm volatile("%0 &= 1023" : "+r"(len));
	n = bpf_probe_read_user(&ev->data[start & (PATH_LEN - 1)], len, from);
	if (n == 0)
		ev->argv_len = len;
}

/*
 * Before the exec commits (lsm, fmod_ret) argv is still the syscall's
 * argument in the old mm: read it through the syscall registers.
 */
/*
 * syscall_argv returns the argv argument of the execve or execveat task is
 * in, NULL for a kernel-initiated exec (usermode helper) or a compat syscall.
 */
static __always_inline const char *const *syscall_argv(struct task_struct *task)
{
	const char *const *argv = NULL;
	struct pt_regs *regs;
	long nr;

	if (!have_task_pt_regs)
		return NULL;
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
#if defined(__TARGET_ARCH_x86)
	nr = BPF_CORE_READ(regs, orig_ax);
	if (nr == 59) /* execve(path, argv, envp) */
		argv = (const char *const *)BPF_CORE_READ(regs, si);
	else if (nr == 322) /* execveat(fd, path, argv, envp, flags) */
		argv = (const char *const *)BPF_CORE_READ(regs, dx);
#elif defined(__TARGET_ARCH_arm64)
	nr = BPF_CORE_READ(regs, syscallno);
	if (nr == 221)
		argv = (const char *const *)BPF_CORE_READ(regs, regs[1]);
	else if (nr == 281)
		argv = (const char *const *)BPF_CORE_READ(regs, regs[2]);
#endif
	return argv;
}

static __always_inline void read_argv_syscall(struct event *ev, __u32 start)
{
	const char *const *argv = NULL;
	const char *arg;
	__u32 off = 0, at;
	int n;

	/* before the helper call: bpf_get_current_task_btf is 5.11+ */
	if (have_task_pt_regs)
		argv = syscall_argv(bpf_get_current_task_btf());
	if (!argv) {
		ev->flags |= ARGV_MISSING;
		return;
	}
	for (int i = 0; i < MAX_ARGS; i++) {
		if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) || !arg)
			break;
		if (off >= ARGV_LEN) {
			ev->flags |= ARGV_TRUNCATED;
			break;
		}
		/*
		 * One unsigned 32-bit index, checked against the buffer right
		 * before use: a sum of two masked values is what clang may
		 * rewrite into 64-bit arithmetic whose bounds the verifier of
		 * lsm/fmod_ret programs on 6.1+ loses ("unbounded memory
		 * access"). The barrier keeps clang from folding the check.
		 */
		at = (start & (PATH_LEN - 1)) + off;
		asm volatile("" : "+r"(at));
		if (at > sizeof(ev->data) - ARGV_LEN)
			break;
		n = bpf_probe_read_user_str(&ev->data[at], ARGV_LEN, arg);
		if (n <= 0)
			break;
		off += n;
		if (i == MAX_ARGS - 1)
			ev->flags |= ARGV_TRUNCATED;
	}
	if (off > ARGV_LEN) {
		off = ARGV_LEN;
		ev->flags |= ARGV_TRUNCATED;
	}
	ev->argv_len = off;
}

#endif /* EXECGATE_ARGV_H */
