package agents_test

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

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/nodeagent/agent"
	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/enforcer"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/webhook/agents"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
)

var realNodeSeq atomic.Uint64

// realNode is one node as the controller sees it, all real but the kubelet: an enforcer
// in this kernel, a kubelet-like cgroup tree, the agent (with its API-server backstop
// over fake clients) behind its gRPC server on mTLS, and the controller's client for it.
type realNode struct {
	layout cgroups.Layout
	enf    *enforcer.Enforcer
	kube   *kubefake.Clientset
	client agentv1.AgentServiceClient
}

func newRealNode(t *testing.T, node string, policies ...*v1alpha1.WorkloadPolicy) *realNode {
	t.Helper()
	testenv.RequireBPF(t)
	n := realNodeSeq.Add(1)
	root := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-webhook-test-%d-%d", os.Getpid(), n))
	layout, err := cgroups.NewLayout(root.Path, cgroups.DriverSystemd, "")
	if err != nil {
		t.Fatal(err)
	}
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("execgate-webhook-test-%d-%d", os.Getpid(), n))
	t.Cleanup(func() {
		if err := enforcer.Cleanup(pin); err != nil {
			t.Errorf("cleanup pins: %v", err)
		}
	})
	e, err := enforcer.New(enforcer.Config{PinDir: pin, Attach: enforcer.AttachAuto, Logger: zaptest.NewLogger(t).Named("enforcer")})
	if err != nil {
		t.Fatalf("enforcer: %v", err)
	}
	t.Cleanup(func() { e.Close() })

	var objs []runtime.Object
	for _, p := range policies {
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(p)
		if err != nil {
			t.Fatal(err)
		}
		obj := &unstructured.Unstructured{Object: u}
		obj.SetAPIVersion(v1alpha1.GroupVersion.String())
		obj.SetKind("WorkloadPolicy")
		objs = append(objs, obj)
	}
	kube := kubefake.NewClientset()
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{agent.WorkloadPolicyResource: "WorkloadPolicyList"}, objs...)
	a, err := agent.New(agent.Options{NodeName: node, Enforcer: e, Layout: layout, GCInterval: time.Hour,
		Logger: zaptest.NewLogger(t).Named("agent"), Backstop: &agent.Backstop{Kube: kube, Dynamic: dyn}})
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent Run: %v", err)
		}
	})
	webhooktest.WaitUntil(t, "agent ready", a.Ready)

	fleet := webhooktest.NewFleet(t)
	addr, _ := fleet.Serve(t, node, "127.0.0.1:0", a)
	pool, err := agents.NewAgentPool(fleet.Dialer, agents.NewStaticAgentDirectory(map[string]string{node: addr}), 2, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	client, err := pool.Client(node)
	if err != nil {
		t.Fatal(err)
	}
	return &realNode{layout: layout, enf: e, kube: kube, client: client}
}

// startPod creates the cgroups the kubelet would for pod (its containers' ids are in
// its status) and returns each container's cgroup by name.
func (n *realNode) startPod(t *testing.T, pod *corev1.Pod) map[string]*testenv.Cgroup {
	t.Helper()
	qos := cgroups.QoS(pod.Status.QOSClass)
	mk := func(path string) *testenv.Cgroup {
		if path == "" {
			t.Fatal("invalid cgroup path")
		}
		if err := os.MkdirAll(path, 0o755); err != nil {
			t.Fatal(err)
		}
		id, err := cgroups.ID(path)
		if err != nil {
			t.Fatal(err)
		}
		return &testenv.Cgroup{Path: path, ID: id}
	}
	mk(n.layout.PodCgroupPath(string(pod.UID), qos))
	out := map[string]*testenv.Cgroup{}
	for _, s := range pod.Status.ContainerStatuses {
		_, cid, _ := strings.Cut(s.ContainerID, "://")
		out[s.Name] = mk(n.layout.ContainerCgroupPath(string(pod.UID), qos, cgroups.RuntimeContainerd, cid))
	}
	return out
}

// push is the controller's push of pod's policy, compiled as the webhook and the
// reconciler compile it.
func (n *realNode) push(t *testing.T, pod *corev1.Pod, node string, policy *v1alpha1.WorkloadPolicy) *agentv1.ApplyPodPolicyRequest {
	t.Helper()
	req, err := agents.CompilePodPolicy(pod, node, policy, "req-"+pod.Name)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := n.client.ApplyPodPolicy(ctx, req); err != nil {
		t.Fatalf("push %s: %v", pod.Name, err)
	}
	return req
}

// boundByName reports whether every container cgroup of cgs is bound with its own name.
func (n *realNode) boundByName(cgs map[string]*testenv.Cgroup) bool {
	got := map[uint64]string{}
	for _, b := range n.enf.Bindings() {
		got[b.CgroupID] = b.Container
	}
	for name, cg := range cgs {
		if c, ok := got[cg.ID]; !ok || (c != name && c != enforcer.WildcardContainer) {
			return false
		}
	}
	return true
}

// runPod is a pod of the shared policy with named containers, each with a container id.
func runPod(name string, n int, node string, containers ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: webhooktest.NS, Name: name, UID: types.UID(fmt.Sprintf("0000%04x-aaaa-bbbb-cccc-%012x", n, n)),
			Labels: map[string]string{v1alpha1.PolicyLabel: "shared"}},
		Spec:   corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{QOSClass: corev1.PodQOSBurstable, Phase: corev1.PodRunning},
	}
	for i, c := range containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c})
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses,
			corev1.ContainerStatus{Name: c, ContainerID: fmt.Sprintf("containerd://%064x", n*100+i)})
	}
	return p
}

