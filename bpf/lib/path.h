// SPDX-License-Identifier: GPL-2.0
/*
 * The path walk (the file's name from the root of the task's mount namespace)
 * and the directory-prefix rule lookup.
 * Part of execgate.bpf.c, included by it in order; not a header of its own.
 */
#ifndef EXECGATE_PATH_H
#define EXECGATE_PATH_H

/*
 * resolve_path builds the path of f as d_path() would, crossing mounts, but
 * from the root of the mount namespace ns_root, not from the task's root: a
 * chrooted task cannot make /tmp/x/bin/sh pass for /bin/sh. Built right to
 * left in s->path; returns where it starts: the path is
 * s->path[*start, PATH_LEN), no NUL. Pseudo files (memfd), files on a mount
 * tree other than the namespace's (a detached mount, another namespace's
 * tree through /proc/PID/root), unlinked files and paths beyond the bounds
 * are flagged in *flags: PATH_UNTRUSTED files are never allowed. One loop,
 * one counter: the verifier's work stays linear in MAX_DEPTH.
 */
static __always_inline __u32 resolve_path(struct scratch *s, struct file *f, struct mount *ns_root, __u16 *flags,
					  __u32 *start)
{
	__u64 mnt_off = bpf_core_field_offset(struct mount, mnt);
	struct dentry *d = BPF_CORE_READ(f, f_path.dentry);
	struct vfsmount *vmnt = BPF_CORE_READ(f, f_path.mnt);
	struct mount *mnt = (struct mount *)((void *)vmnt - mnt_off);
	struct dentry *parent, *mnt_root;
	struct mount *mnt_parent;
	const unsigned char *name;
	__u32 pos = PATH_LEN, len, i;

	if (!BPF_CORE_READ(d, d_hash.pprev) && BPF_CORE_READ(d, d_parent) != d)
		*flags |= PATH_DELETED;

	for (i = 0; i < MAX_DEPTH; i++) {
		mnt_root = BPF_CORE_READ(vmnt, mnt_root);
		parent = BPF_CORE_READ(d, d_parent);
		if (d == mnt_root) {
			mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
			if (mnt_parent == mnt) { /* root of a mount tree */
				if (mnt != ns_root)
					*flags |= PATH_DETACHED;
				break;
			}
			d = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = mnt_parent;
			vmnt = (struct vfsmount *)((void *)mnt + mnt_off);
			continue;
		}
		len = BPF_CORE_READ(d, d_name.len);
		name = BPF_CORE_READ(d, d_name.name);
		if (len > NAME_MAX_LEN || len + 2 > pos) { /* keep pos >= 1: at most PATH_LEN - 1 bytes */
			*flags |= PATH_TOO_LONG;
			break;
		}
		pos -= len;
		bpf_probe_read_kernel(&s->path[pos & (PATH_LEN - 1)], len & NAME_MAX_LEN, name);
		pos--;
		s->path[pos & (PATH_LEN - 1)] = '/';
		if (d == parent) {
			/* A dentry that is its own parent but not a mount root
			 * lives on no mounted tree: memfd, anon inode, pipe. */
			*flags |= PATH_DETACHED;
			break;
		}
		d = parent;
		/* Forget pos's exact range: states of different paths then
		 * compare equal and the verifier prunes them. */
		asm volatile("%0 &= 4095" : "+r"(pos));
	}
	if (i == MAX_DEPTH)
		*flags |= PATH_TOO_DEEP;
	if (pos == PATH_LEN) {
		pos--;
		s->path[PATH_LEN - 1] = '/';
	}
	*start = pos & (PATH_LEN - 1);
	return PATH_LEN - *start;
}

static __always_inline bool prefix_allowed(struct scratch *s, __u32 slot, __u32 start, __u32 len)
{
	struct prefix_key *k = &s->pk;

	k->prefixlen = 32 + 8 * (len < PREFIX_LEN ? len : PREFIX_LEN);
	k->slot_be = bpf_htonl(slot);
	bpf_probe_read_kernel(k->path, PREFIX_LEN, &s->path[start & (PATH_LEN - 1)]);
	return bpf_map_lookup_elem(&prefix_rules, k) != NULL;
}

#endif /* EXECGATE_PATH_H */
