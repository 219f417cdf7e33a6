package enforcer_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/execgate/execgate/benchmarks/execbench"
	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

// The node's hot paths on the real kernel, for benchstat comparisons. The
// workload (50-path pod policies, the static exit0 and execloop programs)
// is the one `make bench` measures, from benchmarks/execbench.
//
//	go test ./nodeagent/enforcer -run '^$' -bench . -count 10 > new.txt
//	benchstat old.txt new.txt

// BenchmarkExec times fork+exec of exit0 from a cgroup, with no program
// and, in every attach mode this kernel accepts, with 1 / 1,000 / 10,000
// loaded policies: "bound" runs in a cgroup bound to one of them, "unbound"
// in one with no policy (the common case on a node). ns/op is the wall time
// per exec including the timer's start. In fanotify mode every exec on the
// node, bound or not, waits for the gate's answer: "unbound" shows that cost.
func BenchmarkExec(b *testing.B) {
	testenv.RequireBPF(b)
	progs, err := execbench.BuildPrograms(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("no-program", func(b *testing.B) { runExecs(b, newCgroup(b, "none"), progs) })
	for _, mode := range []enforcer.AttachMode{enforcer.AttachLSM, enforcer.AttachFmodRet, enforcer.AttachFanotify, enforcer.AttachExecKill} {
		for _, n := range []int{1, 1000, 10000} {
			e, err := enforcer.New(execbench.EnforcerConfig("", mode, n))
			if err != nil {
				b.Logf("attach mode %s: %v", mode, err)
				break // this kernel refuses the mode
			}
			if err := execbench.LoadPolicies(e, 0, n, progs.Allowed()...); err != nil {
				b.Fatal(err)
			}
			bound, unbound := newCgroup(b, "bound"), newCgroup(b, "unbound")
			if err := e.Bind(bound.ID, execbench.PolicyKey(n-1), execbench.Container); err != nil {
				b.Fatal(err)
			}
			st, err := e.Stats()
			if err != nil {
				b.Fatal(err)
			}
			b.Run(fmt.Sprintf("mode=%s/policies=%d/bound", mode, n), func(b *testing.B) {
				runExecs(b, bound, progs)
				b.ReportMetric(float64(execbench.MapBytes(st))/float64(n), "mapbytes/policy")
			})
			b.Run(fmt.Sprintf("mode=%s/policies=%d/unbound", mode, n), func(b *testing.B) { runExecs(b, unbound, progs) })
			e.Close()
		}
	}
}

// BenchmarkPutPolicy loads one new 50-path policy into an enforcer that
// already holds 1,000: what the agent does when a pod of a new workload
// lands on the node.
func BenchmarkPutPolicy(b *testing.B) {
	testenv.RequireBPF(b)
	const loaded = 1000
	e := loadedEnforcer(b, loaded+b.N, loaded)
	i := loaded
	b.ResetTimer()
	for range b.N {
		if _, err := e.PutPolicy(execbench.PodPolicy(i, 1)); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkPutPolicyUpdate replaces a bound policy with a new version: the
// atomic switch of its bindings, an RCU grace period, the old entries'
// deletion.
func BenchmarkPutPolicyUpdate(b *testing.B) {
	testenv.RequireBPF(b)
	e := loadedEnforcer(b, 100, 100)
	if err := execbench.BindSyntheticPods(e, 0, 1); err != nil {
		b.Fatal(err)
	}
	version := uint64(1)
	b.ResetTimer()
	for range b.N {
		version++
		if applied, err := e.PutPolicy(execbench.PodPolicy(0, version)); err != nil || !applied {
			b.Fatalf("applied=%v, %v", applied, err)
		}
	}
}

// BenchmarkBind binds and unbinds one cgroup: a container starting and
// going away on a node with 1,000 policies.
func BenchmarkBind(b *testing.B) {
	testenv.RequireBPF(b)
	e := loadedEnforcer(b, 1000, 1000)
	id := execbench.SyntheticCgroupID(0, true)
	b.ResetTimer()
	for range b.N {
		if err := e.Bind(id, execbench.PolicyKey(0), execbench.Container); err != nil {
			b.Fatal(err)
		}
		if err := e.Unbind(id); err != nil {
			b.Fatal(err)
		}
	}
}

// loadedEnforcer starts an unpinned enforcer sized for capacity policies
// and loads n; it is closed, and the program detached, at cleanup.
func loadedEnforcer(b *testing.B, capacity, n int, allowed ...string) *enforcer.Enforcer {
	b.Helper()
	e, err := enforcer.New(execbench.EnforcerConfig("", enforcer.AttachAuto, capacity))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	if err := execbench.LoadPolicies(e, 0, n, allowed...); err != nil {
		b.Fatal(err)
	}
	return e
}

func newCgroup(b *testing.B, kind string) *testenv.Cgroup {
	return testenv.NewCgroup(b, "", fmt.Sprintf("execgate-gobench-%s-%d", kind, time.Now().UnixNano()))
}

// runExecs times b.N execs in one execloop run and reports their median
// and p99 as well.
func runExecs(b *testing.B, cg *testenv.Cgroup, progs execbench.Programs) {
	b.ResetTimer()
	d, err := execbench.TimeExecs(cg, progs, b.N)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	s := execbench.Summarize(d)
	b.ReportMetric(float64(s.Median), "median-ns/exec")
	b.ReportMetric(float64(s.P99), "p99-ns/exec")
}
