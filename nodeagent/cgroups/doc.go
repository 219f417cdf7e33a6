// Package cgroups knows where a node's pods live in the cgroup v2 hierarchy and when
// their cgroups appear and disappear.
//
// It owns: discovery of the cgroup2 mount (hybrid hosts mount it at
// /sys/fs/cgroup/unified, pure v2 hosts at /sys/fs/cgroup), the kubelet's naming of
// pod and container cgroups for both cgroup drivers and all QoS classes, the cgroup id
// the BPF program keys on (the kernfs id, which is the directory's inode number on
// 64-bit kernels), and an inotify watcher that reports pod and container cgroups of
// interest without polling.
//
// It must not talk to the API server or touch BPF: callers pass pod UIDs in and get
// paths and cgroup ids out. Every name read from the cgroup filesystem or /proc is
// treated as untrusted input and validated before it is believed.
package cgroups
