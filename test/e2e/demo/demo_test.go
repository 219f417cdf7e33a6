package demo

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/test/e2e/cluster"
)

// TestRunTwice runs the demo twice in a row, as `make demo` would be, and checks
// each told the whole story and left no pins behind.
func TestRunTwice(t *testing.T) {
	cluster.RequireE2E(t)
	testenv.RequireBPF(t)
	for i := range 2 {
		var out bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		err := Run(ctx, &out)
		cancel()
		if err != nil {
			t.Fatalf("run %d: %v\n%s", i+1, err, out.String())
		}
		want := []string{"[1] WorkloadPolicy demo/web: mode Protect", "[3] kubectl exec", "hello from an allowed binary",
			"denied:", "violation event: DENIED", "[5] policy switched to Monitor", "allowed and reported: REPORTED", "cleaned up"}
		if strings.Contains(out.String(), "attached in fanotify mode") || strings.Contains(out.String(), "attached in lsm mode") ||
			strings.Contains(out.String(), "attached in fmod_ret mode") {
			want = append(want, "denied: fork/exec /usr/bin/id: operation not permitted")
		}
		for _, w := range want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("run %d: output lacks %q:\n%s", i+1, w, out.String())
			}
		}
		assertNothingLeft(t, fmt.Sprintf("run %d", i+1))
		if i == 0 {
			t.Logf("demo output:\n%s", out.String())
		}
	}
}

// TestInterrupted stops the demo midway, as Ctrl-C does (the command cancels
// Run's context on SIGINT): Run returns and leaves no process, cgroup or pin.
func TestInterrupted(t *testing.T) {
	cluster.RequireE2E(t)
	testenv.RequireBPF(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &watchedBuffer{at: "[2] pod", reached: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- Run(ctx, out) }()
	select {
	case <-out.reached:
	case err := <-done:
		t.Fatalf("demo ended before the interrupt: %v\n%s", err, out.String())
	case <-time.After(5 * time.Minute):
		t.Fatalf("demo did not reach %q:\n%s", out.at, out.String())
	}
	cancel() // Ctrl-C
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("interrupted demo returned no error")
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("interrupted demo did not return")
	}
	if !strings.Contains(out.String(), "cleaned up") {
		t.Errorf("interrupted demo did not clean up:\n%s", out.String())
	}
	assertNothingLeft(t, "after the interrupt")
}

// assertNothingLeft checks that this process's demo environments left no pins,
// cgroups or processes (other test binaries may run their own).
func assertNothingLeft(t *testing.T, when string) {
	t.Helper()
	tag := fmt.Sprintf("execgate-e2e-cluster-%d-", os.Getpid())
	if left, _ := filepath.Glob("/sys/fs/bpf/execgate-e2e-" + tag + "*"); len(left) > 0 {
		t.Errorf("%s: pins left: %v", when, left)
	}
	if root, err := testenv.CgroupRoot(); err == nil {
		if left, _ := filepath.Glob(filepath.Join(root, "execgate-e2e-"+tag+"*")); len(left) > 0 {
			t.Errorf("%s: cgroups left: %v", when, left)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(tag)) {
			t.Errorf("%s: process left: %s %q", when, filepath.Dir(p), bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}

// watchedBuffer is the demo's output; reached closes once it holds at.
type watchedBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	at      string
	reached chan struct{}
	once    sync.Once
}

func (w *watchedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.at) {
		w.once.Do(func() { close(w.reached) })
	}
	return n, err
}

func (w *watchedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
