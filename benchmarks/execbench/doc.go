// Package execbench holds what every exec-path benchmark shares: the
// synthetic pod policies (50 paths each) and the enforcer sized for them,
// the two tiny static programs that are timed (exit0, and execloop that
// forks and execs it), real cgroups to run them in, and the summary
// statistics. The Go benchmarks in nodeagent/enforcer and the execgate-bench
// harness both use it, so their numbers describe the same workload.
//
// It measures; it must not decide what a result means (package harness and
// report do) and it must not be imported by product code.
package execbench
