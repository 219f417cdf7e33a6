package enforcer

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/execgate/execgate/internal/testenv"
)

// attachModes are every way the program hooks exec; each kernel test runs
// under all of them.
var attachModes = []AttachMode{AttachLSM, AttachFmodRet, AttachFanotify, AttachExecKill}

func forEachAttachMode(t *testing.T, fn func(t *testing.T, mode AttachMode)) {
	for _, mode := range attachModes {
		t.Run(string(mode), func(t *testing.T) {
			testenv.RequireBPF(t)
			if !requireAttachMode(t, mode) {
				return
			}
			fn(t, mode)
		})
	}
}

// expectedModes is EXECGATE_EXPECT_MODES, the attach modes a kernel matrix
// row (test/kernels/matrix) must load; nil outside the matrix.
func expectedModes() map[AttachMode]bool {
	v := os.Getenv("EXECGATE_EXPECT_MODES")
	if v == "" {
		return nil
	}
	out := map[AttachMode]bool{}
	for _, m := range strings.Split(v, ",") {
		out[AttachMode(strings.TrimSpace(m))] = true
	}
	return out
}

// requireAttachMode says whether a test runs in mode. In a kernel matrix row
// the row's modes must load (a refusal fails the test) and every other mode
// must be refused (checked, then the test has nothing to run). Elsewhere it
// skips a trampoline mode the kernel refuses, saying why, unless
// EXECGATE_REQUIRE_TRAMPOLINES=1 demands it; exec_kill and fanotify need no
// trampolines and are required under EXECGATE_REQUIRE_BPF.
func requireAttachMode(t *testing.T, mode AttachMode) bool {
	t.Helper()
	if want := expectedModes(); want != nil {
		if want[mode] {
			return true
		}
		err := tryAttachMode(t, mode)
		if err == nil {
			t.Fatalf("%s loaded on a kernel whose matrix row (%s) expects it refused: update test/kernels/matrix",
				mode, os.Getenv("EXECGATE_KERNEL_ROW"))
		}
		t.Logf("%s refused, as the matrix row expects: %s", mode, refusalReason(err))
		return false
	}
	switch mode {
	case AttachExecKill:
		return true
	case AttachFanotify: // no trampolines needed: required wherever BPF is
		if err := GateAvailable(); err != nil {
			testenv.Need(t, "EXECGATE_REQUIRE_BPF", err.Error())
		}
		return true
	}
	if mode == AttachLSM {
		if ok, _ := BPFLSMActive(); !ok {
			testenv.Need(t, "EXECGATE_REQUIRE_TRAMPOLINES", `"bpf" in the active LSM list`)
		}
	}
	if err := TrampolinesAvailable(); err != nil {
		testenv.Need(t, "EXECGATE_REQUIRE_TRAMPOLINES", fmt.Sprintf("a kernel that loads trampoline programs (%v)", err))
	}
	return true
}

// tryAttachMode loads the program in mode alone, in a fresh pin directory,
// and removes it again: nil when the kernel takes it.
func tryAttachMode(t *testing.T, mode AttachMode) error {
	t.Helper()
	_, drop, err := loadPinned(t, mode, zaptest.NewLogger(t))
	drop()
	return err
}

// assertDenied checks how a Protect denial looked to the caller.
func assertDenied(t *testing.T, mode AttachMode, out string, err error) {
	t.Helper()
	if deniedAs(mode, out, err) {
		return
	}
	want := "EPERM (operation not permitted)"
	if mode == AttachExecKill {
		want = "death by SIGKILL before any output"
	}
	t.Fatalf("denied exec: out %q, err %v; want %s", out, err, want)
}

// newTestEnforcer loads an enforcer pinned in a fresh bpffs directory and
// removes every pin at cleanup.
func newTestEnforcer(t *testing.T, mode AttachMode) *Enforcer {
	t.Helper()
	e, drop, err := loadPinned(t, mode, zaptest.NewLogger(t))
	t.Cleanup(drop)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if e.AttachMode() != mode {
		t.Fatalf("attach mode %s, want %s", e.AttachMode(), mode)
	}
	return e
}

// loadPinned loads an enforcer in mode pinned in a fresh bpffs directory;
// drop closes it (if it loaded) and removes every pin.
func loadPinned(t *testing.T, mode AttachMode, log *zap.Logger) (*Enforcer, func(), error) {
	t.Helper()
	dir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("execgate-test-%s-%d", mode, time.Now().UnixNano()))
	e, err := New(Config{PinDir: dir, Attach: mode, Logger: log})
	drop := func() {
		if e != nil {
			e.Close()
		}
		if err := Cleanup(dir); err != nil {
			t.Errorf("cleanup %s: %v", dir, err)
		}
	}
	return e, drop, err
}

