package report

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/execgate/execgate/benchmarks/execbench"
	"github.com/execgate/execgate/benchmarks/harness"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

// fakeResults is a run as the harness returns it on a kernel that refuses
// trampolines, with numbers chosen to exercise every verdict.
func fakeResults() *harness.Results {
	cfg := harness.QuickConfig()
	wall := func(median time.Duration) execbench.Summary {
		return execbench.Summary{N: 600, Median: median, P99: 3 * median, Mean: median, Min: median / 2}
	}
	base := wall(100 * time.Microsecond)
	exec := func(impl harness.Implementation, n int, kind harness.CgroupKind, kernelNs float64, median time.Duration) harness.ExecResult {
		runs := 1.0
		if impl == harness.ImplPeer {
			runs = float64(n)
		}
		return harness.ExecResult{
			Impl: impl, Mode: "exec_kill", Policies: n, Cgroup: kind, Wall: wall(median), Baseline: base,
			OverheadNs: float64(median - base.Median), OverheadSENs: 300,
			KernelNsPerExec: kernelNs, ProgramRunsPerExec: runs, Denial: "SIGKILL",
			LoadPerPolicy: 200 * time.Microsecond, KernelBytes: uint64(n) * 10000,
		}
	}
	res := &harness.Results{
		Config:  cfg,
		Started: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC), Finished: time.Date(2026, 11, 25, 12, 5, 0, 0, time.UTC),
		Machine:             harness.Machine{Kernel: "Linux 6.18 x86_64", OnlineCPUs: 2, PossibleCPUs: 2, MemTotalBytes: 24 << 30, LoadAvgStart: "3.0", LoadAvgEnd: "4.0"},
		TrampolinesRefused:  "kernel refuses trampoline programs: operation not permitted",
		NoProgram:           base,
		ControlPlaneSkipped: "not measured: no control-plane benchmark configured (execgate-bench -control-plane=false)",
		Exec: []harness.ExecResult{
			exec(harness.ImplExecgate, 1, harness.CgroupEnforced, 700, 101*time.Microsecond),
			exec(harness.ImplExecgate, 1, harness.CgroupOther, 400, 100*time.Microsecond),
			exec(harness.ImplExecgate, 1000, harness.CgroupEnforced, 1200, 110*time.Microsecond),
			exec(harness.ImplExecgate, 1000, harness.CgroupOther, 420, 100*time.Microsecond),
			{Impl: harness.ImplExecgate, Mode: "fmod_ret", Policies: 1, Cgroup: harness.CgroupEnforced, Skipped: "n/a: kernel refuses trampoline programs (EPERM)"},
			{Impl: harness.ImplExecgate, Mode: "fmod_ret", Policies: 1, Cgroup: harness.CgroupOther, Skipped: "n/a: kernel refuses trampoline programs (EPERM)"},
			exec(harness.ImplPeer, 1, harness.CgroupEnforced, 500, 100*time.Microsecond),
			exec(harness.ImplPeer, 200, harness.CgroupEnforced, 40000, 140*time.Microsecond),
		},
		Memory: harness.MemoryResults{
			AttachMode: enforcer.AttachExecKill, PerCPUBytesPerCPU: 10 << 10,
			Points: []harness.MemoryPoint{
				{Policies: 0, Bytes: 3 << 20, Maps: []enforcer.MapStats{{Name: "events", Type: "RingBuf", MaxEntries: 1 << 20, Bytes: 1 << 20}, {Name: "exact_rules", Type: "Hash", MaxEntries: 65536, Bytes: 2 << 20}}},
				{Policies: 110, Bindings: 220, Bytes: 3<<20 + 110*10000, Maps: []enforcer.MapStats{{Name: "events", Bytes: 1 << 20}, {Name: "exact_rules", Bytes: 2<<20 + 110*10000}}},
			},
			LoadPerPolicy: wall(200 * time.Microsecond),
			Update:        wall(8 * time.Millisecond),
		},
	}
	return res
}

func findRow(t *testing.T, rows []Row, substr string) Row {
	t.Helper()
	for _, r := range rows {
		if strings.Contains(r.Measure, substr) {
			return r
		}
	}
	t.Fatalf("no row with %q", substr)
	return Row{}
}

func TestTableVerdicts(t *testing.T) {
	rows := Table(fakeResults())
	tests := []struct {
		measure, field, want string
	}{
		{"execgate exec_kill, 1 policy, enforced pod", "verdict", "met"},
		{"execgate exec_kill, 1,000 policies, enforced pod", "verdict", "not met: 1.20 µs in the program"},
		{"execgate exec_kill, 1 policy, enforced pod", "ratio", "1.010×"},
		{"cost growth, execgate exec_kill, enforced pod", "verdict", "not flat"},
		{"cost growth, execgate exec_kill, other pod", "verdict", "flat"},
		{"execgate fmod_ret", "verdict", "n/a: kernel refuses trampoline programs (EPERM)"},
		{"peer: 200 programs exec_kill, 1 per policy, enforced pod", "reference", "+94.0 µs/exec (+7 %) at 200 policies"},
		{"0 pod policies (fixed", "verdict", "not met"},
		{"110 pod policies", "verdict", "met"},
		{"bind-time loading", "absolute", "(measured)"},
		{"every node loaded every policy", "absolute", "extrapolated"},
		{"bind-to-kernel latency", "verdict", "not measured"},
	}
	for _, tc := range tests {
		r := findRow(t, rows, tc.measure)
		got := map[string]string{"verdict": r.Verdict, "ratio": r.Ratio, "reference": r.Reference, "absolute": r.Absolute}[tc.field]
		if !strings.Contains(got, tc.want) {
			t.Errorf("%s: %s = %q, want it to contain %q", tc.measure, tc.field, got, tc.want)
		}
	}
}

