package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/bpf"
	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/enforcer"
	"github.com/execgate/execgate/nodeagent/podpolicy"
)

const testNode = "node-a"

var testSeq atomic.Uint64

// testNodeEnv is one simulated node: a kubelet cgroup subtree and a bpffs
// pin directory, both removed at cleanup.
type testNodeEnv struct {
	layout cgroups.Layout
	pinDir string
}

func newTestNodeEnv(t *testing.T, driver cgroups.Driver) *testNodeEnv {
	t.Helper()
	testenv.RequireBPF(t)
	n := testSeq.Add(1)
	cg := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-agent-test-%d-%d", os.Getpid(), n))
	layout, err := cgroups.NewLayout(cg.Path, driver, "")
	if err != nil {
		t.Fatal(err)
	}
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("execgate-agent-test-%d-%d", os.Getpid(), n))
	t.Cleanup(func() {
		if err := enforcer.Cleanup(pin); err != nil {
			t.Errorf("cleanup pins: %v", err)
		}
	})
	return &testNodeEnv{layout: layout, pinDir: pin}
}

func (n *testNodeEnv) newEnforcer(t *testing.T) *enforcer.Enforcer {
	t.Helper()
	e, err := enforcer.New(enforcer.Config{PinDir: n.pinDir, Attach: enforcer.AttachAuto, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatalf("enforcer: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// runningAgent is an Agent whose Run goroutine the test owns.
type runningAgent struct {
	*Agent
	stop func()
}

func (n *testNodeEnv) startAgent(t *testing.T, e *enforcer.Enforcer, mod func(*Options)) *runningAgent {
	t.Helper()
	opts := Options{NodeName: testNode, Enforcer: e, Layout: n.layout, GCInterval: time.Hour,
		Logger: zaptest.NewLogger(t), Registry: prometheus.NewRegistry()}
	if mod != nil {
		mod(&opts)
	}
	a, err := New(opts)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once atomic.Bool
	stop := func() {
		if once.CompareAndSwap(false, true) {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent Run: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	waitFor(t, "agent ready", a.Ready)
	return &runningAgent{Agent: a, stop: stop}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// mkPodCgroup creates the pod's cgroup as the kubelet would.
func (n *testNodeEnv) mkPodCgroup(t *testing.T, uid string, qos cgroups.QoS) *testenv.Cgroup {
	t.Helper()
	return mkCgroup(t, n.layout.PodCgroupPath(uid, qos))
}

func (n *testNodeEnv) mkContainerCgroup(t *testing.T, uid string, qos cgroups.QoS, cid string) *testenv.Cgroup {
	t.Helper()
	return mkCgroup(t, n.layout.ContainerCgroupPath(uid, qos, cgroups.RuntimeContainerd, cid))
}

func mkCgroup(t *testing.T, path string) *testenv.Cgroup {
	t.Helper()
	if path == "" {
		t.Fatal("invalid cgroup path")
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	id, err := cgroups.ID(path)
	if err != nil {
		t.Fatal(err)
	}
	return &testenv.Cgroup{Path: path, ID: id}
}

func containerID(n int) string { return fmt.Sprintf("%064x", n) }

func podUID(n int) string { return fmt.Sprintf("0000%04x-aaaa-bbbb-cccc-%012x", n&0xffff, n) }

// protectApp allows /usr/bin/true and /usr/bin/echo to container "app".
func protectApp(version uint64) podpolicy.Policy {
	return podpolicy.Policy{UID: "policy-uid-1", Namespace: "ns", Name: "web", Version: version, Mode: podpolicy.ModeProtect,
		RulesByContainer: map[string][]string{"app": {"/usr/bin/echo", "/usr/bin/true"}}}
}

func podPolicy(uid string, qos cgroups.QoS, pol podpolicy.Policy, containers ...podpolicy.Container) *podpolicy.PodPolicy {
	return &podpolicy.PodPolicy{
		Pod: podpolicy.Pod{UID: uid, Namespace: "ns", Name: "web-" + uid[len(uid)-4:], NodeName: testNode,
			QoSClass: podpolicy.QoSClass(qos), Containers: containers},
		Policy: pol,
	}
}

// assertProtected checks that cg runs echo and is denied id, in the form
// the attach mode denies (EPERM, or SIGKILL before the binary runs).
func assertProtected(t *testing.T, e *enforcer.Enforcer, cg *testenv.Cgroup) {
	t.Helper()
	assertProtectedAs(t, e.AttachMode(), cg)
}

// assertProtectedAs checks that cg is protected, with denials looking as in
// mode.
func assertProtectedAs(t *testing.T, mode enforcer.AttachMode, cg *testenv.Cgroup) {
	t.Helper()
	if out, err := cg.Run("/usr/bin/echo", "hello"); err != nil || out != "hello\n" {
		t.Fatalf("allowed exec: out %q err %v", out, err)
	}
	out, err := cg.Run("/usr/bin/id")
	assertDenied(t, mode, out, err)
}

func assertDenied(t *testing.T, mode enforcer.AttachMode, out string, err error) {
	t.Helper()
	if mode == enforcer.AttachExecKill {
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) || exitErr.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("denied exec: err = %v, want death by SIGKILL", err)
		}
		if out != "" {
			t.Fatalf("denied binary printed %q: it ran", out)
		}
		return
	}
	if !errors.Is(err, syscall.EPERM) || !strings.Contains(err.Error(), "operation not permitted") {
		t.Fatalf("denied exec: err = %v, want EPERM (operation not permitted)", err)
	}
}

func assertUnrestricted(t *testing.T, cg *testenv.Cgroup) {
	t.Helper()
	if _, err := cg.Run("/usr/bin/id"); err != nil {
		t.Fatalf("exec outside any policy: %v", err)
	}
}

// assertNoEntries checks the kernel maps themselves, not the bookkeeping.
func assertNoEntries(t *testing.T, e *enforcer.Enforcer) {
	t.Helper()
	for _, m := range []string{bpf.ExecgateMapBindings, bpf.ExecgateMapExactRules, bpf.ExecgateMapPrefixRules} {
		n, err := e.CountEntries(m)
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("map %s has %d entries, want 0", m, n)
		}
	}
	if p := e.Policies(); len(p) != 0 {
		t.Errorf("policies still loaded: %v", p)
	}
}

func bindingOf(e *enforcer.Enforcer, cg uint64) (enforcer.Binding, bool) {
	for _, b := range e.Bindings() {
		if b.CgroupID == cg {
			return b, true
		}
	}
	return enforcer.Binding{}, false
}

// apiPod is the API server's view of a running Burstable pod on testNode with one
// container "app", labelled with policy.
func apiPod(name, uid, policy string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(uid), Labels: map[string]string{v1alpha1.PolicyLabel: policy}},
		Spec:       corev1.PodSpec{NodeName: testNode, Containers: []corev1.Container{{Name: "app"}}},
		Status:     corev1.PodStatus{QOSClass: corev1.PodQOSBurstable, Phase: corev1.PodRunning},
	}
}