// waitEvent returns the next event matching pred, or fails after a timeout.
func waitEvent(t *testing.T, e *Enforcer, pred func(Event) bool) Event {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case ev := <-e.Events():
			if pred(ev) {
				return ev
			}
		case <-deadline:
			t.Fatal("no matching event within 5s")
		}
	}
}

func TestProtectDeniesOutsideAllowlist(t *testing.T) {
	forEachAttachMode(t, func(t *testing.T, mode AttachMode) {
		e := newTestEnforcer(t, mode)
		cg := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-protect-%s", mode))
		pol := PolicyVersion{Key: "ns/web", Version: 1, Mode: ModeProtect, Containers: map[string]Rules{
			"app": {Paths: []string{"/usr/bin/true", "/usr/bin/echo"}},
		}}
		if applied, err := e.PutPolicy(pol); err != nil || !applied {
			t.Fatalf("PutPolicy = %v, %v", applied, err)
		}
		if err := e.Bind(cg.ID, "ns/web", "app"); err != nil {
			t.Fatal(err)
		}
		if out, err := cg.Run("/usr/bin/echo", "hello"); err != nil || out != "hello\n" {
			t.Fatalf("allowed echo: %q, %v", out, err)
		}
		out, err := cg.Run("/usr/bin/id")
		assertDenied(t, mode, out, err)
		ev := waitEvent(t, e, func(ev Event) bool { return ev.Path == "/usr/bin/id" })
		if (mode == AttachExecKill) != (ev.Flags&FlagKilled != 0) {
			t.Fatalf("event flags %s in mode %s", ev.Flags, mode)
		}
		if ev.Action != ActionDenied || ev.Mode != ModeProtect || ev.Policy != "ns/web" || ev.Container != "app" ||
			ev.CgroupID != cg.ID || ev.BoundCgroupID != cg.ID || ev.PID == 0 || ev.PPID != uint32(os.Getpid()) {
			t.Fatalf("event %+v", ev)
		}
		// Outside the cgroup the same binary runs.
		if err := runHost("/usr/bin/id"); err != nil {
			t.Fatalf("id outside the cgroup: %v", err)
		}
	})
}

// TestConcurrentExecs runs allowed and denied execs from 8 goroutines at once:
// decisions under contention (in fanotify mode, events the gate reads in
// batches) must each be right, denials looking as the mode says.
func TestConcurrentExecs(t *testing.T) {
	forEachAttachMode(t, func(t *testing.T, mode AttachMode) {
		e := newTestEnforcer(t, mode)
		cg := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-concurrent-%s", mode))
		pol := PolicyVersion{Key: "ns/busy", Version: 1, Mode: ModeProtect, Containers: map[string]Rules{
			"app": {Paths: []string{"/usr/bin/true"}},
		}}
		if _, err := e.PutPolicy(pol); err != nil {
			t.Fatal(err)
		}
		if err := e.Bind(cg.ID, "ns/busy", "app"); err != nil {
			t.Fatal(err)
		}
		const workers, each = 8, 60
		errs := make(chan error, workers*each)
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					if i%2 == 0 {
						if _, err := cg.Run("/usr/bin/true"); err != nil {
							errs <- fmt.Errorf("allowed true: %w", err)
						}
						continue
					}
					out, err := cg.Run("/usr/bin/id")
					if !deniedAs(mode, out, err) {
						errs <- fmt.Errorf("id: out %q, err %v, want a %s denial", out, err, mode.Denies())
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		n := 0
		for err := range errs {
			if n++; n <= 5 {
				t.Error(err)
			}
		}
		if n > 0 {
			st, _ := e.Stats()
			t.Fatalf("%d of %d execs decided wrong; the program's counters: %v", n, workers*each, st.Counters)
		}
	})
}

// deniedAs reports whether an exec's result is a Protect denial as mode
// shows one: death by SIGKILL before any output (exec_kill), else EPERM.
func deniedAs(mode AttachMode, out string, err error) bool {
	if mode == AttachExecKill {
		var exitErr *exec.ExitError
		return errors.As(err, &exitErr) && exitErr.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL && out == ""
	}
	return errors.Is(err, syscall.EPERM) && strings.Contains(err.Error(), "operation not permitted")
}

// TestGateCrashFailsSafe kills the fanotify gate process: while it is gone the
// exec_kill program still stops what it would have denied (by SIGKILL), and
// the supervisor brings the gate back, with EPERM again.
func TestGateCrashFailsSafe(t *testing.T) {
	cg, gate, ok := gateProtected(t)
	if !ok {
		return
	}
	out, err := cg.Run("/usr/bin/id")
	assertDenied(t, AttachFanotify, out, err)
	if err := gate.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	var kills, eperms int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		out, err := cg.Run("/usr/bin/id")
		switch {
		case deniedAs(AttachExecKill, out, err):
			kills++
		case deniedAs(AttachFanotify, out, err):
			eperms++
		default:
			t.Fatalf("id with the gate down or restarting: out %q, err %v: neither denial", out, err)
		}
		if eperms > 0 {
			break
		}
	}
	if eperms == 0 {
		t.Fatalf("no EPERM within 10s of the gate's death (%d denials by SIGKILL meanwhile)", kills)
	}
	if _, err := cg.Run("/usr/bin/true"); err != nil {
		t.Fatalf("allowed binary after the gate's restart: %v", err)
	}
	t.Logf("gate killed: %d denials by SIGKILL meanwhile, EPERM again after %s", kills, time.Since(killed).Round(time.Millisecond))
}

