//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/*
 * The peer baseline: one program per policy on the exec hook, the model the
 * seed team measured on Tetragon (one TracingPolicy per workload). Every
 * policy is its own program with its own two maps, and every exec on the
 * node runs every program: each one checks "is this task in my cgroups?"
 * and only the matching one checks the path.
 *
 * This is the cheapest honest version of that model: the cgroup check is one
 * hash lookup (Tetragon's policy filter), the path check one lookup of the
 * name passed to execve (bprm->filename, like a matchBinaries string map),
 * no events, no per-CPU scratch. What grows with N is what the model itself
 * costs: N program runs per exec.
 *
 * Helpers: bpf_get_current_cgroup_id 4.18, bpf_probe_read_kernel_str 5.5,
 * bpf_send_signal 5.3.
 */
#include "peer_vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define EPERM 1
/* Tetragon's string maps use fixed-size buckets; one bucket is enough here. */
#define PEER_PATH_LEN 256

/* path_key: the exec'd name, NUL padded to PEER_PATH_LEN. */
struct path_key {
	char path[PEER_PATH_LEN];
};

/* cgroups: cgroup id (kernfs id) of a pod or container -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u8);
	__uint(max_entries, 64); /* resized by the loader */
} cgroups SEC(".maps");

/* allowlist: path_key -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct path_key);
	__type(value, __u8);
	__uint(max_entries, 64); /* resized by the loader */
} allowlist SEC(".maps");

const struct path_key *unused_path_key __attribute__((unused));

/* denied reports whether this policy forbids the exec. */
static __always_inline bool denied(struct linux_binprm *bprm)
{
	__u64 cg = bpf_get_current_cgroup_id();
	struct path_key k = {};

	if (!bpf_map_lookup_elem(&cgroups, &cg))
		return false; /* not one of this policy's pods: the common case */
	if (bpf_probe_read_kernel_str(k.path, sizeof(k.path), BPF_CORE_READ(bprm, filename)) < 0)
		return true;
	return bpf_map_lookup_elem(&allowlist, &k) == NULL;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(peer_exec_kill, struct task_struct *p, int old_pid, struct linux_binprm *bprm)
{
	if (denied(bprm))
		bpf_send_signal(9);
	return 0;
}

/* On a trampoline kernel at most BPF_MAX_TRAMP_LINKS (38) of these attach. */
SEC("fmod_ret/security_bprm_creds_for_exec")
int BPF_PROG(peer_fmod_ret, struct linux_binprm *bprm, int ret)
{
	if (ret)
		return ret;
	return denied(bprm) ? -EPERM : 0;
}
