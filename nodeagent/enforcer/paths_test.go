package enforcer

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/execgate/execgate/internal/testenv"
)

// protected loads pol (key "ns/p", container "app") and returns a cgroup
// bound to it.
func protected(t *testing.T, mode AttachMode, m Mode, paths ...string) (*Enforcer, *testenv.Cgroup) {
	t.Helper()
	e := newTestEnforcer(t, mode)
	cg := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-%s-%d", mode, time.Now().UnixNano()))
	pol := PolicyVersion{Key: "ns/p", Version: 1, Mode: m, Containers: map[string]Rules{"app": {Paths: paths}}}
	if _, err := e.PutPolicy(pol); err != nil {
		t.Fatal(err)
	}
	if err := e.Bind(cg.ID, "ns/p", "app"); err != nil {
		t.Fatal(err)
	}
	return e, cg
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// canonical resolves symlinks the way the kernel reports the executed file.
func canonical(t *testing.T, p string) string {
	t.Helper()
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestMonitorReportsOnceAndAllows(t *testing.T) {
	forEachAttachMode(t, func(t *testing.T, mode AttachMode) {
		e, cg := protected(t, mode, ModeMonitor, "/usr/bin/true")
		out, err := cg.Run("/usr/bin/id", "-u")
		if err != nil || strings.TrimSpace(out) != "0" {
			t.Fatalf("monitor must allow: %q %v", out, err)
		}
		ev := waitEvent(t, e, func(ev Event) bool { return ev.Path == "/usr/bin/id" })
		if ev.Action != ActionReported || ev.Mode != ModeMonitor || ev.UID != 0 || ev.Flags&FlagKilled != 0 {
			t.Fatalf("event %+v", ev)
		}
		if ev.Flags&FlagArgvMissing == 0 && (len(ev.Argv) != 2 || ev.Argv[1] != "-u") {
			t.Fatalf("argv %q", ev.Argv)
		}
		if ev.ParentComm == "" || ev.Parent == "" {
			t.Fatalf("parent comm %q exe %q", ev.ParentComm, ev.Parent)
		}
		// The allowed binary produces no event: exactly one arrived.
		if _, err := cg.Run("/usr/bin/true"); err != nil {
			t.Fatal(err)
		}
		select {
		case extra := <-e.Events():
			t.Fatalf("unexpected second event %+v", extra)
		case <-time.After(300 * time.Millisecond):
		}
		st, err := e.Stats()
		if err != nil || st.Counters["reported"] != 1 || st.Counters["allowed"] != 1 {
			t.Fatalf("counters %v %v", st.Counters, err)
		}
	})
}

func TestLearnRecordsEveryExec(t *testing.T) {
	forEachAttachMode(t, func(t *testing.T, mode AttachMode) {
		e, cg := protected(t, mode, ModeLearn)
		bins := []string{"/usr/bin/true", "/usr/bin/id", "/usr/bin/uname"}
		for _, b := range bins {
			if _, err := cg.Run(b); err != nil {
				t.Fatalf("learn must allow %s: %v", b, err)
			}
		}
		for _, b := range bins {
			ev := waitEvent(t, e, func(ev Event) bool { return ev.Path == b })
			if ev.Action != ActionLearned {
				t.Fatalf("%s: action %s", b, ev.Action)
			}
		}
	})
}

func TestPathResolution(t *testing.T) {
	forEachAttachMode(t, func(t *testing.T, mode AttachMode) {
		dir := t.TempDir()
		echo := canonical(t, "/usr/bin/echo")
		sh := canonical(t, "/bin/sh")

		// A deep copy of true: a path well past 256 bytes.
		long := dir
		for i := 0; len(long) < 1500; i++ {
			long = filepath.Join(long, strings.Repeat(string(rune('a'+i%26)), 60))
		}
		longTrue := filepath.Join(long, "true")
		copyFile(t, "/usr/bin/true", longTrue)
		longDenied := filepath.Join(long, "denied")
		copyFile(t, "/usr/bin/true", longDenied)

		// Near PATH_MAX: 16 components of 250 bytes = ~4,030 bytes.
		nearMax := "/tmp"
		for i := 0; i < 15; i++ {
			nearMax = filepath.Join(nearMax, strings.Repeat("p", 250))
		}
		nearMaxTrue := filepath.Join(nearMax, "t")
		copyFile(t, "/usr/bin/true", nearMaxTrue)
		t.Cleanup(func() { os.RemoveAll(filepath.Join("/tmp", strings.Repeat("p", 250))) })

		// Deeper than the walker's bound: never allowed, even if listed.
		deep := dir
		for i := 0; i < 70; i++ {
			deep = filepath.Join(deep, "d")
		}
		deepTrue := filepath.Join(deep, "true")
		copyFile(t, "/usr/bin/true", deepTrue)

		// Symlinks: the kernel sees the target, whatever the link is called.
		linkToEcho := filepath.Join(dir, "link-to-echo")
		os.Symlink(echo, linkToEcho)
		fakeAllowed := filepath.Join(dir, "allowed-name")
		os.Symlink("/usr/bin/id", fakeAllowed)

		script := filepath.Join(dir, "script.sh")
		os.WriteFile(script, []byte("#!/bin/sh\necho from-script\n"), 0o755)

		e, cg := protected(t, mode, ModeProtect, echo, longTrue, nearMaxTrue, deepTrue, fakeAllowed, script, "/usr/bin/true")
		_ = e
		mustRun := func(name string, args ...string) {
			t.Helper()
			if out, err := cg.Run(name, args...); err != nil {
				t.Fatalf("%s must run: %v %q", name, err, out)
			}
		}
		mustDeny := func(name string, args ...string) {
			t.Helper()
			out, err := cg.Run(name, args...)
			assertDenied(t, mode, out, err)
		}
		mustRun(linkToEcho, "x") // link -> allowed target
		mustDeny(fakeAllowed)    // allowed link name -> disallowed target
		mustRun(longTrue)        // > 256 bytes
		mustDeny(longDenied)     // same dir, not listed
		mustRun(nearMaxTrue)     // ~4 KB path
		mustDeny(deepTrue)       // > MAX_DEPTH components: fails closed
		if mode == AttachExecKill || mode == AttachFanotify {
			// exec_kill (and so fanotify, exec_kill plus the gate) checks
			// the interpreter the script runs in, here /bin/sh: not listed.
			out, err := cg.Run(script)
			assertDenied(t, AttachExecKill, out, err) // killed: the gate allowed the listed script
		} else {
			// lsm/fmod_ret check the script itself; its interpreter is not
			// exec'd separately.
			mustRun(script)
		}
		_ = sh

		// An allowed binary executed through /proc/self/fd: the kernel sees
		// the real file.
		f, err := os.Open("/usr/bin/true")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd, done, err := cg.Command("/proc/self/fd/3")
		if err != nil {
			t.Fatal(err)
		}
		cmd.ExtraFiles = []*os.File{f}
		if err := cmd.Run(); err != nil {
			t.Fatalf("fd exec of an allowed file: %v", err)
		}
		done()

		// memfd holding an allowed binary's bytes: no path, never allowed.
		mfd, err := unix.MemfdCreate("true", 0)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile("/usr/bin/true")
		unix.Write(mfd, b)
		mf := os.NewFile(uintptr(mfd), "memfd")
		defer mf.Close()
		cmd, done, _ = cg.Command("/proc/self/fd/3")
		cmd.ExtraFiles = []*os.File{mf}
		out, err := cmd.CombinedOutput()
		done()
		// memfd is on no mounted filesystem: no fanotify mark sees it, the
		// exec_kill program under the gate kills it.
		memfdMode := mode
		if mode == AttachFanotify {
			memfdMode = AttachExecKill
		}
		assertDenied(t, memfdMode, string(out), err)

		// A listed file deleted while open: no trustworthy name, denied.
		del := filepath.Join(dir, "deleted-true")
		copyFile(t, "/usr/bin/true", del)
		df, err := os.Open(del)
		if err != nil {
			t.Fatal(err)
		}
		defer df.Close()
		os.Remove(del)
		cmd, done, _ = cg.Command("/proc/self/fd/3")
		cmd.ExtraFiles = []*os.File{df}
		out, err = cmd.CombinedOutput()
		done()
		assertDenied(t, mode, string(out), err)
	})
}

func TestPrefixRule(t *testing.T) {
	forEachAttachMode(t, func(t *testing.T, mode AttachMode) {
		dir := t.TempDir()
		copyFile(t, "/usr/bin/true", filepath.Join(dir, "app", "bin", "run"))
		copyFile(t, "/usr/bin/true", filepath.Join(dir, "apple", "run"))
		_, cg := protected(t, mode, ModeProtect, dir+"/app/")
		if _, err := cg.Run(filepath.Join(dir, "app", "bin", "run")); err != nil {
			t.Fatalf("below the prefix: %v", err)
		}
		out, err := cg.Run(filepath.Join(dir, "apple", "run")) // shares bytes, not the directory
		assertDenied(t, mode, out, err)
	})
}

// TestAtomicUpdateUnderLoad swaps a policy 1,000 times while a loop execs an
// always-allowed binary: it must never be denied, and the binary whose rule
// comes and goes must only ever see the decision of a whole version.
func TestAtomicUpdateUnderLoad(t *testing.T) {
	forEachAttachMode(t, func(t *testing.T, mode AttachMode) {
		e, cg := protected(t, mode, ModeProtect, "/usr/bin/true", "/usr/bin/echo")
		var (
			stop           atomic.Bool
			wrong, checked atomic.Int64
			wg             sync.WaitGroup
		)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if _, err := cg.Run("/usr/bin/true"); err != nil {
					wrong.Add(1)
				}
				checked.Add(1)
			}
		}()
		start := time.Now()
		for v := uint64(3); v < 1003; v++ { // ends on an even version: echo removed
			paths := []string{"/usr/bin/true"}
			if v%2 == 1 {
				paths = append(paths, "/usr/bin/echo")
			}
			if _, err := e.PutPolicy(PolicyVersion{Key: "ns/p", Version: v, Mode: ModeProtect, Containers: map[string]Rules{"app": {Paths: paths}}}); err != nil {
				t.Fatal(err)
			}
		}
		stop.Store(true)
		wg.Wait()
		t.Logf("1,000 swaps in %s; %d execs checked during them", time.Since(start), checked.Load())
		if wrong.Load() != 0 || checked.Load() == 0 {
			t.Fatalf("%d of %d execs of an allowed binary were denied", wrong.Load(), checked.Load())
		}
		// After an even last version, echo is no longer allowed; entries of
		// old versions are gone.
		out, err := cg.Run("/usr/bin/echo")
		assertDenied(t, mode, out, err)
		n, err := e.CountEntries("exact_rules")
		if err != nil || n != 2 { // "app" and the union slot hold /usr/bin/true
			t.Fatalf("exact entries %d (%v), want 2", n, err)
		}
	})
}

