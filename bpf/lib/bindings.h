// SPDX-License-Identifier: GPL-2.0
/*
 * Which binding covers a cgroup, and the mount namespace pin.
 * Part of execgate.bpf.c, included by it in order; not a header of its own.
 */
#ifndef EXECGATE_BINDINGS_H
#define EXECGATE_BINDINGS_H

/* The id of cg's ancestor at level (cg itself at its own level). */
static __always_inline __u64 ancestor_id(struct cgroup *cg, int level)
{
	struct cgroup___ids *old = (void *)cg;

	if (bpf_core_field_exists(cg->ancestors))
		return BPF_CORE_READ(cg, ancestors[level], kn, id);
	return BPF_CORE_READ(old, ancestor_ids[level]);
}

/*
 * find_binding returns the binding of cg's deepest bound ancestor (cg
 * included; a container's rules beat its pod's) and its id in *bound_id.
 * Ancestors are indexed by level from the top, so nesting cgroups below a
 * binding cannot walk the task out of reach: levels min(level, MAX_LEVELS)
 * down to 1 are looked up, the first hit is the deepest. The root cgroup
 * (level 0) is never bound.
 */
static __always_inline struct binding *find_binding(struct cgroup *cg, __u64 *bound_id)
{
	int level = BPF_CORE_READ(cg, level);
	struct binding *b;
	__u64 id;

	if (level > MAX_LEVELS)
		level = MAX_LEVELS;
	for (int i = 0; i < MAX_LEVELS; i++) {
		if (level - i < 1)
			break;
		id = ancestor_id(cg, level - i);
		b = bpf_map_lookup_elem(&bindings, &id);
		if (b) {
			*bound_id = id;
			return b;
		}
	}
	return NULL;
}

/*
 * foreign_mntns pins the mount namespace of the first exec checked in the
 * cgroup, and reports whether mntns is another one. Two first execs racing
 * from two namespaces: one insert wins, the other is foreign. A full map
 * pins nothing: fail closed.
 */
static __always_inline bool foreign_mntns(__u64 cgroup_id, __u64 bound_id, __u32 mntns)
{
	struct mntns_pin pin = {.bound_cgroup_id = bound_id, .mntns = mntns};
	struct mntns_pin *pinned = bpf_map_lookup_elem(&mntns_pins, &cgroup_id);

	if (!pinned) {
		if (!bpf_map_update_elem(&mntns_pins, &cgroup_id, &pin, BPF_NOEXIST))
			return false;
		pinned = bpf_map_lookup_elem(&mntns_pins, &cgroup_id);
	}
	return !pinned || pinned->mntns != mntns;
}

#endif /* EXECGATE_BINDINGS_H */
