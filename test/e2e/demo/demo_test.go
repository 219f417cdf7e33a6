package demo

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
		for _, want := range []string{"[1] WorkloadPolicy demo/web: mode Protect", "[3] kubectl exec", "hello from an allowed binary",
			"denied:", "violation event: DENIED", "[5] policy switched to Monitor", "allowed and reported: REPORTED", "cleaned up"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("run %d: output lacks %q:\n%s", i+1, want, out.String())
			}
		}
		// Only this process's environments: other test binaries may run their own.
		left, _ := filepath.Glob(fmt.Sprintf("/sys/fs/bpf/execgate-e2e-execgate-e2e-cluster-%d-*", os.Getpid()))
		if len(left) > 0 {
			t.Errorf("run %d left pins: %v", i+1, left)
		}
		if i == 0 {
			t.Logf("demo output:\n%s", out.String())
		}
	}

}