func TestWriteAll(t *testing.T) {
	dir := t.TempDir()
	var out strings.Builder
	if err := WriteAll(&out, dir, fakeResults(), "execgate-bench -quick"); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{MarkdownFile, JSONFile, PlotExecRatio, PlotExecKernel, PlotMemory, PlotCluster} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Size() == 0 {
			t.Errorf("%s: %v (size %v)", f, err, st)
		}
	}
	md, err := os.ReadFile(filepath.Join(dir, MarkdownFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| # | measure", "![exec_kernel](exec_kernel.png)", "-control-plane=false", "`execgate-bench -quick`", "| events |"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("RESULTS.md lacks %q", want)
		}
	}
	if !strings.Contains(out.String(), "not met") {
		t.Errorf("printed table lacks the verdicts:\n%s", out.String())
	}

	// -render: the JSON carries everything the table needs.
	back, err := ReadResults(filepath.Join(dir, JSONFile))
	if err != nil {
		t.Fatal(err)
	}
	want, got := Table(fakeResults()), Table(back)
	if len(want) != len(got) {
		t.Fatalf("re-rendered %d rows, want %d", len(got), len(want))
	}
	for i := range want {
		if want[i] != got[i] {
			t.Errorf("row %d re-rendered as %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestFormat(t *testing.T) {
	tests := []struct{ got, want string }{
		{ns(940), "940 ns"}, {ns(1200), "1.20 µs"}, {ns(94000), "94.0 µs"}, {ns(1.344e6), "1.34 ms"},
		{bytes(9.7 * 1024), "9.7 KiB"}, {bytes(2.24 * (1 << 20)), "2.24 MiB"},
		{count(10000), "10,000"}, {count(110), "110"}, {ratio(1.0654), "1.065×"}, {ratio(0.0067), "0.0067×"},
		{signedNs(-5500), "−5.50 µs"},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestControlPlaneRows(t *testing.T) {
	res := fakeResults()
	cpu := func(apiserver, controller time.Duration) map[string]time.Duration {
		return map[string]time.Duration{"kube-apiserver": apiserver, "etcd": time.Second, "execgate-controller": controller, "execgate-agent": time.Second}
	}
	res.ControlPlane = &harness.ControlPlaneResults{
		Nodes: 3, PushTimeout: 250 * time.Millisecond,
		BindToAck: execbench.Summary{N: 200, Median: 7 * time.Millisecond, P99: 14 * time.Millisecond},
		BindToMap: execbench.Summary{N: 200, Median: 4 * time.Millisecond, P99: 9 * time.Millisecond},
		Throughput: []harness.ThroughputResult{
			{Scenario: "no webhook", Pods: 2000, PodsPerSecond: 250, Created: 8 * time.Second, Bound: 8 * time.Second, CPU: cpu(8*time.Second, time.Second)},
			{Scenario: "webhook, healthy agents", Pods: 2000, PodsPerSecond: 240, Created: 8 * time.Second, Bound: 8300 * time.Millisecond, CPU: cpu(9*time.Second, 2*time.Second)},
			{Scenario: "webhook, one agent dead (fail-open)", Pods: 2000, PodsPerSecond: 200, Created: 10 * time.Second, Bound: 10 * time.Second, CPU: cpu(10*time.Second, 4*time.Second)},
		},
		SchedulerQPS: 1000, ThroughputPolicies: 20,
		PolicyUpdate: execbench.Summary{N: 20, Median: 30 * time.Millisecond, P99: 80 * time.Millisecond},
		UpdateNodes:  3, UpdatePods: 6, UpdatePoll: 5 * time.Millisecond,
	}
	rows := Table(res)
	tests := []struct {
		measure, field, want string
	}{
		{"bind → agent ack", "absolute", "p50 7.00 ms, p99 14.00 ms"},
		{"bind → entry in the kernel map", "verdict", "met"},
		{"offered at once: no webhook", "ratio", "1 (reference)"},
		{"offered at once: webhook, healthy agents", "verdict", "met"},
		{"offered at once: webhook, healthy agents", "absolute", "all created after 8.00 s, all bound 300 ms later"},
		{"offered at once: webhook, one agent dead", "verdict", "not met"},
		{"offered at once: webhook, one agent dead", "ratio", "0.800× of without"},
		{"allowlist update in force on all 3 nodes", "absolute", "p50 30.00 ms, p99 80.00 ms (20 updates)"},
	}
	for _, tc := range tests {
		r := findRow(t, rows, tc.measure)
		got := map[string]string{"verdict": r.Verdict, "ratio": r.Ratio, "absolute": r.Absolute}[tc.field]
		if !strings.Contains(got, tc.want) {
			t.Errorf("%s: %s = %q, want it to contain %q", tc.measure, tc.field, got, tc.want)
		}
	}
	notes := strings.Join(Notes(res), "\n")
	for _, want := range []string{
		"≥ 95 % of without: not met (lowest 0.800×, webhook, one agent dead",
		"execgate-controller +1.50 ms", // (4 s - 1 s) / 2,000 pods
		"bind-to-kernel p99 ≤ 10 ms: met",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
}
