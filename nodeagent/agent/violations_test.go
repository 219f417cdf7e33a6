package agent

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

func violation(pod, exe string, action agentv1.Action) *agentv1.ExecEvent {
	mode := agentv1.Mode_MODE_PROTECT
	if action == agentv1.Action_ACTION_REPORTED {
		mode = agentv1.Mode_MODE_MONITOR
	}
	return &agentv1.ExecEvent{Node: testNode, Namespace: "ns", Pod: pod, Container: "app", Policy: "ns/web", Mode: mode,
		Action: action, Pid: 42, Ppid: 7, Uid: 1000, Executable: exe, Argv: []string{exe, "-x"}, ParentExecutable: "/bin/sh", Count: 1}
}

// logged is one line the violation log wrote: its message and the fields
// that tell lines apart.
type logged struct {
	msg, pod, exe string
	repeated      int64
}

func (l logged) String() string { return fmt.Sprintf("%s %s %s x%d", l.msg, l.pod, l.exe, l.repeated) }

func loggedLines(obs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range obs.TakeAll() {
		m := e.ContextMap()
		l := logged{msg: e.Message}
		l.pod, _ = m["pod"].(string)
		l.exe, _ = m["executable"].(string)
		if n, ok := m["repeated"].(uint64); ok {
			l.repeated = int64(n)
		}
		if n, ok := m["violations"].(uint64); ok {
			l.repeated = int64(n)
		}
		out = append(out, l.String())
	}
	return out
}

