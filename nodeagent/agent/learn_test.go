package agent

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/enforcer"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// learnTestAgent is an Agent with a pod table and no enforcer: enough for
// learnSuppressed, which reads only the table.
func learnTestAgent(t *testing.T) *Agent {
	t.Helper()
	a := &Agent{opts: Options{NodeName: testNode, SubscriberBuffer: 16}, log: zaptest.NewLogger(t),
		pods: map[string]*podState{}, owners: map[uint64]owner{}}
	a.subs.init()
	// The events are synthetic: no process ran their files. Paths under /loader/ are
	// loaders, under /gone/ files no process is left to read; the rest programs.
	a.learnFileCheck = func(_ *podState, _ uint32, _ uint64, path string) (bool, bool) {
		return strings.HasPrefix(path, "/loader/"), !strings.HasPrefix(path, "/gone/")
	}
	// Pod "a": pod cgroup 10; container cgroup 100 bound as "app"; container cgroup 200
	// seen but its name unknown. Pod "b": container cgroup 300 bound as "app".
	a.pods["uid-a"] = &podState{uid: "uid-a", namespace: "ns", name: "web-a", podCgroup: 10,
		names: map[string]string{"cid-app": "app"}, containers: map[string]uint64{"cid-app": 100, "cid-new": 200}}
	a.pods["uid-b"] = &podState{uid: "uid-b", namespace: "ns", name: "web-b", podCgroup: 20,
		names: map[string]string{"cid-b": "app"}, containers: map[string]uint64{"cid-b": 300}}
	a.owners[10] = owner{uid: "uid-a"}
	a.owners[100] = owner{uid: "uid-a", container: "app"}
	a.owners[20] = owner{uid: "uid-b"}
	a.owners[300] = owner{uid: "uid-b", container: "app"}
	return a
}

func learnEv(bound, leaf uint64, path string) enforcer.Event {
	return enforcer.Event{Action: enforcer.ActionLearned, Mode: enforcer.ModeLearn, BoundCgroupID: bound, CgroupID: leaf, Path: path}
}

// TestLearnDedupe feeds repeated enforcer events and counts what fanOutEvents would
// publish.
func TestLearnDedupe(t *testing.T) {
	tests := []struct {
		name      string
		events    []enforcer.Event
		repeat    int
		published int
		held      int // pods with held events afterwards
	}{
		{"10,000 identical execs are one event", []enforcer.Event{learnEv(100, 100, "/usr/bin/dash")}, 10000, 1, 0},
		{"each executable once", []enforcer.Event{learnEv(100, 100, "/usr/bin/dash"), learnEv(100, 100, "/usr/bin/ls"), learnEv(100, 100, "/usr/bin/dash")}, 100, 2, 0},
		{"same path in another pod's container of the same name", []enforcer.Event{learnEv(100, 100, "/usr/bin/dash"), learnEv(300, 300, "/usr/bin/dash")}, 10, 2, 0},
		{"pod binding: the task's container cgroup names it", []enforcer.Event{learnEv(100, 100, "/usr/bin/dash"), learnEv(10, 100, "/usr/bin/dash")}, 10, 1, 0},
		{"pod binding, task in the pod cgroup: no container", []enforcer.Event{learnEv(10, 10, "/usr/bin/dash"), learnEv(100, 100, "/usr/bin/dash")}, 10, 2, 0},
		{"container of unknown name: held", []enforcer.Event{learnEv(10, 200, "/usr/bin/dash")}, 1000, 0, 1},
		{"unknown binding: deduped by cgroup", []enforcer.Event{learnEv(999, 999, "/usr/bin/dash")}, 1000, 1, 0},
		{"a loader is never published (Loader)", []enforcer.Event{learnEv(100, 100, "/loader/ld-2.31.so"), learnEv(100, 100, "/usr/bin/dash")}, 10, 1, 0},
		{"a loader is never held either (Loader)", []enforcer.Event{learnEv(10, 200, "/loader/ld-2.31.so")}, 10, 0, 0},
		{"a file that cannot be read any more is published once (Loader)", []enforcer.Event{learnEv(100, 100, "/gone/tool")}, 10, 1, 0},
		{"untrusted path: never published", []enforcer.Event{{Action: enforcer.ActionLearned, BoundCgroupID: 100, CgroupID: 100, Path: "/memfd:x", Flags: enforcer.FlagDetached}}, 10, 0, 0},
		{"violations are not learn events", []enforcer.Event{{Action: enforcer.ActionReported, BoundCgroupID: 100, CgroupID: 100, Path: "/usr/bin/id"}, {Action: enforcer.ActionDenied, BoundCgroupID: 100, CgroupID: 100, Path: "/usr/bin/id"}}, 5, 10, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := learnTestAgent(t)
			published := 0
			for range tt.repeat {
				for _, ev := range tt.events {
					if !a.learnSuppressed(ev) {
						published++
					}
				}
			}
			if published != tt.published {
				t.Errorf("published %d events, want %d", published, tt.published)
			}
			if _, held := a.learnStats(); held != tt.held {
				t.Errorf("%d pods with held events, want %d", held, tt.held)
			}
		})
	}
}

