// Package bpf owns execgate's kernel program: the C source, the generated
// bpf2go bindings and the Go mirrors of the map keys, values and events.
//
// It knows nothing of Kubernetes: a cgroup id, an allowlist slot and a path
// are all it deals in. Loading, attaching and pinning belong to
// nodeagent/enforcer.
package bpf

//go:generate go tool bpf2go -go-package bpf -target amd64,arm64 -type event -type binding -type exact_key -type prefix_key -type siphash_key -type counters -type mntns_pin -type file_id -type gate_request -type gate_verdict -type stat -type mode -type action -type path_flags -type binding_flags Execgate execgate.bpf.c -- -O2 -g -Wall -Werror