func TestBadInputChangesNothing(t *testing.T) {
	testenv.RequireBPF(t)
	e := newTestEnforcer(t, AttachExecKill)
	if _, err := e.PutPolicy(PolicyVersion{Key: "ns/ok", Version: 1, Mode: ModeProtect, Containers: map[string]Rules{"c": {Paths: []string{"/bin/a"}}}}); err != nil {
		t.Fatal(err)
	}
	many := make([]string, MaxPathsPerRules+1)
	for i := range many {
		many[i] = fmt.Sprintf("/bin/x%d", i)
	}
	cases := []struct {
		name string
		pol  PolicyVersion
		want string
	}{
		{"empty path", pv(""), `"" is empty`},
		{"relative", pv("usr/bin/id"), "not an absolute path"},
		{"nul", pv("/usr/bin/i\x00d"), "NUL"},
		{"too long", pv("/" + strings.Repeat("a", 4095)), "at most 4095 bytes"},
		{"dot segment", pv("/usr/../bin/id"), `".." segment`},
		{"double slash", pv("/usr//bin/id"), `contains "//"`},
		{"long prefix", pv("/" + strings.Repeat("a", 260) + "/"), "prefix rules are limited"},
		{"root prefix", pv("/"), "would allow every file"},
		{"dynamic loader", pv("/lib64/ld-linux-x86-64.so.2"), "is a dynamic loader"},
		{"loader directory", pv("/usr/lib/"), "holds the dynamic loader"},
		{"too many", PolicyVersion{Key: "ns/bad", Version: 1, Mode: ModeProtect, Containers: map[string]Rules{"c": {Paths: many}}}, "at most 1024"},
		{"bad mode", PolicyVersion{Key: "ns/bad", Version: 1, Mode: 9}, "unknown mode"},
		{"no key", PolicyVersion{Version: 1, Mode: ModeProtect}, "policy key"},
	}
	before, _ := e.Stats()
	for _, c := range cases {
		_, err := e.PutPolicy(c.pol)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want ErrInvalid mentioning %q", c.name, err, c.want)
		}
	}
	if err := e.Bind(1, "ns/ok", "c"); !errors.Is(err, ErrInvalid) {
		t.Errorf("binding the root cgroup: %v", err)
	}
	if err := e.Bind(12345, "ns/missing", "c"); !errors.Is(err, ErrNotFound) {
		t.Errorf("binding to a missing policy: %v", err)
	}
	after, _ := e.Stats()
	if before.Policies != after.Policies || before.Bindings != after.Bindings {
		t.Fatalf("state changed: %+v -> %+v", before, after)
	}
	for _, m := range []string{"exact_rules", "bindings", "slot_info"} {
		n, _ := e.CountEntries(m)
		want := map[string]int{"exact_rules": 2, "bindings": 0, "slot_info": 3}[m]
		if n != want {
			t.Errorf("%s has %d entries, want %d", m, n, want)
		}
	}
}

