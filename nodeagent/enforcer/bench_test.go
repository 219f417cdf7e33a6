package enforcer

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/execgate/execgate/internal/testenv"
)

// BenchmarkExec measures fork+exec of /usr/bin/true from a cgroup, with no
// program loaded and with 1 / 1,000 / 10,000 loaded policies of 50 paths:
// the per-exec cost must not grow with the number of policies. "bound" runs
// in a cgroup bound to one of them, "unbound" in a cgroup with no policy (the
// common case on a node). Also reports kernel bytes per loaded policy.
//
//	go test ./nodeagent/enforcer -run '^$' -bench Exec -benchtime 2000x
func BenchmarkExec(b *testing.B) {
	testenv.RequireBPF(b)
	b.Run("no-program", func(b *testing.B) {
		cg := testenv.NewCgroup(b, "", fmt.Sprintf("execgate-bench-%d", time.Now().UnixNano()))
		runExecs(b, cg)
	})
	for _, n := range []int{1, 1000, 10000} {
		e := benchEnforcer(b, n)
		bound := testenv.NewCgroup(b, "", fmt.Sprintf("execgate-bench-b-%d", time.Now().UnixNano()))
		if err := e.Bind(bound.ID, PolicyKey(fmt.Sprintf("ns/p%d", n-1)), "app"); err != nil {
			b.Fatal(err)
		}
		unbound := testenv.NewCgroup(b, "", fmt.Sprintf("execgate-bench-u-%d", time.Now().UnixNano()))
		st, err := e.Stats()
		if err != nil {
			b.Fatal(err)
		}
		var bytes uint64
		for _, m := range st.Maps {
			bytes += m.Bytes
		}
		b.Run(fmt.Sprintf("policies=%d/bound", n), func(b *testing.B) {
			runExecs(b, bound)
			b.ReportMetric(float64(bytes)/float64(n), "mapbytes/policy")
		})
		b.Run(fmt.Sprintf("policies=%d/unbound", n), func(b *testing.B) { runExecs(b, unbound) })
		e.Close()
	}
}

func benchEnforcer(b *testing.B, n int) *Enforcer {
	b.Helper()
	dir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("execgate-bench-%d", time.Now().UnixNano()))
	e, err := New(Config{PinDir: dir, MaxExactEntries: uint32(n*100 + 1024), MaxBindings: uint32(2*n + 64)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close(); Cleanup(dir) })
	for i := 0; i < n; i++ {
		paths := make([]string, 50)
		for j := range paths {
			paths[j] = fmt.Sprintf("/opt/app%d/bin/tool%d", i, j)
		}
		paths[0] = "/usr/bin/true"
		if _, err := e.PutPolicy(PolicyVersion{Key: PolicyKey(fmt.Sprintf("ns/p%d", i)), Version: 1, Mode: ModeProtect,
			Containers: map[string]Rules{"app": {Paths: paths}}}); err != nil {
			b.Fatal(err)
		}
	}
	return e
}

func runExecs(b *testing.B, cg *testenv.Cgroup) {
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := cg.Run("/usr/bin/true"); err != nil {
			b.Fatal(err)
		}
	}
}
