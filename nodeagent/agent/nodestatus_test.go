package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/internal/testchart"
	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/nodeagent/cgroups"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/test/e2e/cluster"
)

func TestNodeStatusFromAgent(t *testing.T) {
	policy := func(ns, name string, v uint64, m agentv1.Mode) *agentv1.PolicyStatus {
		return &agentv1.PolicyStatus{Namespace: ns, Name: name, Version: v, Mode: m}
	}
	many := &agentv1.AgentStatus{AttachMode: "lsm"}
	for i := range v1alpha1.MaxNodePolicies + 3 {
		many.Policies = append(many.Policies, policy("ns", fmt.Sprintf("p%04d", v1alpha1.MaxNodePolicies+3-i), 1, agentv1.Mode_MODE_PROTECT))
	}
	tests := []struct {
		name  string
		in    *agentv1.AgentStatus
		check func(t *testing.T, s v1alpha1.ExecgateNodeStatus)
	}{
		{"empty agent", &agentv1.AgentStatus{}, func(t *testing.T, s v1alpha1.ExecgateNodeStatus) {
			want := v1alpha1.ExecgateNodeStatus{BPFLSMActive: true, AgentVersion: "v1"}
			if fmt.Sprint(s) != fmt.Sprint(want) {
				t.Errorf("got %+v, want %+v", s, want)
			}
		}},
		{"pods, policies and maps", &agentv1.AgentStatus{
			AttachMode: "exec_kill", KernelVersion: "6.18.0", EventsDropped: 7,
			Pods: []*agentv1.PodStatus{
				{State: agentv1.PodState_POD_STATE_ENFORCED}, {State: agentv1.PodState_POD_STATE_ENFORCED},
				{State: agentv1.PodState_POD_STATE_PENDING},
			},
			Policies: []*agentv1.PolicyStatus{
				policy("shop", "web", 3, agentv1.Mode_MODE_MONITOR), policy("bank", "api", 1, agentv1.Mode_MODE_PROTECT),
				policy("shop", "cart", 2, agentv1.Mode_MODE_LEARN),
			},
			Maps: []*agentv1.MapStatus{{Bytes: 1000, Entries: 3}, {Bytes: 24, Entries: 0}},
		}, func(t *testing.T, s v1alpha1.ExecgateNodeStatus) {
			if s.AttachMode != v1alpha1.AttachExecKill || s.Kernel != "6.18.0" || s.EventsDropped != 7 ||
				s.PodsInForce != 2 || s.PodsPending != 1 || s.KernelMemoryBytes != 1024 || s.MapEntries != 3 {
				t.Errorf("got %+v", s)
			}
			want := []v1alpha1.NodePolicy{
				{Namespace: "bank", Name: "api", Version: 1, Mode: v1alpha1.ModeProtect},
				{Namespace: "shop", Name: "cart", Version: 2, Mode: v1alpha1.ModeLearn},
				{Namespace: "shop", Name: "web", Version: 3, Mode: v1alpha1.ModeMonitor},
			}
			if fmt.Sprint(s.Policies) != fmt.Sprint(want) || s.PolicyCount != 3 || s.PoliciesTruncated {
				t.Errorf("policies %+v (count %d, truncated %v), want %+v", s.Policies, s.PolicyCount, s.PoliciesTruncated, want)
			}
		}},
		{"too many policies", many, func(t *testing.T, s v1alpha1.ExecgateNodeStatus) {
			if len(s.Policies) != v1alpha1.MaxNodePolicies || !s.PoliciesTruncated || s.PolicyCount != v1alpha1.MaxNodePolicies+3 {
				t.Errorf("%d policies listed, count %d, truncated %v", len(s.Policies), s.PolicyCount, s.PoliciesTruncated)
			}
			if s.Policies[0].Name != "p0001" {
				t.Errorf("first listed %s, want the sorted first p0001", s.Policies[0].Name)
			}
		}},
		{"refused attach modes", &agentv1.AgentStatus{AttachMode: "fmod_ret", AttachRefusals: []*agentv1.AttachRefusal{
			{Mode: "lsm", Reason: `"bpf" is not in the kernel's active LSM list`}, {Mode: "bogus", Reason: "x"},
			{Mode: "fanotify", Reason: strings.Repeat("r", 600)}}},
			func(t *testing.T, s v1alpha1.ExecgateNodeStatus) {
				if len(s.AttachRefusals) != 2 || s.AttachRefusals[0].Mode != v1alpha1.AttachLSM ||
					!strings.Contains(s.AttachRefusals[0].Reason, "LSM list") || len(s.AttachRefusals[1].Reason) != 512 {
					t.Errorf("refusals %+v: want lsm with its reason, the unknown mode dropped, fanotify's reason cut to 512", s.AttachRefusals)
				}
			}},
		{"unknown attach mode and huge counters", &agentv1.AgentStatus{AttachMode: "auto", EventsDropped: 1 << 63, KernelVersion: strings.Repeat("k", 100)},
			func(t *testing.T, s v1alpha1.ExecgateNodeStatus) {
				if s.AttachMode != "" || s.EventsDropped != 1<<63-1 || len(s.Kernel) != 64 {
					t.Errorf("got attach %q, dropped %d, kernel of %d bytes", s.AttachMode, s.EventsDropped, len(s.Kernel))
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.check(t, nodeStatusFromAgent(tt.in, true, "v1")) })
	}
}

func TestNodeStatusBackoff(t *testing.T) {
	for _, tt := range []struct {
		failures int
		want     time.Duration
	}{{1, 2 * time.Second}, {2, 4 * time.Second}, {4, 16 * time.Second}, {5, 30 * time.Second}, {50, 30 * time.Second}} {
		if got := backoff(2*time.Second, 30*time.Second, tt.failures); got != tt.want {
			t.Errorf("backoff after %d failures = %v, want %v", tt.failures, got, tt.want)
		}
	}
}

// fakeNodeState is a NodeStateSource the test changes at will.
type fakeNodeState struct {
	mu    sync.Mutex
	st    *agentv1.AgentStatus
	reads int
}

func (f *fakeNodeState) Status(ctx context.Context) (*agentv1.AgentStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	return f.st, nil
}

func (f *fakeNodeState) readCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads
}

