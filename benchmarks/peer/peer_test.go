package peer_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/execgate/execgate/benchmarks/execbench"
	"github.com/execgate/execgate/benchmarks/peer"
	"github.com/execgate/execgate/internal/testenv"
)

// TestPeerPolicyEnforcesOnlyItsCgroups loads two peer policies on the
// tracepoint hook: the one covering the cgroup allows its programs and kills
// anything else; the other cgroup is untouched; detached, nothing enforces.
func TestPeerPolicyEnforcesOnlyItsCgroups(t *testing.T) {
	testenv.RequireBPF(t)
	progs, err := execbench.BuildPrograms(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	enforced := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-peer-e-%d", time.Now().UnixNano()))
	other := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-peer-o-%d", time.Now().UnixNano()))

	mine, err := peer.Load(peer.HookExecKill, progs.Allowed(), []uint64{enforced.ID})
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	theirs, err := peer.Load(peer.HookExecKill, []string{"/opt/other/bin/tool"}, []uint64{1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()

	if _, err := execbench.TimeExecs(enforced, progs, 20); err != nil {
		t.Fatalf("allowed programs: %v", err)
	}
	if how, err := execbench.ExecDenied(enforced, progs); err != nil || how != "SIGKILL" {
		t.Fatalf("not-allowed program: %q, %v; want SIGKILL", how, err)
	}
	if _, err := other.Run(progs.Denied); err != nil {
		t.Fatalf("a cgroup no policy covers must run anything: %v", err)
	}
	if b, err := mine.KernelBytes(); err != nil || b == 0 {
		t.Fatalf("kernel bytes %d, %v", b, err)
	}

	if err := mine.Detach(); err != nil {
		t.Fatal(err)
	}
	if _, err := enforced.Run(progs.Denied); err != nil {
		t.Fatalf("detached policy still enforces: %v", err)
	}
	if err := mine.Attach(); err != nil {
		t.Fatal(err)
	}
	if _, err := execbench.ExecDenied(enforced, progs); err != nil {
		t.Fatalf("re-attached policy: %v", err)
	}
}

func TestLoadRefusesBadInput(t *testing.T) {
	tests := []struct {
		name  string
		hook  peer.Hook
		paths []string
	}{
		{"unknown hook", "kprobe", []string{"/bin/true"}},
		{"empty path", peer.HookExecKill, []string{""}},
		{"path longer than the key", peer.HookExecKill, []string{"/" + string(make([]byte, peer.MaxPathLen))}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if p, err := peer.Load(tc.hook, tc.paths, nil); err == nil {
				p.Close()
				t.Fatal("loaded")
			}
		})
	}
}
