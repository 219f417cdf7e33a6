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

#define EPERM 1
#define ESRCH 3

/* PATH_MAX including the NUL; event data has NAME_MAX and more of slack. */
#define PATH_LEN 4096
#define NAME_MAX_LEN 255
/* Deeper paths are never allowed: see PATH_TOO_DEEP. */
#define MAX_DEPTH 64
/*
 * Cgroup levels looked up, from the top: a binding deeper than this is never
 * found (pod and container cgroups sit at levels 3-5), a task any deeper
 * below a binding still is.
 */
#define MAX_LEVELS 64
#define ARGV_LEN 512
#define MAX_ARGS 32
/* The LPM key holds the slot (4 bytes) and at most this many path bytes. */
#define PREFIX_LEN 252

enum mode {
	MODE_LEARN = 1,
	MODE_MONITOR = 2,
	MODE_PROTECT = 3,
};

enum action {
	ACTION_LEARNED = 1,  /* Learn: allowed and recorded */
	ACTION_REPORTED = 2, /* Monitor: allowed, reported as a violation */
	ACTION_DENIED = 3,   /* Protect: -EPERM, reported */
};

/* Event and decision flags. */
enum path_flags {
	PATH_DETACHED = 1 << 0,  /* not reachable from a mount: memfd, pipe, anon */
	PATH_DELETED = 1 << 1,   /* unlinked while still open */
	PATH_TOO_DEEP = 1 << 2,  /* more than MAX_DEPTH components */
	PATH_TOO_LONG = 1 << 3,  /* longer than PATH_LEN - 1 */
	ARGV_TRUNCATED = 1 << 4, /* more than ARGV_LEN bytes or MAX_ARGS args */
	ARGV_MISSING = 1 << 5,   /* kernel older than 5.15 or not a plain execve */
	FOREIGN_MNTNS = 1 << 6,  /* not the mount namespace pinned for the cgroup */
	KILLED = 1 << 7,         /* exec_kill mode: denied by SIGKILL, not EPERM */
	/* Any of these: the file has no name we can trust, never allowed. */
	PATH_UNTRUSTED = PATH_DETACHED | PATH_DELETED | PATH_TOO_DEEP | PATH_TOO_LONG | FOREIGN_MNTNS,
};

enum binding_flags {
	BINDING_HAS_PREFIX = 1 << 0, /* the slot has directory-prefix rules */
};

/*
 * bindings: cgroup id (kernfs id == inode of the cgroup v2 directory) ->
 * which allowlist applies and how. Written only from user space; each update
 * replaces the whole value, so a reader sees the old or the new binding.
 */
struct binding {
	__u32 slot;
	__u8 mode;
	__u8 flags;
	__u16 _pad;
};

/* exact_rules: {slot, SipHash-2-4(path)} -> 1. */
struct exact_key {
	__u32 slot;
	__u32 _pad;
	__u64 hash;
};

/*
 * prefix_rules: LPM trie over {slot (big endian), path bytes}. A rule's
 * prefixlen always covers the slot, so rules never leak across slots.
 */
struct prefix_key {
	__u32 prefixlen;
	__u32 slot_be;
	__u8 path[PREFIX_LEN];
};

/* config[0]: the per-boot SipHash key. Only root can read it. */
struct siphash_key {
	__u64 k0;
	__u64 k1;
};

enum stat {
	STAT_CHECKED,    /* execs in a bound cgroup */
	STAT_ALLOWED,    /* matched the allowlist */
	STAT_LEARNED,
	STAT_REPORTED,
	STAT_DENIED,
	STAT_DROPPED,    /* events lost because the ring buffer was full */
	STAT_UNTRUSTED,  /* executables without a trustworthy path */
	STAT_SCRATCH_BUSY, /* every scratch slot of the CPU in use: decided closed, no event */
	STAT_TWIN_DECIDED, /* a twin program had decided this exec already: see exec_stamp */
	STAT_RUNTIME,    /* the container runtime re-executing itself: see runtime_reexec */
	STAT_MAX,
};

struct counters {
	__u64 count[STAT_MAX];
};

/*
 * Event record: a fixed header, then data = path bytes (path_len, no NUL)
 * followed by argv (argv_len bytes, NUL separated). Only header + path_len +
 * argv_len bytes are written to the ring buffer.
 */
struct event {
	__u64 boot_ns;
	__u64 cgroup_id;       /* the task's own cgroup */
	__u64 bound_cgroup_id; /* the cgroup whose binding decided */
	__u32 slot;
	__u32 pid;  /* tgid */
	__u32 tid;
	__u32 ppid; /* tgid of real_parent */
	__u32 uid;
	__u32 argc;
	__u8 mode;
	__u8 action;
	__u16 flags;
	__u16 path_len;
	__u16 argv_len;
	__u16 _pad;
	char parent_comm[16]; /* the parent process's comm (TASK_COMM_LEN) */
	char data[PATH_LEN + 2 * ARGV_LEN] __attribute__((aligned(8)));
};

