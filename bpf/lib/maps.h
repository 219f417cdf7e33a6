// SPDX-License-Identifier: GPL-2.0
/*
 * Every map and load-time constant; sizes marked "resized by the loader" are
 * set from the agent's flags.
 * Part of execgate.bpf.c, included by it in order; not a header of its own.
 */
#ifndef EXECGATE_MAPS_H
#define EXECGATE_MAPS_H

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct binding);
	__uint(max_entries, 2304); /* resized by the loader (--max-pods) */
} bindings SEC(".maps");

/*
 * mntns_pins: the task's own cgroup id -> the mount namespace of the first
 * exec checked in that cgroup. A container's processes share the mount
 * namespace its runtime made before the container's first exec; an exec from
 * any other one (unshare -m, setns) names its file in a tree the attacker may
 * have mounted over, so it is never allowed. This program inserts (once per
 * cgroup, BPF_NOEXIST); user space deletes the pins a binding decided when it
 * removes the binding. Not an LRU: an evicted pin would be taken again by
 * whichever exec comes next, the attacker's included.
 */
struct mntns_pin {
	__u64 bound_cgroup_id; /* the binding that decided the pinning exec */
	__u32 mntns;	       /* ns.inum, the inode of /proc/PID/ns/mnt */
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct mntns_pin);
	__uint(max_entries, 9216); /* resized by the loader (4 x --max-pods bindings) */
} mntns_pins SEC(".maps");

/*
 * runtime_files: the node's container runtime executables (runc, crun) by
 * inode, as the kernel names them (s_dev, i_ino). Written only from user
 * space, which finds them on the host. See runtime_reexec.
 */
struct file_id {
	__u64 ino;
	__u32 dev;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct file_id);
	__type(value, __u8);
	__uint(max_entries, 64);
} runtime_files SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct exact_key);
	__type(value, __u8);
	__uint(max_entries, 65536); /* resized by the loader (--max-entries) */
} exact_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct prefix_key);
	__type(value, __u8);
	__uint(max_entries, 4096);
} prefix_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct siphash_key);
	__uint(max_entries, 1);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counters);
	__uint(max_entries, 1);
} stats SEC(".maps");

/*
 * Fixed per-CPU working memory; never per policy. Trampoline programs (lsm,
 * fmod_ret) and, on kernels with preemptible tracepoints, tp_btf run with
 * migration off but preemption on (CONFIG_PREEMPT, CONFIG_PREEMPT_LAZY): an
 * exec on the same CPU may preempt a decision anywhere, so a decision owns a
 * slot from its first byte of path to its return (claim_scratch). When every
 * slot of the CPU is held (that many decisions preempted inside the program
 * at once) the exec is decided closed and counted (STAT_SCRATCH_BUSY).
 * Memory: SCRATCH_SLOTS x sizeof(struct scratch) (~10 KB) per possible CPU.
 */
#define SCRATCH_SLOTS 4

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct scratch);
	__uint(max_entries, SCRATCH_SLOTS);
} scratch SEC(".maps");

/*
 * exec_stamp, in task storage (5.11+): the last exec a twin program decided
 * for the task, and its verdict. An exec is named by the task's exec count
 * (self_exec_id: it changes only when an exec commits) and the file's inode,
 * so a stamp left by an attempt that failed after the check can match only
 * a retry of the very same file, which gets the same verdict.
 */
struct exec_stamp {
	__u64 exec_id;
	__u64 ino;
	__u32 dev;
	__s32 ret;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct exec_stamp);
} decided SEC(".maps");

/* The gate's own working memory: it asks one question at a time. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct scratch);
	__uint(max_entries, 1);
} gate_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct gate_request);
	__uint(max_entries, 1);
} gate_question SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* resized by the loader */
} events SEC(".maps");

/* Set by the loader before load; false on kernels without bpf_task_pt_regs. */
const volatile bool have_task_pt_regs = false;
/* The host's mount namespace (ns.inum), where the runtime runs; 0: none known. */
const volatile __u32 runtime_mntns = 0;

/* Anchors BTF for every type the Go side mirrors (bpf2go -type). */
struct btf_anchor {
	struct event ev;
	struct binding b;
	struct exact_key ek;
	struct prefix_key pk;
	struct siphash_key c;
	struct counters st;
	struct mntns_pin mp;
	struct file_id fi;
	struct gate_request gr;
	struct gate_verdict gv;
	enum mode m;
	enum action a;
	enum path_flags pf;
	enum binding_flags bf;
	enum stat sn;
};
const struct btf_anchor *unused_btf_anchor __attribute__((unused));

#endif /* EXECGATE_MAPS_H */