// TestViolationLogAggregates: what a sequence of violations writes, with a
// 10s window, 3 open windows and 4 first lines per window at most.
func TestViolationLogAggregates(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	denied, reported := agentv1.Action_ACTION_DENIED, agentv1.Action_ACTION_REPORTED
	type step struct {
		at     time.Duration
		ev     *agentv1.ExecEvent // nil: expire at this time
		repeat int
	}
	for _, tc := range []struct {
		name  string
		steps []step
		close bool
		want  []string
	}{{
		name:  "1,000 identical in a second: one line, one summary when the window ends",
		steps: []step{{0, violation("p", "/bin/id", denied), 1000}, {9 * time.Second, nil, 0}, {10 * time.Second, nil, 0}},
		want:  []string{"exec violation p /bin/id x0", "exec violation repeated p /bin/id x999"},
	}, {
		name:  "a repeat after the window opens a new one",
		steps: []step{{0, violation("p", "/bin/id", denied), 3}, {11 * time.Second, violation("p", "/bin/id", denied), 1}},
		close: true,
		want:  []string{"exec violation p /bin/id x0", "exec violation repeated p /bin/id x2", "exec violation p /bin/id x0"},
	}, {
		name: "pod, executable and action each make their own key",
		steps: []step{{0, violation("p", "/bin/id", denied), 2}, {0, violation("q", "/bin/id", denied), 1},
			{0, violation("p", "/bin/ls", denied), 1}, {0, violation("p", "/bin/id", reported), 1}},
		close: true,
		want: []string{"exec violation p /bin/id x0", "exec violation q /bin/id x0", "exec violation p /bin/ls x0",
			"exec violation p /bin/id x0", "exec violation repeated p /bin/id x1"},
	}, {
		name: "beyond 3 open windows the least recent closes early",
		steps: []step{{0, violation("a", "/x", denied), 2}, {0, violation("b", "/x", denied), 1},
			{0, violation("c", "/x", denied), 1}, {0, violation("d", "/x", denied), 1}},
		want: []string{"exec violation a /x x0", "exec violation b /x x0", "exec violation c /x x0",
			"exec violation d /x x0", "exec violation repeated a /x x1"},
	}, {
		name: "beyond 4 first lines per window the rest are counted in one line",
		steps: []step{{0, violation("a", "/1", denied), 1}, {0, violation("a", "/2", denied), 1}, {0, violation("a", "/3", denied), 1},
			{0, violation("a", "/4", denied), 1}, {0, violation("a", "/5", denied), 3}, {0, violation("a", "/6", denied), 1},
			{10 * time.Second, nil, 0}},
		want: []string{"exec violation a /1 x0", "exec violation a /2 x0", "exec violation a /3 x0", "exec violation a /4 x0",
			"exec violations not logged   x4"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			core, obs := observer.New(zapcore.DebugLevel)
			v := newViolationLog(zap.New(core), 10*time.Second, 3, 4)
			for _, s := range tc.steps {
				if s.ev == nil {
					v.expire(t0.Add(s.at))
					continue
				}
				for range s.repeat {
					v.observe(s.ev, t0.Add(s.at))
				}
			}
			if tc.close {
				v.close()
			}
			if got := loggedLines(obs); strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("log lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestBPFViolationsLoggedAndCounted runs denied and reported execs in real
// cgroups under real policies. The processes are started by the test binary,
// which is outside the container's cgroup, as `kubectl exec` starts them from
// the runtime's shim: the event still names pod and container, and the
// parent's executable. 1,000 denials in about a second are one log line
// and one "repeated 999" summary; Learn events are no violations.
func TestBPFViolationsLoggedAndCounted(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	e := n.newEnforcer(t)
	core, obs := observer.New(zapcore.InfoLevel)
	reg := prometheus.NewRegistry()
	a := n.startAgent(t, e, func(o *Options) {
		o.Logger = zap.New(zapcore.NewTee(core, zaptest.NewLogger(t, zaptest.Level(zapcore.InfoLevel)).Core()))
		o.Registry = reg
	})
	ctx := context.Background()
	ctrs := map[podpolicy.Mode]struct {
		uid string
		run func(string, ...string) (string, error)
	}{}
	for i, mode := range []podpolicy.Mode{podpolicy.ModeProtect, podpolicy.ModeMonitor, podpolicy.ModeLearn} {
		uid, cid := podUID(40+i), containerID(40+i)
		pol := protectApp(1)
		pol.Name, pol.UID, pol.Mode = "web-"+strings.ToLower(mode.String()), "policy-uid-"+mode.String(), mode
		pp := podPolicy(uid, cgroups.QoSBurstable, pol, podpolicy.Container{Name: "app", ContainerID: "containerd://" + cid})
		if _, _, err := a.ApplyPodPolicy(ctx, pp); err != nil {
			t.Fatal(err)
		}
		_, ctr := n.mkPod(t, uid, cgroups.QoSBurstable, cid)
		waitFor(t, "container bound", func() bool { b, ok := bindingOf(e, ctr.ID); return ok && b.Container == "app" })
		ctrs[mode] = struct {
			uid string
			run func(string, ...string) (string, error)
		}{uid, ctr.Run}
	}

	const denials = 1000
	start := time.Now()
	for range denials {
		out, err := ctrs[podpolicy.ModeProtect].run("/usr/bin/id", "-u")
		assertDenied(t, e.AttachMode(), out, err)
	}
	took := time.Since(start)
	t.Logf("%d denied execs in %v", denials, took)
	// One line and one summary per window the burst spans: one on a fast
	// machine, several under emulation (the kernel matrix's VMs).
	maxWindows := int(took/violationLogWindow) + 2
	for range 3 {
		if _, err := ctrs[podpolicy.ModeMonitor].run("/usr/bin/id", "-u"); err != nil {
			t.Fatalf("monitored exec: %v", err)
		}
		if _, err := ctrs[podpolicy.ModeLearn].run("/usr/bin/id", "-u"); err != nil {
			t.Fatalf("learned exec: %v", err)
		}
	}
	counter := func(policy, action string) float64 {
		var m dto.Metric
		if err := a.metrics.violations.WithLabelValues("ns", policy, action).Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	waitFor(t, "violations counted", func() bool {
		return counter("ns/web-protect", "denied") >= denials && counter("ns/web-monitor", "reported") >= 3
	})
	a.stop() // closes the open windows: their summaries are written now
	if got := counter("ns/web-protect", "denied"); got != denials {
		t.Errorf("denied counter %v, want %d", got, denials)
	}
	if got := counter("ns/web-monitor", "reported"); got != 3 {
		t.Errorf("reported counter %v, want 3", got)
	}
	series := seriesCount(t, reg)
	if n := series["execgate_agent_violations_total"]; n != 2 {
		t.Errorf("violation series: %d, want 2 (Learn is no violation)", n)
	}
	if n := series["execgate_agent_events_dropped_total"]; n != 3 {
		t.Errorf("dropped series: %d, want ring_buffer, reader, subscriber", n)
	}

	self, _ := os.Executable()
	var lines, summaries []observer.LoggedEntry
	for _, l := range obs.AllUntimed() {
		switch l.Message {
		case "exec violation":
			lines = append(lines, l)
		case "exec violation repeated":
			summaries = append(summaries, l)
		}
	}
	perAction := func(entries []observer.LoggedEntry) map[string]int {
		n := map[string]int{}
		for _, l := range entries {
			n[fmt.Sprint(l.ContextMap()["action"])]++
		}
		return n
	}
	if n := perAction(lines); n["denied"] < 1 || n["denied"] > maxWindows || n["reported"] != 1 || len(lines) != n["denied"]+n["reported"] {
		t.Fatalf("violation lines %v, want 1..%d denied (one per window of the burst) and 1 reported: %v", n, maxWindows, lines)
	}
	cmdline := "/usr/bin/id -u"
	if !e.CapturesArgv() { // lsm/fmod_ret before 5.15: no bpf_task_pt_regs
		cmdline = ""
	}
	for _, l := range lines {
		f := l.ContextMap()
		want := map[string]any{"node": testNode, "namespace": "ns", "container": "app", "executable": "/usr/bin/id",
			"cmdline": cmdline, "argv_truncated": false, "parent_executable": self}
		for k, v := range want {
			if f[k] != v {
				t.Errorf("%s: %s = %v, want %v", f["action"], k, f[k], v)
			}
		}
		switch f["action"] {
		case "denied":
			if uid := ctrs[podpolicy.ModeProtect].uid; f["mode"] != "Protect" || f["policy"] != "ns/web-protect" || f["pod"] != "web-"+uid[len(uid)-4:] {
				t.Errorf("denied line: %v", f)
			}
		case "reported":
			if f["mode"] != "Monitor" || f["policy"] != "ns/web-monitor" {
				t.Errorf("reported line: %v", f)
			}
		default:
			t.Errorf("line with action %v", f["action"])
		}
		for _, k := range []string{"pid", "ppid", "uid"} {
			if _, ok := f[k]; !ok {
				t.Errorf("line without %s", k)
			}
		}
	}
	// Every exec is either a window's first line or counted in its summary.
	if n := perAction(summaries); n["denied"] != perAction(lines)["denied"] || n["reported"] != 1 {
		t.Fatalf("summaries %v, want one per line: %v", n, summaries)
	}
	total := map[string]uint64{}
	for _, l := range lines {
		total[fmt.Sprint(l.ContextMap()["action"])]++
	}
	for _, s := range summaries {
		f := s.ContextMap()
		r, _ := f["repeated"].(uint64)
		total[fmt.Sprint(f["action"])] += r
	}
	if total["denied"] != denials || total["reported"] != 3 {
		t.Errorf("lines + repeats: %v, want denied %d, reported 3", total, denials)
	}
}

func seriesCount(t *testing.T, reg *prometheus.Registry) map[string]int {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]int{}
	for _, f := range families {
		out[f.GetName()] = len(f.GetMetric())
	}
	return out
}
