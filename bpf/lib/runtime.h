// SPDX-License-Identifier: GPL-2.0
/*
 * The container runtime's re-exec of itself.
 * Part of execgate.bpf.c, included by it in order; not a header of its own.
 */
#ifndef EXECGATE_RUNTIME_H
#define EXECGATE_RUNTIME_H

static __always_inline bool runtime_file(struct file *f)
{
	struct file_id id = {};

	if (!f)
		return false;
	id.ino = BPF_CORE_READ(f, f_inode, i_ino);
	id.dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
	return bpf_map_lookup_elem(&runtime_files, &id) != NULL;
}

/*
 * runtime_reexec: is this exec the container runtime running a copy of
 * itself, not the workload? runc joins the container's cgroup before its
 * init re-executes a clone of the runc binary (a read-only bind mount of it,
 * the same inode, or a sealed memfd copy: a file on no mounted tree), so
 * that exec is under the pod's binding although the container has not
 * started. It is exempt only when all hold:
 *   - the task is in the host's mount namespace: before the container's
 *     mount namespace exists. Every exec of the workload, the entrypoint
 *     and `kubectl exec` included, happens in the container's own;
 *   - the task or its parent runs a runtime executable (by inode), so only
 *     the runtime's own processes qualify;
 *   - the file is a runtime executable or has no path (PATH_DETACHED).
 * crun does not re-execute itself: its entrypoint exec comes from the
 * container's mount namespace and is checked. In exec_kill (HOW_COMMITTED)
 * the task already runs the new file, so the task clause reads the file
 * itself and a memfd copy passes only through the parent clause.
 */
static __always_inline bool runtime_reexec(struct task_struct *task, struct file *file, __u32 mntns, __u16 flags)
{
	if (!runtime_mntns || mntns != runtime_mntns)
		return false;
	if (!runtime_file(BPF_CORE_READ(task, mm, exe_file)) &&
	    !runtime_file(BPF_CORE_READ(task, real_parent, mm, exe_file)))
		return false;
	return (flags & PATH_DETACHED) || runtime_file(file);
}

#endif /* EXECGATE_RUNTIME_H */