func pv(p string) PolicyVersion {
	return PolicyVersion{Key: "ns/bad", Version: 1, Mode: ModeProtect, Containers: map[string]Rules{"c": {Paths: []string{p}}}}
}

// TestKilledLoaderKeepsEnforcing: a loader process is killed with SIGKILL;
// the pinned program keeps denying; a new Enforcer adopts the pins; Cleanup
// removes every pin and enforcement stops.
func TestKilledLoaderKeepsEnforcing(t *testing.T) {
	if os.Getenv("EXECGATE_TEST_LOADER") != "" {
		return // the child half runs from TestMain
	}
	testenv.RequireBPF(t)
	dir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("execgate-kill-%d", time.Now().UnixNano()))
	t.Cleanup(func() { Cleanup(dir) })
	cg := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-kill-%d", time.Now().UnixNano()))

	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), fmt.Sprintf("EXECGATE_TEST_LOADER=%s,%d", dir, cg.ID))
	stdout, _ := child.StdoutPipe()
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := stdout.Read(buf); err != nil || string(buf) != "ready" {
		child.Process.Kill()
		t.Fatalf("loader did not get ready: %q %v", buf, err)
	}
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()

	out, err := cg.Run("/usr/bin/id")
	if err == nil {
		t.Fatalf("after the loader died, id ran: %q", out)
	}
	if _, err := cg.Run("/usr/bin/true"); err != nil {
		t.Fatalf("allowed binary after the loader died: %v", err)
	}

	e, err := New(Config{PinDir: dir, Attach: AttachAuto})
	if err != nil {
		t.Fatal(err)
	}
	if !e.Adopted() || len(e.Bindings()) != 1 || e.Bindings()[0].CgroupID != cg.ID || e.Bindings()[0].Policy != "ns/p" {
		t.Fatalf("adopted=%v bindings=%+v", e.Adopted(), e.Bindings())
	}
	if v, ok := e.PolicyVersionOf("ns/p"); !ok || v != 7 {
		t.Fatalf("adopted version %d %v", v, ok)
	}
	if applied, _ := e.PutPolicy(PolicyVersion{Key: "ns/p", Version: 7, Mode: ModeProtect}); applied {
		t.Fatal("the adopted version was replaced by an equal one")
	}
	e.Close()
	if out, err := cg.Run("/usr/bin/id"); err == nil {
		t.Fatalf("id ran after the adopter closed: %q", out)
	}
	if err := Cleanup(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pins left after cleanup: %v", err)
	}
	if _, err := cg.Run("/usr/bin/id"); err != nil {
		t.Fatalf("after cleanup id must run: %v", err)
	}
}

// runLoader is the child half of TestKilledLoaderKeepsEnforcing.
func runLoader(spec string) {
	var dir string
	var cg uint64
	parts := strings.SplitN(spec, ",", 2)
	dir = parts[0]
	fmt.Sscan(parts[1], &cg)
	e, err := New(Config{PinDir: dir, Attach: AttachAuto})
	if err != nil {
		fmt.Fprintln(os.Stderr, "loader:", err)
		os.Exit(2)
	}
	if _, err := e.PutPolicy(PolicyVersion{Key: "ns/p", Version: 7, Mode: ModeProtect, Containers: map[string]Rules{"app": {Paths: []string{"/usr/bin/true"}}}}); err != nil {
		fmt.Fprintln(os.Stderr, "loader:", err)
		os.Exit(2)
	}
	if err := e.Bind(cg, "ns/p", "app"); err != nil {
		fmt.Fprintln(os.Stderr, "loader:", err)
		os.Exit(2)
	}
	fmt.Print("ready")
	select {}
}

func TestMain(m *testing.M) {
	if spec := os.Getenv("EXECGATE_TEST_LOADER"); spec != "" {
		runLoader(spec)
	}
	os.Exit(m.Run())
}
