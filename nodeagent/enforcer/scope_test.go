package enforcer

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/execgate/execgate/internal/testenv"
)

// maxLevels mirrors MAX_LEVELS in bpf/lib/types.h: the deepest cgroup level whose
// binding the program looks up.
const maxLevels = 64

// TestBindingScope: which binding decides for a task, by where its cgroup sits. The
// deepest bound ancestor decides, at any depth below it; a binding deeper than
// maxLevels is never found (pods sit at levels 3-5).
func TestBindingScope(t *testing.T) {
	forEachAttachMode(t, func(t *testing.T, mode AttachMode) {
		e := newTestEnforcer(t, mode)
		pol := PolicyVersion{Key: "ns/scope", Version: 1, Mode: ModeProtect, Containers: map[string]Rules{
			"app":     {Paths: []string{"/usr/bin/true"}},
			"sidecar": {Paths: []string{"/usr/bin/true", "/usr/bin/id"}},
		}}
		if _, err := e.PutPolicy(pol); err != nil {
			t.Fatal(err)
		}
		bind := func(cg *testenv.Cgroup, container string) {
			t.Helper()
			if err := e.Bind(cg.ID, pol.Key, container); err != nil {
				t.Fatal(err)
			}
		}
		pod := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-scope-%s-%d", mode, time.Now().UnixNano()))
		app := testenv.NewCgroup(t, pod.Path, "app")
		unnamed := testenv.NewCgroup(t, pod.Path, "unnamed") // a container whose name is not known yet
		bind(pod, UnionContainer)
		bind(app, "app")
		belowApp := nest(t, app, 70) // more levels than maxLevels, below the binding

		// Two chains from the top, bound at exactly maxLevels and one level deeper.
		deepest := nest(t, testenv.NewCgroup(t, "", fmt.Sprintf("execgate-scope-deep-%s-%d", mode, time.Now().UnixNano())), maxLevels-1)
		tooDeep := nest(t, testenv.NewCgroup(t, "", fmt.Sprintf("execgate-scope-toodeep-%s-%d", mode, time.Now().UnixNano())), maxLevels)
		if got := level(t, deepest); got != maxLevels {
			t.Fatalf("deepest bound cgroup at level %d, want %d", got, maxLevels)
		}
		bind(deepest, "app")
		bind(tooDeep, "app")

		cases := []struct {
			name  string
			cg    *testenv.Cgroup
			bound *testenv.Cgroup // nil: id runs
		}{
			{"container cgroup: its own rules beat the pod's", app, app},
			{"pod cgroup: the union of the containers' rules", pod, nil},
			{"unbound container cgroup: the pod's binding", unnamed, nil},
			{"70 levels below the container cgroup", belowApp, app},
			{"binding at level 64", deepest, deepest},
			{"binding at level 65: never looked up (documented limit)", tooDeep, nil},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				if out, err := c.cg.Run("/usr/bin/true"); err != nil {
					t.Fatalf("true: %v %q", err, out)
				}
				out, err := c.cg.Run("/usr/bin/id", "-u")
				if c.bound == nil {
					if err != nil {
						t.Fatalf("id must run: %v %q", err, out)
					}
					return
				}
				assertDenied(t, mode, out, err)
				ev := waitEvent(t, e, func(ev Event) bool { return ev.CgroupID == c.cg.ID })
				if ev.BoundCgroupID != c.bound.ID || ev.Container != "app" || ev.Path != "/usr/bin/id" {
					t.Fatalf("event bound to %d (want %d), container %q, path %q", ev.BoundCgroupID, c.bound.ID, ev.Container, ev.Path)
				}
			})
		}
	})
}

// nest creates depth cgroups, each below the previous one, and returns the deepest.
func nest(t *testing.T, cg *testenv.Cgroup, depth int) *testenv.Cgroup {
	t.Helper()
	for i := range depth {
		cg = testenv.NewCgroup(t, cg.Path, fmt.Sprintf("n%d", i+1))
	}
	return cg
}

// level is the cgroup's depth below the cgroup v2 root (the root is level 0).
func level(t *testing.T, cg *testenv.Cgroup) int {
	t.Helper()
	root, err := testenv.CgroupRoot()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(root, cg.Path)
	if err != nil {
		t.Fatal(err)
	}
	return len(strings.Split(rel, string(filepath.Separator)))
}