// execOutcome runs path in cg: "ran", or "denied" in the form the attach mode denies
// (EPERM, or SIGKILL before the binary ran), or what went wrong.
func execOutcome(mode enforcer.AttachMode, cg *testenv.Cgroup, path string) string {
	out, err := cg.Run(path)
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return "ran"
	case mode == enforcer.AttachExecKill && errors.As(err, &exitErr) && exitErr.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL && out == "":
		return "denied"
	case errors.Is(err, syscall.EPERM):
		return "denied"
	}
	return fmt.Sprintf("failed: %v (output %q)", err, out)
}

// TestSubsetSecondPodGetsWholePolicy is issue 14's attack 4 (a correctness hole that
// also decided what a pod could run by which pod came first): two pods on one node
// share a Protect policy but have different containers. The webhook compiled only the
// first pod's containers' rules, the agent loaded that as the policy's generation and
// ignored the second pod's push of the same generation, so the second pod's containers
// got empty slots and were denied their own allowlisted programs; "*" rules loaded when
// the agent's backstop won, not when the webhook did. Now the push carries the whole
// policy: in every order of pushes and backstop, each container runs exactly its own
// rules (or "*"'s), and the node holds one identical version.
func TestSubsetSecondPodGetsWholePolicy(t *testing.T) {
	const node = "node-a"
	policy := &v1alpha1.WorkloadPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: webhooktest.NS, Name: "shared", UID: "shared-uid", Generation: 2},
		Spec: v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.ModeProtect, RulesByContainer: v1alpha1.RulesByContainer{
			"web":    {Executables: []string{"/usr/bin/true"}},
			"worker": {Executables: []string{"/usr/bin/echo"}},
			"*":      {Executables: []string{"/usr/bin/env"}},
		}},
	}
	// What each container may run, read from the policy: its own key, else "*".
	allowed := func(container string) map[string]bool {
		r, _ := policy.Spec.RulesByContainer.For(container)
		out := map[string]bool{}
		for _, p := range r.Executables {
			out[p] = true
		}
		return out
	}
	probes := []string{"/usr/bin/true", "/usr/bin/echo", "/usr/bin/env", "/usr/bin/id"}
	union := map[string]bool{}
	entries := 0
	for _, r := range policy.Spec.RulesByContainer {
		entries += len(r.Executables)
		for _, p := range r.Executables {
			union[p] = true
		}
	}
	wantSlots, wantEntries := len(policy.Spec.RulesByContainer)+1, entries+len(union) // every key and the pod-wide union

	type step struct {
		pod      int  // 0: web-1 (container web), 1: worker-1 (worker and helper, which "*" covers)
		backstop bool // the agent's own watch of the API server applies it, not the controller's push
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"two pushes", []step{{0, false}, {1, false}}},
		{"two pushes, the other order", []step{{1, false}, {0, false}}},
		{"push, then the backstop", []step{{0, false}, {1, true}}},
		{"backstop, then push", []step{{1, true}, {0, false}}},
	}
	var first *enforcer.LoadedPolicy
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := newRealNode(t, node, policy)
			pods := []*corev1.Pod{runPod("web-1", 10*i+1, node, "web"), runPod("worker-1", 10*i+2, node, "worker", "helper")}
			cgs := make([]map[string]*testenv.Cgroup, len(pods))
			for j, s := range tc.steps {
				pod := pods[s.pod]
				cgs[s.pod] = n.startPod(t, pod)
				if !s.backstop {
					req := n.push(t, pod, node, policy)
					if len(req.GetPolicy().GetRulesByContainer()) != len(policy.Spec.RulesByContainer) {
						t.Errorf("push %d for %s carried rules for %d keys, the policy has %d", j, pod.Name, len(req.GetPolicy().GetRulesByContainer()), len(policy.Spec.RulesByContainer))
					}
				} else if _, err := n.kube.CoreV1().Pods(webhooktest.NS).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
				webhooktest.WaitUntil(t, pod.Name+"'s containers bound", func() bool { return n.boundByName(cgs[s.pod]) })
			}

			mode := n.enf.AttachMode()
			for p, byName := range cgs {
				for container, cg := range byName {
					ok := allowed(container)
					for _, probe := range probes {
						want := "denied"
						if ok[probe] {
							want = "ran"
						}
						if got := execOutcome(mode, cg, probe); got != want {
							t.Errorf("%s container %s: exec %s %s, want %s", pods[p].Name, container, probe, got, want)
						}
					}
				}
			}

			loaded := n.enf.Policies()
			if len(loaded) != 1 {
				t.Fatalf("loaded policies %+v, want one", loaded)
			}
			lp := loaded[0]
			if lp.Version != uint64(policy.Generation) || lp.Slots != wantSlots || lp.Entries != wantEntries {
				t.Errorf("loaded %s version %d with %d slots and %d entries, want version %d, %d slots (every key and the union), %d entries",
					lp.Key, lp.Version, lp.Slots, lp.Entries, policy.Generation, wantSlots, wantEntries)
			}
			// Which path won must not matter: the same version, content and digest.
			if first == nil {
				first = &lp
			} else if lp != *first {
				t.Errorf("loaded %+v, but %q loaded %+v", lp, tests[0].name, *first)
			}
			req, err := agents.CompilePodPolicy(pods[0], node, policy, "")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			st, err := n.client.GetStatus(ctx, &agentv1.GetStatusRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if len(st.GetPolicies()) != 1 || st.GetPolicies()[0].GetDigest() != req.GetPolicy().GetDigest() {
				t.Errorf("GetStatus policies %v, want one with the pushed digest %s", st.GetPolicies(), req.GetPolicy().GetDigest())
			}
		})
	}
}
