/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel types peer.bpf.c reads, with preserve_access_index so field
 * offsets come from the running kernel's BTF (CO-RE). Names matter, layout
 * does not.
 */
#ifndef PEER_VMLINUX_H
#define PEER_VMLINUX_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed int __s32;
typedef signed long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
};

enum {
	BPF_F_NO_PREALLOC = 1,
};

struct linux_binprm {
	const char *filename;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
} __attribute__((preserve_access_index));

#endif
