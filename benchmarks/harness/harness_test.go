package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"default", func(*Config) {}, ""},
		{"quick", func(c *Config) { *c = QuickConfig() }, ""},
		{"no rounds", func(c *Config) { c.Rounds = 0 }, "rounds"},
		{"fewer samples than rounds", func(c *Config) { c.Samples = 3 }, "samples"},
		{"descending policies", func(c *Config) { c.OurPolicies = []int{100, 1} }, "our policies"},
		{"zero peer policies", func(c *Config) { c.PeerPolicies = []int{0, 10} }, "peer policies"},
		{"no memory points", func(c *Config) { c.MemoryPolicies = nil }, "memory policies"},
		{"no cluster", func(c *Config) { c.PodsPerNode = 0 }, "pods per node"},
		{"some modes", func(c *Config) { c.Modes = []enforcer.AttachMode{enforcer.AttachLSM, enforcer.AttachExecKill} }, ""},
		{"auto is no mode to time", func(c *Config) { c.Modes = []enforcer.AttachMode{enforcer.AttachAuto} }, `attach mode "auto" cannot be timed`},
		{"unknown mode", func(c *Config) { c.Modes = []enforcer.AttachMode{"kprobe"} }, `attach mode "kprobe" cannot be timed`},
		{"mode twice", func(c *Config) { c.Modes = []enforcer.AttachMode{enforcer.AttachLSM, enforcer.AttachLSM} }, `"lsm" named twice`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mutate(&c)
			err := c.Validate()
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestRunSmall runs the whole harness at toy sizes on the real kernel and
// checks that every state was measured and proved to enforce, and that
// nothing of the run stays behind. lsm is left out of Modes: it must be
// reported as not measured, whatever this kernel supports.
func TestRunSmall(t *testing.T) {
	testenv.RequireBPF(t)
	cfg := Config{
		Samples: 40, Rounds: 2, KernelSamples: 20,
		Modes:       []enforcer.AttachMode{enforcer.AttachExecKill, enforcer.AttachFanotify, enforcer.AttachFmodRet},
		OurPolicies: []int{1, 3}, PeerPolicies: []int{1, 3}, MemoryPolicies: []int{0, 2},
		UpdateSamples: 2, ClusterWorkloads: 3, PodsPerNode: 2,
	}
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	measured := map[Implementation]int{}
	lsmRows := 0
	for _, r := range res.Exec {
		if r.Impl == ImplExecgate && r.Mode == string(enforcer.AttachLSM) {
			lsmRows++
			if !strings.HasPrefix(r.Skipped, "not measured: ") || !strings.Contains(r.Skipped, "-modes") {
				t.Errorf("lsm %d %s: %q, want not measured (-modes)", r.Policies, r.Cgroup, r.Skipped)
			}
			continue
		}
		if r.Skipped != "" {
			if !strings.HasPrefix(r.Skipped, "n/a: ") {
				t.Errorf("%s %s skipped without saying why: %q", r.Impl, r.Mode, r.Skipped)
			}
			continue
		}
		measured[r.Impl]++
		if r.Wall.N != cfg.Samples || r.Baseline.N != cfg.Samples {
			t.Errorf("%s %s %d %s: %d samples, baseline %d; want %d", r.Impl, r.Mode, r.Policies, r.Cgroup, r.Wall.N, r.Baseline.N, cfg.Samples)
		}
		if r.Denial == "" || r.KernelNsPerExec <= 0 || r.ProgramRunsPerExec < float64(r.Policies)*0.9 && r.Impl == ImplPeer {
			t.Errorf("%s %s %d %s: denial %q, %.0f ns/exec, %.1f runs/exec", r.Impl, r.Mode, r.Policies, r.Cgroup, r.Denial, r.KernelNsPerExec, r.ProgramRunsPerExec)
		}
	}
	if lsmRows != 2*len(cfg.OurPolicies) {
		t.Errorf("%d lsm rows, want one per size and cgroup", lsmRows)
	}
	if measured[ImplExecgate] < 4 || measured[ImplPeer] < 4 {
		t.Errorf("measured %v, want every execgate exec_kill and peer state in both pods", measured)
	}
	if len(res.Memory.Points) != 2 || res.Memory.Points[1].Bytes <= res.Memory.Points[0].Bytes || res.Memory.Update.N != 2 {
		t.Errorf("memory %+v", res.Memory)
	}
	if res.ControlPlane != nil || !strings.Contains(res.ControlPlaneSkipped, "not measured") {
		t.Errorf("control plane: %+v %q", res.ControlPlane, res.ControlPlaneSkipped)
	}

	root, err := testenv.CgroupRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, fmt.Sprintf("execgate-bench-%d", os.Getpid()))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the run's cgroups are left behind: %v", err)
	}
	if pins, _ := filepath.Glob(filepath.Join(pinRoot, fmt.Sprintf("*-%d-*", os.Getpid()))); len(pins) > 0 {
		t.Errorf("pins left behind: %v", pins)
	}
}
