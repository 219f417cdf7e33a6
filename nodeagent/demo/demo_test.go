package demo

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/execgate/execgate/internal/testenv"
)

// TestDemoTwice runs the story twice in a row: both runs tell it whole and
// leave no pin and no cgroup behind.
func TestDemoTwice(t *testing.T) {
	testenv.RequireBPF(t)
	for run := 1; run <= 2; run++ {
		var out bytes.Buffer
		if err := Run(context.Background(), &out); err != nil {
			t.Fatalf("run %d: %v\n%s", run, err, out.String())
		}
		s := out.String()
		for _, want := range []string{"hello from an allowed binary", "action=denied mode=Protect", "exe=/usr/bin/id",
			"action=reported mode=Monitor", "uid=0(root)", "cleaned up"} {
			if !strings.Contains(s, want) {
				t.Fatalf("run %d: output lacks %q:\n%s", run, want, s)
			}
		}
		pins, _ := filepath.Glob("/sys/fs/bpf/execgate-demo-*")
		root, _ := testenv.CgroupRoot()
		cgs, _ := filepath.Glob(filepath.Join(root, "execgate-demo-*"))
		if len(pins)+len(cgs) != 0 {
			t.Fatalf("run %d left %v %v", run, pins, cgs)
		}
	}
	_ = os.Getpid
}
