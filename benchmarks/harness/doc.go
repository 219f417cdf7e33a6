// Package harness runs issue 7's node-level benchmarks in one pass on the
// real kernel: exec overhead with no program, with execgate's shared program
// and 1 to 10,000 loaded pod policies, and with the one-program-per-policy
// peer baseline; kernel memory per node; the cluster-size view. It returns
// plain numbers (Results); package report decides what they mean and
// renders them.
//
// It needs root, BPF and a cgroup v2 mount, and says so instead of
// measuring something else. Every program, pin and cgroup it creates is
// removed before Run returns, on error and cancellation too.
//
// Items 4-6 of the issue (bind-to-kernel latency, scheduling throughput,
// policy update through the control plane) need a real kube-apiserver,
// kube-scheduler, webhook and agents: Config.ControlPlane runs them
// (package benchmarks/controlplane) after the node benchmarks.
package harness