// TestGateHangIsBounded stops the gate process (SIGSTOP) as if it hung: an exec
// waiting for it is let through by the kernel once the agent's watchdog kills
// the silent gate, exec_kill denies it, and the restarted gate answers again.
//
// It starts from GOMAXPROCS 1, as in a pod limited to one CPU: a fork waiting
// on the hung gate holds its P in the kernel, and with no other P the
// watchdog would never run (every exec on the machine then waits forever).
func TestGateHangIsBounded(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	cg, gate, ok := gateProtected(t)
	if !ok {
		return
	}
	if n := runtime.GOMAXPROCS(0); n < minProcsWithGate {
		t.Fatalf("GOMAXPROCS %d with a gate running: a fork waiting on a hung gate would stall the watchdog", n)
	}
	if err := gate.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := cg.Run("/usr/bin/id")
	waited := time.Since(start)
	assertDenied(t, AttachExecKill, out, err) // the kernel let it through, exec_kill killed it
	if waited > gateHungAfter+2*gateHeartbeat+time.Second {
		t.Fatalf("exec waited %s for a hung gate, want <= %s", waited, gateHungAfter+2*gateHeartbeat+time.Second)
	}
	waitFor := time.Now().Add(10 * time.Second)
	for {
		out, err := cg.Run("/usr/bin/id")
		if deniedAs(AttachFanotify, out, err) {
			break
		}
		if !deniedAs(AttachExecKill, out, err) {
			t.Fatalf("id while the gate restarts: out %q, err %v: neither denial", out, err)
		}
		if time.Now().After(waitFor) {
			t.Fatal("no EPERM within 10s of the watchdog's kill")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("exec behind a hung gate waited %s, then exec_kill denied it; the restarted gate answers with EPERM", waited.Round(time.Millisecond))
}

// TestGateNeverWaitsForTheAgent: with the agent not reading (nothing drains
// the queue), the gate's sends return at once and are counted as dropped: a
// task waiting for the gate never waits for the agent.
func TestGateNeverWaitsForTheAgent(t *testing.T) {
	g := &gateProcess{records: make(chan []byte, 2)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 10 {
			g.send(gateEvent, []byte("event"))
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("send blocked on a full queue")
	}
	if n := g.dropped.Load(); n != 8 {
		t.Fatalf("dropped %d records, want 8 (2 queued)", n)
	}
}

// gateProtected is a fanotify-mode enforcer with a cgroup in Protect mode that
// may run /usr/bin/true, and the gate's process.
func gateProtected(t *testing.T) (*testenv.Cgroup, *os.Process, bool) {
	t.Helper()
	testenv.RequireBPF(t)
	if !requireAttachMode(t, AttachFanotify) { // a matrix row that must refuse it: checked
		return nil, nil, false
	}
	e, cg := protected(t, AttachFanotify, ModeProtect, "/usr/bin/true")
	e.gate.mu.Lock()
	defer e.gate.mu.Unlock()
	return cg, e.gate.cmd.Process, true
}