struct scratch {
	char path[PATH_LEN + NAME_MAX_LEN + 1] __attribute__((aligned(8))); /* built right to left */
	struct prefix_key pk; /* LPM lookup key: too big for the stack */
	struct event ev;
	__u32 gate_len; /* bytes of ev the gate returns (0: no event) */
	__u32 claim;    /* decisions holding or trying this slot: see claim_scratch */
};

/* Where the deciding program stands, which says where argv comes from. */
enum how {
	HOW_SYSCALL,   /* lsm, fmod_ret: before the exec commits; task is current */
	HOW_COMMITTED, /* exec_kill: after the exec committed; task is current */
	HOW_GATE,      /* the fanotify gate: task is blocked in execve, current is the gate */
};

/*
 * gate_question[0]: the question the fanotify gate asks before it answers a
 * FAN_OPEN_EXEC_PERM event: may task pid (in the initial pid namespace) run
 * the file the gate holds open at fd? The gate asks one question at a time.
 */
struct gate_request {
	__s32 fd;
	__s32 pid;
};

/*
 * The answer, the iterator's whole output: this header, then event_len bytes
 * of struct event when the exec is denied (argv left to user space).
 */
struct gate_verdict {
	__s32 verdict; /* 0 allow, -EPERM deny, -ESRCH no such task */
	__u32 event_len;
	__u64 argv; /* the execve argv pointer in the task's memory, 0 if unknown */
};

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
	__u32 mntns;           /* ns.inum, the inode of /proc/PID/ns/mnt */
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

#define ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                          \
	do {                                                              \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                    \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                    \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
	} while (0)

/*
 * SipHash-2-4 of buf[start:start+len] (little endian), the same function user space
 * computes when it loads rules. A keyed PRF: without the per-boot key nobody
 * can pick a file name that collides with an allowed path.
 */
static __always_inline __u64 siphash(const struct siphash_key *key, const char *buf, __u32 start, __u32 len)
{
	__u64 v0 = key->k0 ^ 0x736f6d6570736575ULL;
	__u64 v1 = key->k1 ^ 0x646f72616e646f6dULL;
	__u64 v2 = key->k0 ^ 0x6c7967656e657261ULL;
	__u64 v3 = key->k1 ^ 0x7465646279746573ULL;
	__u32 blocks = len / 8;
	__u64 m, b;

	for (__u32 i = 0; i < PATH_LEN / 8; i++) {
		if (i >= blocks)
			break;
		m = *(const __u64 *)&buf[(start + i * 8) & (PATH_LEN - 1)];
		v3 ^= m;
		SIPROUND;
		SIPROUND;
		v0 ^= m;
	}
	b = ((__u64)len) << 56;
	if (len & 7) {
		m = *(const __u64 *)&buf[(start + blocks * 8) & (PATH_LEN - 1)];
		b |= m & ((1ULL << ((len & 7) * 8)) - 1);
	}
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

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
static __always_inline __u32 resolve_path(struct scratch *s, struct file *f, struct mount *ns_root,
					  __u16 *flags, __u32 *start)
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
	struct mntns_pin pin = { .bound_cgroup_id = bound_id, .mntns = mntns };
	struct mntns_pin *pinned = bpf_map_lookup_elem(&mntns_pins, &cgroup_id);

	if (!pinned) {
		if (!bpf_map_update_elem(&mntns_pins, &cgroup_id, &pin, BPF_NOEXIST))
			return false;
		pinned = bpf_map_lookup_elem(&mntns_pins, &cgroup_id);
	}
	return !pinned || pinned->mntns != mntns;
}

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

/*
 * decide returns -EPERM when task must not run file. In exec_kill mode
 * (HOW_COMMITTED) the exec already happened and the caller kills. The gate
 * (HOW_GATE) acts only on denials: an exec it lets through is decided again,
 * counted and reported by exec_kill once it commits.
 */
static __always_inline int decide(struct scratch *s, struct task_struct *task, struct file *file, int argc, enum how how,
				  bool *bound)
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
#define FMOD_RET_PROG(name, twin)                                             \
	SEC("fmod_ret/security_bprm_creds_for_exec")                          \
	int BPF_PROG(name, struct linux_binprm *bprm, int ret)                \
	{                                                                     \
		if (ret)                                                      \
			return ret;                                           \
		return decide_current(bprm, HOW_SYSCALL, twin);               \
	}

/*
 * For a script bprm->file is now the interpreter: exec_kill checks the
 * binary that actually runs, lsm and fmod_ret check the file named by exec.
 * bpf_send_signal: SIGKILL (5.3+), delivered before returning to user space.
 */
#define EXEC_KILL_PROG(name, twin)                                            \
	SEC("tp_btf/sched_process_exec")                                      \
	int BPF_PROG(name, struct task_struct *p, int old_pid, struct linux_binprm *bprm) \
	{                                                                     \
		if (decide_current(bprm, HOW_COMMITTED, twin) == -EPERM)      \
			bpf_send_signal(9);                                   \
		return 0;                                                     \
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
