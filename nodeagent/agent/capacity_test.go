package agent

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/enforcer"
	"github.com/execgate/execgate/nodeagent/podpolicy"
)

// gaugeValue is the value of the gauge name whose labels include want.
func gaugeValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := want[l.GetName()]; ok && v != l.GetValue() {
					continue next
				}
			}
			sum += m.GetGauge().GetValue()
		}
	}
	return sum
}

// manyPaths is a Protect policy "ns/<name>" allowing n files under /opt/<name> to
// container "app".
func manyPaths(name string, n int) podpolicy.Policy {
	paths := make([]string, n)
	for i := range paths {
		paths[i] = fmt.Sprintf("/opt/%s/bin-%02d", name, i)
	}
	return podpolicy.Policy{UID: name + "-uid", Namespace: "ns", Name: name, Version: 1, Mode: podpolicy.ModeProtect,
		RulesByContainer: map[string][]string{"app": paths}}
}

// TestCapacityExhaustionFailsClosed is issue 14.2's attack on the node: a policy fills
// the node's rule map, the next pod's Protect policy fails with ErrCapacity, and that pod
// used to run unenforced (anything could execute). Now it is held fail closed: bound to
// its policy's deny-all version, with a Warning Event and the metrics
// execgate_agent_policy_load_failures_total and execgate_agent_held_pods; once the filler
// goes, the held pod gets its own policy without another push. The same holds when it
// is the namespace's share (not the node) that is full.
func TestCapacityExhaustionFailsClosed(t *testing.T) {
	tests := []struct {
		name   string
		cfg    enforcer.Config
		filler int // paths of the filler policy, in the victim's namespace
		reason string
	}{
		// 12 paths, loaded for the container and the pod's union: 24 of 32 entries; the
		// victim's 5 paths need 10, 8 are left.
		{"node full", enforcer.Config{MaxBindings: 64, MaxExactEntries: 32, MaxPrefixEntries: 16}, 12, "node_capacity"},
		// 7 paths: 14 of the namespace's 16 (25% of 64); the node has 50 left.
		{"namespace share full", enforcer.Config{MaxBindings: 64, MaxExactEntries: 64, MaxPrefixEntries: 16, NamespaceSharePercent: 25}, 7, "namespace_share"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { testCapacityFailsClosed(t, 60+2*i, tc.cfg, tc.filler, tc.reason) })
	}
}

func testCapacityFailsClosed(t *testing.T, seq int, cfg enforcer.Config, fillerPaths int, reason string) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	cfg.PinDir, cfg.Attach, cfg.Logger = n.pinDir, enforcer.AttachAuto, zaptest.NewLogger(t)
	e, err := enforcer.New(cfg)
	if err != nil {
		t.Fatalf("enforcer: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	kube := kubefake.NewClientset()
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{WorkloadPolicyResource: "WorkloadPolicyList"})
	reg := prometheus.NewRegistry()
	a := n.startAgent(t, e, func(o *Options) { o.Backstop = &Backstop{Kube: kube, Dynamic: dyn}; o.Registry = reg })
	waitFor(t, "backstop running", func() bool { return a.events.Load() != nil })
	ctx := context.Background()

	fillUID, fillCID := podUID(seq), containerID(seq)
	n.mkPod(t, fillUID, cgroups.QoSBurstable, fillCID)
	if _, _, err := a.ApplyPodPolicy(ctx, podPolicy(fillUID, cgroups.QoSBurstable, manyPaths("filler", fillerPaths),
		podpolicy.Container{Name: "app", ContainerID: "containerd://" + fillCID})); err != nil {
		t.Fatalf("filler: %v", err)
	}

	// The victim: 5 paths, 10 entries.
	uid, cid := podUID(seq+1), containerID(seq+1)
	pod, ctr := n.mkPod(t, uid, cgroups.QoSBurstable, cid)
	web := manyPaths("web", 3)
	web.RulesByContainer["app"] = append(web.RulesByContainer["app"], "/usr/bin/echo", "/usr/bin/true")
	push := podPolicy(uid, cgroups.QoSBurstable, web, podpolicy.Container{Name: "app", ContainerID: "containerd://" + cid})
	_, loaded, err := a.ApplyPodPolicy(ctx, push)
	if !errors.Is(err, podpolicy.ErrLimitExceeded) {
		t.Fatalf("victim push: err = %v, want ErrLimitExceeded", err)
	}
	t.Logf("victim push: %v", err)
	if loaded != 0 {
		t.Errorf("loaded version %d reported for the victim, want 0 (deny-all)", loaded)
	}
	for _, cg := range []struct {
		name string
		id   uint64
	}{{"pod", pod.ID}, {"container", ctr.ID}} {
		if b, ok := bindingOf(e, cg.id); !ok || b.Policy != "ns/web" {
			t.Errorf("victim %s cgroup bound %v (%+v), want ns/web's deny-all version", cg.name, ok, b)
		}
	}
	for _, exe := range []string{"/usr/bin/echo", "/usr/bin/id"} {
		out, err := ctr.Run(exe)
		if err == nil {
			t.Errorf("%s ran in the Protect pod whose policy did not fit: %q", exe, out)
			continue
		}
		assertDenied(t, e.AttachMode(), out, err)
	}
	failures := func() float64 {
		return counterValue(t, reg, "execgate_agent_policy_load_failures_total",
			map[string]string{"namespace": "ns", "policy": "ns/web", "reason": reason, "result": "fail_closed"})
	}
	if got := failures(); got != 1 {
		t.Errorf("execgate_agent_policy_load_failures_total{result=fail_closed} = %v, want 1", got)
	}
	if got := gaugeValue(t, reg, "execgate_agent_held_pods", map[string]string{"result": "fail_closed"}); got != 1 {
		t.Errorf("execgate_agent_held_pods{result=fail_closed} = %v, want 1", got)
	}
	waitFor(t, "a Warning Event on the victim pod", func() bool {
		list, err := kube.EventsV1().Events("ns").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, ev := range list.Items {
			if ev.Regarding.Name == push.Pod.Name && ev.Type == corev1.EventTypeWarning && ev.Reason == ReasonPolicyCapacityExceeded {
				t.Logf("event: %s", ev.Note)
				return true
			}
		}
		return false
	})

	// A retried push fails the same way and is counted, but the pod stays held.
	if _, _, err := a.ApplyPodPolicy(ctx, push); !errors.Is(err, podpolicy.ErrLimitExceeded) {
		t.Fatalf("retried push: err = %v, want ErrLimitExceeded", err)
	}
	if got := failures(); got != 2 {
		t.Errorf("after a retry the failures counter is %v, want 2", got)
	}

	// The filler goes: the held pod gets its policy, with no push.
	if _, err := a.PodDeleted(ctx, fillUID); err != nil {
		t.Fatal(err)
	}
	if v, _ := e.PolicyVersionOf("ns/web"); v != 1 {
		t.Fatalf("ns/web version %d after the filler went, want 1", v)
	}
	if out, err := ctr.Run("/usr/bin/echo", "hello"); err != nil || out != "hello\n" {
		t.Errorf("echo in the victim once its policy fits: %q, %v", out, err)
	}
	out, err := ctr.Run("/usr/bin/id")
	assertDenied(t, e.AttachMode(), out, err)
	if got := gaugeValue(t, reg, "execgate_agent_held_pods", map[string]string{"result": "fail_closed"}); got != 0 {
		t.Errorf("execgate_agent_held_pods{result=fail_closed} = %v after the policy loaded, want 0", got)
	}
}
