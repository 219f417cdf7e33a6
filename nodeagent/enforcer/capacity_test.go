package enforcer

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/execgate/execgate/internal/testenv"
)

// smallEnforcer loads an enforcer with tiny rule maps, pinned in a fresh bpffs directory.
func smallEnforcer(t *testing.T, cfg Config) *Enforcer {
	t.Helper()
	testenv.RequireBPF(t)
	cfg.PinDir = filepath.Join("/sys/fs/bpf", fmt.Sprintf("execgate-test-capacity-%d", time.Now().UnixNano()))
	cfg.Logger = zaptest.NewLogger(t)
	e, err := New(cfg)
	t.Cleanup(func() {
		if e != nil {
			e.Close()
		}
		if err := Cleanup(cfg.PinDir); err != nil {
			t.Errorf("cleanup %s: %v", cfg.PinDir, err)
		}
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return e
}

// paths returns n distinct paths under dir.
func paths(dir string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s/bin-%d", dir, i)
	}
	return out
}

// TestCapacityNamespaceShare is issue 14.2's attack on the node: one tenant's policies
// fill the rule maps and every later policy on the node, another tenant's included,
// fails with ErrCapacity (and its pods used to run unenforced). With a 25% share the
// greedy namespace is refused at its share and the other tenant's Protect policy loads
// and enforces.
func TestCapacityNamespaceShare(t *testing.T) {
	e := smallEnforcer(t, Config{MaxBindings: 64, MaxExactEntries: 64, MaxPrefixEntries: 16, NamespaceSharePercent: 25})
	mode := e.AttachMode()

	// Each greedy policy needs 14 exact entries (7 paths for the container, 7 for the
	// pod's union): the first fits the namespace's 16, the second does not.
	loaded := 0
	for i := range 8 {
		pol := PolicyVersion{Key: PolicyKey(fmt.Sprintf("greedy/p%d", i)), Version: 1, Mode: ModeProtect,
			Containers: map[string]Rules{"app": {Paths: paths(fmt.Sprintf("/opt/greedy%d", i), 7)}}}
		_, err := e.PutPolicy(pol)
		if err == nil {
			loaded++
			continue
		}
		if !errors.Is(err, ErrCapacity) {
			t.Fatalf("greedy policy %d: %v, want ErrCapacity", i, err)
		}
		if i > 0 && !errors.Is(err, ErrNamespaceShare) {
			t.Errorf("greedy policy %d refused by the node-wide limit, not the namespace share: %v", i, err)
		}
		t.Logf("greedy policy %d: %v", i, err)
	}
	if loaded != 1 {
		t.Errorf("greedy namespace loaded %d policies, want 1 (its 25%% share is 16 of 64 entries)", loaded)
	}

	// The other tenant's policy loads and enforces.
	pol := PolicyVersion{Key: "tenant/web", Version: 1, Mode: ModeProtect, Containers: map[string]Rules{
		"app": {Paths: append(paths("/opt/web", 5), "/usr/bin/true", "/usr/bin/echo")}}}
	if _, err := e.PutPolicy(pol); err != nil {
		t.Fatalf("another namespace's policy after the greedy one: %v", err)
	}
	cg := testenv.NewCgroup(t, "", "execgate-capacity-share")
	if err := e.Bind(cg.ID, "tenant/web", "app"); err != nil {
		t.Fatal(err)
	}
	if out, err := cg.Run("/usr/bin/echo", "hello"); err != nil || out != "hello\n" {
		t.Fatalf("allowed echo: %q, %v", out, err)
	}
	out, err := cg.Run("/usr/bin/id")
	assertDenied(t, mode, out, err)

	// A new version of a namespace's own policy is measured without the version it
	// replaces: the tenant may grow its policy up to the share.
	pol.Version, pol.Containers = 2, map[string]Rules{"app": {Paths: append(paths("/opt/web", 6), "/usr/bin/true", "/usr/bin/echo")}}
	if _, err := e.PutPolicy(pol); err != nil {
		t.Fatalf("a 16-entry version 2 of tenant/web: %v", err)
	}
	pol.Version, pol.Containers = 3, map[string]Rules{"app": {Paths: append(paths("/opt/web", 7), "/usr/bin/true", "/usr/bin/echo")}}
	if _, err := e.PutPolicy(pol); !errors.Is(err, ErrNamespaceShare) {
		t.Fatalf("an 18-entry version 3 of tenant/web: err = %v, want ErrNamespaceShare", err)
	}
	if v, _ := e.PolicyVersionOf("tenant/web"); v != 2 {
		t.Errorf("tenant/web version %d in force after the refused update, want 2", v)
	}
}

// TestCapacityDenyAllBindsWhenFull: the deny-all version a pod falls back to when its
// policy does not fit (issue 14.2) loads however full the maps and the namespace's share
// are, allows nothing, and is replaced in place by the real policy once it fits.
func TestCapacityDenyAllBindsWhenFull(t *testing.T) {
	e := smallEnforcer(t, Config{MaxBindings: 64, MaxExactEntries: 32, MaxPrefixEntries: 16, NamespaceSharePercent: 50})
	mode := e.AttachMode()
	filler := PolicyVersion{Key: "tenant/filler", Version: 1, Mode: ModeProtect,
		Containers: map[string]Rules{"app": {Paths: paths("/opt/filler", 8)}}}
	if _, err := e.PutPolicy(filler); err != nil {
		t.Fatal(err)
	}
	web := PolicyVersion{Key: "tenant/web", Version: 1, Mode: ModeProtect,
		Containers: map[string]Rules{"app": {Paths: []string{"/usr/bin/true", "/usr/bin/echo"}}}}
	if _, err := e.PutPolicy(web); !errors.Is(err, ErrNamespaceShare) {
		t.Fatalf("tenant/web with the namespace's share full: err = %v, want ErrNamespaceShare", err)
	}
	if applied, err := e.PutPolicy(DenyAll("tenant/web")); err != nil || !applied {
		t.Fatalf("deny-all version: applied %v, err %v", applied, err)
	}
	pod := testenv.NewCgroup(t, "", "execgate-capacity-denyall")
	ctr := testenv.NewCgroup(t, pod.Path, "ctr")
	if err := e.Bind(pod.ID, "tenant/web", UnionContainer); err != nil {
		t.Fatal(err)
	}
	if err := e.Bind(ctr.ID, "tenant/web", "app"); err != nil {
		t.Fatal(err)
	}
	for _, cg := range []*testenv.Cgroup{pod, ctr} {
		out, err := cg.Run("/usr/bin/true")
		assertDenied(t, mode, out, err)
	}

	// The filler goes: the real policy fits and replaces the deny-all version.
	if err := e.DeletePolicy("tenant/filler"); err != nil {
		t.Fatal(err)
	}
	if applied, err := e.PutPolicy(web); err != nil || !applied {
		t.Fatalf("tenant/web once it fits: applied %v, err %v", applied, err)
	}
	if out, err := ctr.Run("/usr/bin/echo", "hello"); err != nil || out != "hello\n" {
		t.Fatalf("allowed echo after the policy loaded: %q, %v", out, err)
	}
	out, err := ctr.Run("/usr/bin/id")
	assertDenied(t, mode, out, err)
}
