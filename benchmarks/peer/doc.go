// Package peer is the benchmark's baseline: the one-program-per-policy model
// the seed team measured on Tetragon, rebuilt with the program types this
// kernel loads. Each Policy is its own program with its own cgroup and
// allowlist maps, attached to the exec hook next to every other one.
//
// It exists only to be measured next to execgate's shared program; it must
// not be used to enforce anything.
package peer

//go:generate go tool bpf2go -go-package peer -target amd64,arm64 -type path_key Peer peer.bpf.c -- -O2 -g -Wall -Werror
