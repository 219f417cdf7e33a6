package controlplane

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/test/e2e/cluster"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"default", func(*Config) {}, ""},
		{"quick", func(c *Config) { *c = QuickConfig() }, ""},
		{"one node", func(c *Config) { c.Nodes = 1 }, "nodes must be at least 2"},
		{"no bind pods", func(c *Config) { c.BindPods = 0 }, "bind pods"},
		{"more policies than pods", func(c *Config) { c.ThroughputPolicies = c.ThroughputPods + 1 }, "must not exceed"},
		{"no poll interval", func(c *Config) { c.UpdatePoll = 0 }, "update poll"},
		{"negative gap", func(c *Config) { c.BindGap = -time.Millisecond }, "bind gap"},
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

// requireControlPlane skips t, or fails it under EXECGATE_REQUIRE_E2E=1 /
// EXECGATE_REQUIRE_BPF=1, unless this machine runs the e2e framework: the
// control-plane binaries, root, BPF and the go toolchain.
func requireControlPlane(t *testing.T) {
	t.Helper()
	cluster.RequireE2E(t)
	if os.Geteuid() != 0 {
		testenv.Need(t, cluster.RequireE2EEnv, "root (agents load BPF, the kubelet simulators create cgroups)")
	}
	testenv.RequireBPF(t)
	if _, err := exec.LookPath("go"); err != nil {
		testenv.Need(t, cluster.RequireE2EEnv, "the go toolchain on PATH (the framework builds the agent and controller)")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestRunSmall runs items 4-6 at toy sizes through the real control plane,
// controller and agents, and checks that every number was measured and
// that what it measured is what the items ask.
func TestRunSmall(t *testing.T) {
	requireControlPlane(t)
	cfg := QuickConfig()
	cfg.BindPods, cfg.ThroughputPods, cfg.ThroughputPolicies, cfg.Creators = 6, 30, 2, 4
	cfg.Updates = 2
	cfg.Progress = testWriter{t}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	res, err := b.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}

	if res.BindToAck.N != cfg.BindPods || res.BindToMap.N != cfg.BindPods {
		t.Errorf("item 4: %d binding calls and %d map times, want %d each", res.BindToAck.N, res.BindToMap.N, cfg.BindPods)
	}
	if res.BindToMap.Min <= 0 || res.BindToAck.Min <= 0 {
		t.Errorf("item 4: non-positive times: ack %+v, map %+v", res.BindToAck, res.BindToMap)
	}
	// With healthy agents the push lands inside the binding call: the entry
	// is in the map before the call returns.
	if res.BindPushMissed > cfg.BindPods/2 {
		t.Errorf("item 4: %d of %d pods reached their agent other than by the webhook's push", res.BindPushMissed, cfg.BindPods)
	}
	if res.BindPushMissed == 0 && res.BindToMap.Median > res.BindToAck.Median {
		t.Errorf("item 4: median time to the map %s after the median binding call %s, though every push landed inside the call", res.BindToMap.Median, res.BindToAck.Median)
	}

	want := []string{ScenarioNoWebhook, ScenarioHealthy, ScenarioAgentDead}
	if len(res.Throughput) != len(want) {
		t.Fatalf("item 5: %d scenarios, want %v", len(res.Throughput), want)
	}
	for i, r := range res.Throughput {
		if r.Scenario != want[i] || r.Pods != cfg.ThroughputPods || r.PodsPerSecond <= 0 || r.Bound <= 0 || r.Created <= 0 {
			t.Errorf("item 5, scenario %d: %+v, want %q with %d pods bound", i, r, want[i], cfg.ThroughputPods)
		}
	}

	if res.PolicyUpdate.N != cfg.Updates || res.PolicyUpdate.Min <= 0 {
		t.Errorf("item 6: %+v, want %d positive times", res.PolicyUpdate, cfg.Updates)
	}
	if res.Nodes != cfg.Nodes || res.UpdatePods != cfg.UpdateNodes*cfg.UpdatePodsPerNode || res.PushTimeout != cfg.PushTimeout {
		t.Errorf("setup not recorded: %+v", res)
	}
	t.Logf("ack %s / map %s; throughput %+v; update %s", res.BindToAck.Median, res.BindToMap.Median, res.Throughput, res.PolicyUpdate.Median)
}