func (f *fakeNodeState) set(mod func(*agentv1.AgentStatus)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st = cloneAgentStatus(f.st)
	mod(f.st)
}

func cloneAgentStatus(st *agentv1.AgentStatus) *agentv1.AgentStatus {
	return proto.Clone(st).(*agentv1.AgentStatus)
}

// TestE2ENodeStatus runs the writer against a real kube-apiserver with the chart's CRDs,
// as the chart's agent ServiceAccount (the ClusterRole is rendered by helm, so the test
// also proves the chart grants what the writer needs).
func TestE2ENodeStatus(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	testchart.InstallCRDs(ctx, t, c.RESTConfig)
	nodes, err := c.CreateNodes(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	agentCfg := agentRESTConfig(ctx, t, c)
	admin := dynamic.NewForConfigOrDie(c.RESTConfig).Resource(ExecgateNodeResource)

	t.Run("writes what changed, when it is due", func(t *testing.T) {
		node := nodes[0]
		src := &fakeNodeState{st: &agentv1.AgentStatus{
			AttachMode: "exec_kill", KernelVersion: "6.18.0",
			Pods:     []*agentv1.PodStatus{{State: agentv1.PodState_POD_STATE_ENFORCED}, {State: agentv1.PodState_POD_STATE_PENDING}},
			Policies: []*agentv1.PolicyStatus{{Namespace: "shop", Name: "web", Version: 1, Mode: agentv1.Mode_MODE_PROTECT}},
			Maps:     []*agentv1.MapStatus{{Bytes: 4096, Entries: 5}},
		}}
		const interval = 3 * time.Second
		runWriter(t, agentCfg, NodeStatusOptions{NodeName: node.Name, Source: src, Interval: interval, Coalesce: 50 * time.Millisecond})

		got := waitNodeStatus(ctx, t, admin, node.Name, "first write", func(s *v1alpha1.ExecgateNode) bool { return s.Status.LastUpdated != nil })
		if refs := got.OwnerReferences; len(refs) != 1 || refs[0].Kind != "Node" || refs[0].Name != node.Name || refs[0].UID != node.UID {
			t.Errorf("owner references %+v, want the Node %s (uid %s)", refs, node.Name, node.UID)
		}
		s := got.Status
		if s.AttachMode != v1alpha1.AttachExecKill || s.Kernel != "6.18.0" || !s.BPFLSMActive || s.PodsInForce != 1 || s.PodsPending != 1 ||
			s.PolicyCount != 1 || s.KernelMemoryBytes != 4096 || s.MapEntries != 5 || s.AgentVersion != "test-version" {
			t.Errorf("status %+v", s)
		}
		if p, ok := s.Policy("shop", "web"); !ok || p.Version != 1 || p.Mode != v1alpha1.ModeProtect {
			t.Errorf("shop/web on the node: %+v %v", p, ok)
		}

		// Unchanged: no write at all, however often the source is read (over more than a
		// second, so that a rewritten lastUpdated would show).
		readsBefore := src.readCount()
		time.Sleep(1100 * time.Millisecond)
		if again := getNode(ctx, t, admin, node.Name); again.ResourceVersion != got.ResourceVersion {
			t.Errorf("resourceVersion moved from %s to %s with nothing changed", got.ResourceVersion, again.ResourceVersion)
		}
		if n := src.readCount() - readsBefore; n < 3 {
			t.Errorf("source read %d times in 1.1s; the writer is not polling", n)
		}

		// A policy change is written at the next look, not after the interval.
		start := time.Now()
		src.set(func(st *agentv1.AgentStatus) {
			st.Policies = []*agentv1.PolicyStatus{{Namespace: "shop", Name: "web", Version: 2, Mode: agentv1.Mode_MODE_PROTECT}}
		})
		waitNodeStatus(ctx, t, admin, node.Name, "version 2", func(n *v1alpha1.ExecgateNode) bool {
			p, _ := n.Status.Policy("shop", "web")
			return p.Version == 2
		})
		if d := time.Since(start); d > interval/2 {
			t.Errorf("policy change took %v to be written", d)
		}

		// Counters alone wait for the interval since the last write.
		start = time.Now()
		src.set(func(st *agentv1.AgentStatus) { st.EventsDropped = 42 })
		n := waitNodeStatus(ctx, t, admin, node.Name, "dropped events", func(n *v1alpha1.ExecgateNode) bool { return n.Status.EventsDropped == 42 })
		if d := time.Since(start); d < interval-time.Second {
			t.Errorf("a counter change was written after %v, before the %v interval", d, interval)
		}

		// Someone else writes the object: the writer's next write conflicts, rereads and wins.
		n.Status.PodsInForce = 99
		if _, err := admin.UpdateStatus(ctx, toUnstructuredT(t, n), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		src.set(func(st *agentv1.AgentStatus) { st.Pods = st.Pods[:1] })
		waitNodeStatus(ctx, t, admin, node.Name, "own write after a conflict", func(n *v1alpha1.ExecgateNode) bool {
			return n.Status.PodsInForce == 1 && n.Status.PodsPending == 0
		})

		// Deleted: recreated, with its owner, at the next change.
		if err := admin.Delete(ctx, node.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		src.set(func(st *agentv1.AgentStatus) { st.Pods = nil })
		again := waitNodeStatus(ctx, t, admin, node.Name, "recreated", func(n *v1alpha1.ExecgateNode) bool {
			return n.Status.PodsInForce == 0 && n.Status.LastUpdated != nil
		})
		if again.UID == got.UID || len(again.OwnerReferences) != 1 || again.OwnerReferences[0].UID != node.UID {
			t.Errorf("recreated object uid %s (old %s), owners %+v", again.UID, got.UID, again.OwnerReferences)
		}
	})

	t.Run("waits for the agent to be ready", func(t *testing.T) {
		node := nodes[1]
		var ready sync.Mutex
		isReady := false
		src := &fakeNodeState{st: &agentv1.AgentStatus{AttachMode: "lsm"}}
		stop := runWriter(t, agentCfg, NodeStatusOptions{NodeName: node.Name, Source: src, Coalesce: 20 * time.Millisecond,
			Ready: func() bool { ready.Lock(); defer ready.Unlock(); return isReady }})
		time.Sleep(200 * time.Millisecond)
		if _, err := admin.Get(ctx, node.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("ExecgateNode written before the agent was ready: %v", err)
		}
		ready.Lock()
		isReady = true
		ready.Unlock()
		written := waitNodeStatus(ctx, t, admin, node.Name, "written once ready", func(n *v1alpha1.ExecgateNode) bool { return n.Status.AttachMode == v1alpha1.AttachLSM })

		// A restarted agent with the same state finds it written, and writes nothing (not
		// even lastUpdated, which has a resolution of a second: hence the sleep).
		stop()
		time.Sleep(time.Second)
		again := &fakeNodeState{st: src.st}
		runWriter(t, agentCfg, NodeStatusOptions{NodeName: node.Name, Source: again, Coalesce: 20 * time.Millisecond})
		waitFor(t, "the new writer to read the state", func() bool { return again.readCount() > 1 })
		time.Sleep(200 * time.Millisecond)
		if n := getNode(ctx, t, admin, node.Name); n.ResourceVersion != written.ResourceVersion {
			t.Errorf("restarted writer rewrote an unchanged status: resourceVersion %s -> %s", written.ResourceVersion, n.ResourceVersion)
		}
	})

	t.Run("owner reference follows a recreated node", func(t *testing.T) {
		const name = "recreated-node"
		first := createNode(ctx, t, c, name)
		src := &fakeNodeState{st: &agentv1.AgentStatus{AttachMode: "lsm"}}
		stop := runWriter(t, agentCfg, NodeStatusOptions{NodeName: name, Source: src, Coalesce: 20 * time.Millisecond})
		waitNodeStatus(ctx, t, admin, name, "first write", func(n *v1alpha1.ExecgateNode) bool { return n.Status.LastUpdated != nil })
		stop()
		// No garbage collector runs here, so the old ExecgateNode stays, owned by a
		// Node that is gone; a new agent must take it over for the new Node.
		if err := c.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		second := createNode(ctx, t, c, name)
		runWriter(t, agentCfg, NodeStatusOptions{NodeName: name, Source: src, Coalesce: 20 * time.Millisecond})
		n := waitNodeStatus(ctx, t, admin, name, "owned by the new node", func(n *v1alpha1.ExecgateNode) bool {
			return len(n.OwnerReferences) == 1 && n.OwnerReferences[0].UID == second.UID
		})
		if n.OwnerReferences[0].UID == first.UID {
			t.Fatal("still owned by the deleted node")
		}
	})

	t.Run("in-process agent, real BPF", func(t *testing.T) {
		testenv.RequireBPF(t)
		env := newTestNodeEnv(t, cgroups.DriverSystemd)
		e := env.newEnforcer(t)
		a := env.startAgent(t, e, nil)
		uid := podUID(40)
		env.mkPodCgroup(t, uid, cgroups.QoSBurstable)
		if _, _, err := a.ApplyPodPolicy(ctx, podPolicy(uid, cgroups.QoSBurstable, protectApp(3))); err != nil {
			t.Fatal(err)
		}
		node := createNode(ctx, t, c, testNode)
		runWriter(t, agentCfg, NodeStatusOptions{NodeName: node.Name, Source: a.Agent, Ready: a.Ready, Coalesce: 50 * time.Millisecond})
		n := waitNodeStatus(ctx, t, admin, node.Name, "agent's state", func(n *v1alpha1.ExecgateNode) bool { return n.Status.PodsInForce == 1 })
		s := n.Status
		if string(s.AttachMode) != string(e.AttachMode()) || s.KernelMemoryBytes <= 0 || s.MapEntries <= 0 || s.Kernel == "" {
			t.Errorf("status %+v (attach mode %s)", s, e.AttachMode())
		}
		if p, ok := s.Policy("ns", "web"); !ok || p.Version != 3 || p.Mode != v1alpha1.ModeProtect {
			t.Errorf("ns/web: %+v %v; policies %+v", p, ok, s.Policies)
		}
		if _, err := a.RemovePod(ctx, uid); err != nil {
			t.Fatal(err)
		}
		waitNodeStatus(ctx, t, admin, node.Name, "pod and policy gone", func(n *v1alpha1.ExecgateNode) bool {
			return n.Status.PodsInForce == 0 && n.Status.PolicyCount == 0
		})
	})
}

// runWriter runs a writer until the test ends, or stop is called.
func runWriter(t *testing.T, cfg *rest.Config, opts NodeStatusOptions) (stop func()) {
	t.Helper()
	opts.Kube = kubernetes.NewForConfigOrDie(cfg)
	opts.Dynamic = dynamic.NewForConfigOrDie(cfg)
	opts.Logger = zaptest.NewLogger(t)
	opts.AgentVersion = "test-version"
	opts.BPFLSMActive = func() (bool, error) { return true, nil }
	w, err := NewNodeStatusWriter(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("writer Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func getNode(ctx context.Context, t *testing.T, res dynamic.ResourceInterface, name string) *v1alpha1.ExecgateNode {
	t.Helper()
	u, err := res.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := fromUnstructured(u)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func waitNodeStatus(ctx context.Context, t *testing.T, res dynamic.ResourceInterface, name, what string, cond func(*v1alpha1.ExecgateNode) bool) *v1alpha1.ExecgateNode {
	t.Helper()
	var last *v1alpha1.ExecgateNode
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		u, err := res.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if last, err = fromUnstructured(u); err != nil {
			return false, err
		}
		return cond(last), nil
	})
	if err != nil {
		t.Fatalf("ExecgateNode %s: waiting for %s: %v; last seen %+v", name, what, err, last)
	}
	return last
}

func toUnstructuredT(t *testing.T, n *v1alpha1.ExecgateNode) *unstructured.Unstructured {
	t.Helper()
	u, err := toUnstructured(n)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// createNode registers a Node by name (CreateNodes picks its own names).
func createNode(ctx context.Context, t *testing.T, c *cluster.Cluster, name string) *corev1.Node {
	t.Helper()
	n, err := c.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// agentRESTConfig installs the chart's agent ClusterRole and binding (rendered by helm)
// and returns a config that impersonates the agent's ServiceAccount.
func agentRESTConfig(ctx context.Context, t *testing.T, c *cluster.Cluster) *rest.Config {
	t.Helper()
	bin, err := cluster.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	const release, namespace = "eg", "execgate-system"
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "helm"), "template", release, "../../deploy/helm/execgate",
		"--namespace", namespace, "--show-only", "templates/agent-rbac.yaml").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		testenv.Need(t, cluster.RequireE2EEnv, fmt.Sprintf("helm to render the chart's RBAC (%v)", err))
	}
	dyn := dynamic.NewForConfigOrDie(c.RESTConfig)
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(string(out)), 4096)
	var subject string
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("decode rendered RBAC: %v", err)
		}
		if obj == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		gvr := schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: strings.ToLower(u.GetKind()) + "s"}
		if _, err := dyn.Resource(gvr).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
		if u.GetKind() == "ClusterRoleBinding" {
			subjects, _, _ := unstructured.NestedSlice(obj, "subjects")
			if len(subjects) == 1 {
				s, _ := subjects[0].(map[string]any)
				subject = fmt.Sprintf("system:serviceaccount:%s:%s", s["namespace"], s["name"])
			}
		}
	}
	if subject == "" {
		t.Fatal("the chart's agent ClusterRoleBinding has no single ServiceAccount subject")
	}
	cfg := rest.CopyConfig(c.RESTConfig)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: subject, Groups: []string{"system:serviceaccounts", "system:authenticated"}}
	return cfg
}
