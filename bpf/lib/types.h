// SPDX-License-Identifier: GPL-2.0
/*
 * Constants and the types every part shares: modes, actions, flags, map keys
 * and values, the event record, the scratch slot and the gate's question and
 * answer. Every type the Go side mirrors is generated from these (bpf2go
 * -type).
 * Part of execgate.bpf.c, included by it in order; not a header of its own.
 */
#ifndef EXECGATE_TYPES_H
#define EXECGATE_TYPES_H

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
	PATH_DETACHED = 1 << 0,	 /* not reachable from a mount: memfd, pipe, anon */
	PATH_DELETED = 1 << 1,	 /* unlinked while still open */
	PATH_TOO_DEEP = 1 << 2,	 /* more than MAX_DEPTH components */
	PATH_TOO_LONG = 1 << 3,	 /* longer than PATH_LEN - 1 */
	ARGV_TRUNCATED = 1 << 4, /* more than ARGV_LEN bytes or MAX_ARGS args */
	ARGV_MISSING = 1 << 5,	 /* kernel older than 5.15 or not a plain execve */
	FOREIGN_MNTNS = 1 << 6,	 /* not the mount namespace pinned for the cgroup */
	KILLED = 1 << 7,	 /* exec_kill mode: denied by SIGKILL, not EPERM */
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
	STAT_CHECKED, /* execs in a bound cgroup */
	STAT_ALLOWED, /* matched the allowlist */
	STAT_LEARNED,
	STAT_REPORTED,
	STAT_DENIED,
	STAT_DROPPED,	   /* events lost because the ring buffer was full */
	STAT_UNTRUSTED,	   /* executables without a trustworthy path */
	STAT_SCRATCH_BUSY, /* every scratch slot of the CPU in use: decided closed, no event */
	STAT_TWIN_DECIDED, /* a twin program had decided this exec already: see exec_stamp */
	STAT_RUNTIME,	   /* the container runtime re-executing itself: see runtime_reexec */
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
	__u32 pid; /* tgid */
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
	struct prefix_key pk;						    /* LPM lookup key: too big for the stack */
	struct event ev;
	__u32 gate_len; /* bytes of ev the gate returns (0: no event) */
	__u32 claim;	/* decisions holding or trying this slot: see claim_scratch */
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

#endif /* EXECGATE_TYPES_H */