// TestLearnSetIsBounded: past learnSeenSize keys the oldest is forgotten, so its next
// exec is published again; the set never grows beyond its size.
func TestLearnSetIsBounded(t *testing.T) {
	a := learnTestAgent(t)
	for i := range learnSeenSize + 100 {
		if a.learnSuppressed(learnEv(100, 100, fmt.Sprintf("/usr/bin/tool-%d", i))) {
			t.Fatalf("distinct executable %d suppressed", i)
		}
	}
	if seen, _ := a.learnStats(); seen != learnSeenSize {
		t.Fatalf("set holds %d entries, want its bound %d", seen, learnSeenSize)
	}
	if a.learnSuppressed(learnEv(100, 100, "/usr/bin/tool-0")) {
		t.Error("evicted entry still suppressed")
	}
	if !a.learnSuppressed(learnEv(100, 100, fmt.Sprintf("/usr/bin/tool-%d", learnSeenSize+99))) {
		t.Error("recent entry published again")
	}
}

// learnStats reports the entries in the learnt set and the pods with held events.
func (a *Agent) learnStats() (seen, held int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.learnLocked()
	return l.seen.Len(), l.held.Len()
}

func learnPolicy() podpolicy.Policy {
	return podpolicy.Policy{UID: "policy-uid-learn", Namespace: "ns", Name: "learn", Version: 1, Mode: podpolicy.ModeLearn,
		RulesByContainer: map[string][]string{"app": nil, "sidecar": nil}}
}

func subscribeLearn(t *testing.T, a *Agent) <-chan *agentv1.ExecEvent {
	t.Helper()
	ch, cancel := a.Subscribe(context.Background(), podpolicy.EventFilter{Actions: []podpolicy.Action{podpolicy.ActionAllowedLearn}})
	t.Cleanup(cancel)
	return ch
}

// collectLearn gathers events until want distinct executables arrived (or 10s passed),
// then keeps listening for quiet, to catch duplicates.
func collectLearn(t *testing.T, ch <-chan *agentv1.ExecEvent, want int, quiet time.Duration) []*agentv1.ExecEvent {
	t.Helper()
	var got []*agentv1.ExecEvent
	distinct := map[string]bool{}
	deadline := time.After(10 * time.Second)
	for len(distinct) < want {
		select {
		case ev := <-ch:
			got = append(got, ev)
			distinct[ev.Container+" "+ev.Executable] = true
		case <-deadline:
			t.Fatalf("timed out: %d of %d distinct learn events: %v", len(distinct), want, got)
		}
	}
	idle := time.After(quiet)
	for {
		select {
		case ev := <-ch:
			got = append(got, ev)
		case <-idle:
			return got
		}
	}
}

// learnt renders events as sorted "container executable" lines.
func learnt(events []*agentv1.ExecEvent) []string {
	var out []string
	for _, ev := range events {
		out = append(out, ev.Container+" "+ev.Executable)
	}
	slices.Sort(out)
	return out
}

