// SPDX-License-Identifier: GPL-2.0
/*
 * SipHash-2-4, the same function user space keys the exact rules with.
 * Part of execgate.bpf.c, included by it in order; not a header of its own.
 */
#ifndef EXECGATE_SIPHASH_H
#define EXECGATE_SIPHASH_H

#define ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
/* The reference implementation's layout, one half-round a line. */
// clang-format off
#define SIPROUND                                                          \
	do {                                                              \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                    \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                    \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
	} while (0)
// clang-format on

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

#endif /* EXECGATE_SIPHASH_H */