// TestMountNamespacePin: a container's processes share the mount namespace its runtime
// made before the first exec. The first exec checked in a cgroup pins its namespace;
// an exec from another one is untrusted: denied in Protect, reported in Monitor.
func TestMountNamespacePin(t *testing.T) {
	forEachAttachMode(t, func(t *testing.T, mode AttachMode) {
		sh, readlink := canonical(t, "/bin/sh"), canonical(t, "/usr/bin/readlink")
		hostNS, err := os.Readlink("/proc/self/ns/mnt")
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range []Mode{ModeProtect, ModeMonitor} {
			t.Run(m.String(), func(t *testing.T) {
				e, cg := protected(t, mode, m, sh, readlink, "/usr/bin/true")

				// The "container": its first exec runs in a mount namespace of its own,
				// and so do the programs it starts.
				cmd, done, err := cg.Command(sh, "-c", "/usr/bin/true && "+readlink+" /proc/self/ns/mnt")
				if err != nil {
					t.Fatal(err)
				}
				cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNS
				out, err := cmd.CombinedOutput()
				done()
				if ns := strings.TrimSpace(string(out)); err != nil || !strings.HasPrefix(ns, "mnt:") || ns == hostNS {
					t.Fatalf("the container's own execs: %v %q (host namespace %s)", err, out, hostNS)
				}

				// The same cgroup, the same allowed file, from the host's namespace.
				out2, err := cg.Run("/usr/bin/true")
				if m == ModeProtect {
					assertDenied(t, mode, out2, err)
				} else if err != nil {
					t.Fatalf("Monitor must allow: %v %q", err, out2)
				}
				ev := waitEvent(t, e, func(ev Event) bool { return ev.Path == "/usr/bin/true" })
				wantAction := map[Mode]Action{ModeProtect: ActionDenied, ModeMonitor: ActionReported}[m]
				if ev.Action != wantAction || ev.Flags&FlagUntrusted != FlagForeignMountNS {
					t.Fatalf("event action %s flags %s, want %s and foreign-mntns only", ev.Action, ev.Flags, wantAction)
				}
				st, err := e.Stats()
				if err != nil || st.Counters["untrusted"] != 1 {
					t.Fatalf("counters %v %v", st.Counters, err)
				}
			})
		}
	})
}

// TestMountNamespacePinsFollowBindings: a pin lives as long as a binding covers its
// cgroup; once none does, Unbind deletes it, and a cgroup bound again pins anew.
func TestMountNamespacePinsFollowBindings(t *testing.T) {
	testenv.RequireBPF(t)
	e := newTestEnforcer(t, AttachExecKill)
	pol := PolicyVersion{Key: "ns/pins", Version: 1, Mode: ModeProtect, Containers: map[string]Rules{"app": {Paths: []string{"/usr/bin/true"}}}}
	if _, err := e.PutPolicy(pol); err != nil {
		t.Fatal(err)
	}
	pod := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-pins-%d", time.Now().UnixNano()))
	app, unnamed := testenv.NewCgroup(t, pod.Path, "app"), testenv.NewCgroup(t, pod.Path, "unnamed")
	for _, b := range []struct {
		cg        *testenv.Cgroup
		container string
	}{{pod, UnionContainer}, {app, "app"}} {
		if err := e.Bind(b.cg.ID, pol.Key, b.container); err != nil {
			t.Fatal(err)
		}
	}
	pins := func(want int) {
		t.Helper()
		if n, err := e.CountEntries("mntns_pins"); err != nil || n != want {
			t.Fatalf("%d pins (%v), want %d", n, err, want)
		}
	}
	for _, cg := range []*testenv.Cgroup{app, unnamed} {
		if out, err := cg.Run("/usr/bin/true"); err != nil {
			t.Fatalf("true: %v %q", err, out)
		}
	}
	pins(2) // app's, decided by its own binding; unnamed's, decided by the pod's

	if err := e.Unbind(app.ID); err != nil { // the container's cgroup went away
		t.Fatal(err)
	}
	pins(1)
	if err := e.Unbind(pod.ID); err != nil { // the pod went away: nothing covers unnamed
		t.Fatal(err)
	}
	pins(0)

	// Bound again, the pod pins the namespace of the next exec, here the host's.
	if err := e.Bind(pod.ID, pol.Key, UnionContainer); err != nil {
		t.Fatal(err)
	}
	if out, err := unnamed.Run("/usr/bin/true"); err != nil {
		t.Fatalf("true after rebinding: %v %q", err, out)
	}
	pins(1)
}

// TestMountNamespacePinsFull: with no room for a cgroup's pin, its execs are untrusted
// (Protect fails closed) rather than unchecked.
func TestMountNamespacePinsFull(t *testing.T) {
	testenv.RequireBPF(t)
	dir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("execgate-test-%d", time.Now().UnixNano()))
	e, err := New(Config{PinDir: dir, Attach: AttachExecKill, MaxBindings: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(); _ = Cleanup(dir) })
	pol := PolicyVersion{Key: "ns/full", Version: 1, Mode: ModeProtect, Containers: map[string]Rules{"app": {Paths: []string{"/usr/bin/true"}}}}
	if _, err := e.PutPolicy(pol); err != nil {
		t.Fatal(err)
	}
	pod := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-pins-full-%d", time.Now().UnixNano()))
	if err := e.Bind(pod.ID, pol.Key, UnionContainer); err != nil {
		t.Fatal(err)
	}
	for i := range pinsPerBinding {
		if out, err := testenv.NewCgroup(t, pod.Path, fmt.Sprintf("c%d", i)).Run("/usr/bin/true"); err != nil {
			t.Fatalf("container %d: %v %q", i, err, out)
		}
	}
	out, err := testenv.NewCgroup(t, pod.Path, "one-too-many").Run("/usr/bin/true")
	assertDenied(t, AttachExecKill, out, err)
	ev := waitEvent(t, e, func(ev Event) bool { return ev.Path == "/usr/bin/true" })
	if ev.Flags&FlagForeignMountNS == 0 {
		t.Fatalf("event flags %s, want foreign-mntns", ev.Flags)
	}
}