func realPath(t *testing.T, p string) string {
	t.Helper()
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestBPFLearnReportsEachExecutableOnce: a Learn-bound container running
// sh -c '/bin/true; /bin/true; /bin/ls' yields one event per distinct executable,
// and running it again yields none.
func TestBPFLearnReportsEachExecutableOnce(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	e := n.newEnforcer(t)
	a := n.startAgent(t, e, nil)
	ch := subscribeLearn(t, a.Agent)
	uid, cid := podUID(40), containerID(40)
	_, ctr := n.mkPod(t, uid, cgroups.QoSBurstable, cid)
	pp := podPolicy(uid, cgroups.QoSBurstable, learnPolicy(), podpolicy.Container{Name: "app", ContainerID: "containerd://" + cid})
	if _, _, err := a.ApplyPodPolicy(context.Background(), pp); err != nil {
		t.Fatal(err)
	}
	if b, ok := bindingOf(e, ctr.ID); !ok || b.Container != "app" {
		t.Fatalf("container binding: %+v %v", b, ok)
	}
	script := "/bin/true; /bin/true; /bin/ls / >/dev/null"
	if out, err := ctr.Run("/bin/sh", "-c", script); err != nil {
		t.Fatalf("run in learning container: %v: %s", err, out)
	}
	got := collectLearn(t, ch, 3, 500*time.Millisecond)
	want := []string{"app " + realPath(t, "/bin/sh"), "app " + realPath(t, "/bin/true"), "app " + realPath(t, "/bin/ls")}
	slices.Sort(want)
	if !slices.Equal(learnt(got), want) {
		t.Fatalf("learn events %v, want exactly %v", learnt(got), want)
	}
	for _, ev := range got {
		if ev.Namespace != "ns" || ev.Pod != pp.Pod.Name || ev.Policy != "ns/learn" || ev.Mode != agentv1.Mode_MODE_LEARN ||
			ev.Action != agentv1.Action_ACTION_ALLOWED_LEARN || ev.Node != testNode || ev.Count != 1 {
			t.Errorf("event %v", ev)
		}
	}

	for range 3 {
		if out, err := ctr.Run("/bin/sh", "-c", script); err != nil {
			t.Fatalf("run again: %v: %s", err, out)
		}
	}
	select {
	case ev := <-ch:
		t.Fatalf("event for an executable already reported: %v", ev)
	case <-time.After(500 * time.Millisecond):
	}
	st, err := e.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Counters["learned"] < 12 {
		t.Errorf("kernel counted %d learn execs, want at least 12: the dedupe must be in user space, not a missing event", st.Counters["learned"])
	}
}

// startIn starts a long-running command in cg and returns its pid.
func startIn(t *testing.T, cg *testenv.Cgroup, name string, args ...string) int {
	t.Helper()
	cmd, done, err := cg.Command(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd.Process.Pid
}

// forkIntoCgroup leaves in cg a process that entered it without executing anything, as
// a runtime's helper does before it starts the entrypoint: a subshell of a shell that
// runs outside cg, which moves itself into cg and blocks in a builtin. The scan must not
// report its parent's binary as the container's.
func forkIntoCgroup(t *testing.T, cg *testenv.Cgroup) {
	t.Helper()
	fifo := filepath.Join(t.TempDir(), "block")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// In the subshell, /proc/self is the subshell itself: read is a builtin.
	script := fmt.Sprintf(`( read pid rest < /proc/self/stat; echo "$pid" > %s/cgroup.procs; read x < %s ); true`, cg.Path, fifo)
	cmd := exec.Command("/bin/sh", "-c", script)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitFor(t, "subshell in the container cgroup", func() bool {
		pids, err := cgroups.PIDs(cg.Path)
		return err == nil && len(pids) == 2
	})
}

// TestBPFLearnScanReportsRunningProcesses: processes that run before the pod is bound
// in Learn mode are reported by the bind-time scan; those of a container whose name is
// not known yet (and what that container executes meanwhile) are reported, with the
// name, once it is known; after an agent restart the start-up scan finds them again
// and the replay hands them to a watcher that connected late.
func TestBPFLearnScanReportsRunningProcesses(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverCgroupfs)
	e1 := n.newEnforcer(t)
	a1 := n.startAgent(t, e1, nil)
	ch := subscribeLearn(t, a1.Agent)
	uid, appID, sideID := podUID(41), containerID(41), containerID(42)
	n.mkPodCgroup(t, uid, cgroups.QoSBestEffort)
	app := n.mkContainerCgroup(t, uid, cgroups.QoSBestEffort, appID)
	side := n.mkContainerCgroup(t, uid, cgroups.QoSBestEffort, sideID)
	sleepPID := startIn(t, app, "/usr/bin/sleep", "120")
	tailPID := startIn(t, side, "/usr/bin/tail", "-f", "/dev/null")
	forkIntoCgroup(t, app)

	// The push names "app" only, as a binding push before the sidecar's status is known.
	pp := podPolicy(uid, cgroups.QoSBestEffort, learnPolicy(), podpolicy.Container{Name: "app", ContainerID: "containerd://" + appID})
	if _, _, err := a1.ApplyPodPolicy(context.Background(), pp); err != nil {
		t.Fatal(err)
	}
	got := collectLearn(t, ch, 1, 300*time.Millisecond)
	if want := []string{"app " + realPath(t, "/usr/bin/sleep")}; !slices.Equal(learnt(got), want) {
		t.Fatalf("bind-time scan reported %v, want %v", learnt(got), want)
	}
	if got[0].Pid != uint32(sleepPID) || got[0].CgroupId != app.ID || got[0].Pod != pp.Pod.Name {
		t.Errorf("scan event %v: want pid %d cgroup %d", got[0], sleepPID, app.ID)
	}

	// The sidecar executes something while its name is unknown: held, not published.
	if out, err := side.Run("/usr/bin/true"); err != nil {
		t.Fatalf("exec in unnamed container: %v %s", err, out)
	}
	select {
	case ev := <-ch:
		t.Fatalf("event before the container's name is known: %v", ev)
	case <-time.After(300 * time.Millisecond):
	}
	if err := a1.LearnContainers(uid, []podpolicy.Container{{Name: "sidecar", ContainerID: "containerd://" + sideID}}); err != nil {
		t.Fatal(err)
	}
	got = collectLearn(t, ch, 2, 300*time.Millisecond)
	want := []string{"sidecar " + realPath(t, "/usr/bin/tail"), "sidecar " + realPath(t, "/usr/bin/true")}
	slices.Sort(want)
	if !slices.Equal(learnt(got), want) {
		t.Fatalf("after naming the sidecar: %v, want %v", learnt(got), want)
	}
	for _, ev := range got {
		if ev.Executable == realPath(t, "/usr/bin/tail") && ev.Pid != uint32(tailPID) {
			t.Errorf("tail reported with pid %d, want %d", ev.Pid, tailPID)
		}
	}

	// Agent restart: the start-up scan finds both processes; the pod's name comes
	// with the next push, and a watcher that connects afterwards gets them replayed.
	a1.stop()
	e1.Close()
	e2 := n.newEnforcer(t)
	a2 := n.startAgent(t, e2, nil)
	if _, held := a2.learnStats(); held != 1 {
		t.Fatalf("start-up scan: %d pods with held events, want 1 (the adopted pod has no name yet)", held)
	}
	early := subscribeLearn(t, a2.Agent)
	pp.Pod.Containers = append(pp.Pod.Containers, podpolicy.Container{Name: "sidecar", ContainerID: "containerd://" + sideID})
	if _, _, err := a2.ApplyPodPolicy(context.Background(), pp); err != nil {
		t.Fatal(err)
	}
	want = []string{"app " + realPath(t, "/usr/bin/sleep"), "sidecar " + realPath(t, "/usr/bin/tail")}
	slices.Sort(want)
	if got := collectLearn(t, early, 2, 300*time.Millisecond); !slices.Equal(learnt(got), want) {
		t.Fatalf("after restart and push: %v, want %v", learnt(got), want)
	}
	late := subscribeLearn(t, a2.Agent)
	if n := a2.replayLearnt(context.Background()); n != 2 {
		t.Fatalf("replayed %d events, want 2", n)
	}
	if got := collectLearn(t, late, 2, 300*time.Millisecond); !slices.Equal(learnt(got), want) {
		t.Fatalf("replay: %v, want %v", learnt(got), want)
	}

	// A pod that leaves Learn mode is no longer replayed.
	protect := protectApp(2)
	protect.Name = "learn"
	protect.UID = "policy-uid-learn"
	protect.RulesByContainer["sidecar"] = []string{"/usr/bin/tail"}
	pp.Policy = protect
	if _, _, err := a2.ApplyPodPolicy(context.Background(), pp); err != nil {
		t.Fatal(err)
	}
	if n := a2.replayLearnt(context.Background()); n != 0 {
		t.Fatalf("replayed %d events of a pod in Protect mode", n)
	}
}
