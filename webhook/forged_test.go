package webhook

import (
	"context"
	"reflect"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/execgate/execgate/api/v1alpha1"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/webhook/agents"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
	"github.com/execgate/execgate/webhook/learn"
	"github.com/execgate/execgate/webhook/violations"
)

// TestForgedEventsDropped is issue 14's attack 5: any node's agent could stream events
// about any pod in the cluster, and the controller believed them. A compromised node-b
// planted /tmp/evil into the proposal of a workload running only on node-a, raised
// violations on pods it does not run, and fed Learn events for a Protect workload. The
// events go through real agent gRPC servers (mTLS), the real AgentEventStream with the
// EventOrigin the controller wires, into the real ProposalLearner and ViolationEvents.
// Now only what a node can have seen reaches them: each forged event is dropped and
// counted by node and reason; the genuine ones still arrive.
func TestForgedEventsDropped(t *testing.T) {
	const ns = "shop"
	pod := func(name, node, policy string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(name + "-uid"),
			Labels: map[string]string{v1alpha1.PolicyLabel: policy}}, Spec: corev1.PodSpec{NodeName: node}}
	}
	policy := func(name string, mode v1alpha1.Mode) *v1alpha1.WorkloadPolicy {
		return &v1alpha1.WorkloadPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1},
			Spec: v1alpha1.WorkloadPolicySpec{Mode: mode, RulesByContainer: v1alpha1.RulesByContainer{"app": {Executables: []string{"/usr/bin/app"}}}}}
	}
	c := fake.NewClientBuilder().WithScheme(webhooktest.Scheme(t)).WithStatusSubresource(&v1alpha1.WorkloadPolicyProposal{}).
		WithObjects(
			pod("web-1", "node-a", "web"), policy("web", v1alpha1.ModeLearn), // a Learn workload on node-a only
			pod("db-1", "node-b", "db"), policy("db", v1alpha1.ModeProtect), // a Protect workload on node-b
			pod("orphan", "node-a", "gone"), // labelled with a policy that does not exist
		).Build()

	ev := func(podName, policy string, mode agentv1.Mode, action agentv1.Action, exe string) *agentv1.ExecEvent {
		e := &agentv1.ExecEvent{Namespace: ns, Pod: podName, Container: "app", Policy: policy, Mode: mode, Action: action,
			Executable: exe, Argv: []string{exe}, Pid: 42, Count: 1}
		if podName == "" {
			e.Namespace = ""
		}
		return e
	}
	learnMode, protect := agentv1.Mode_MODE_LEARN, agentv1.Mode_MODE_PROTECT
	learned, denied := agentv1.Action_ACTION_ALLOWED_LEARN, agentv1.Action_ACTION_DENIED
	tests := []struct {
		name string
		node string // whose stream carries it; the message's own Node field is not believed
		ev   *agentv1.ExecEvent
		drop agents.DropReason // "" for a genuine event
	}{
		{"genuine learn event", "node-a", ev("web-1", ns+"/web", learnMode, learned, "/usr/bin/ls"), ""},
		{"genuine violation", "node-b", ev("db-1", ns+"/db", protect, denied, "/usr/bin/id"), ""},
		{"node-b plants into node-a's workload", "node-b", ev("web-1", ns+"/web", learnMode, learned, "/tmp/evil"), agents.DropPodOnOtherNode},
		{"node-a reports a violation on node-b's pod", "node-a", ev("db-1", ns+"/db", protect, denied, "/usr/bin/nc"), agents.DropPodOnOtherNode},
		{"Learn events for a Protect workload", "node-b", ev("db-1", ns+"/db", learnMode, learned, "/tmp/evil-db"), agents.DropModeMismatch},
		{"its own pod under another workload's policy", "node-b", ev("db-1", ns+"/web", learnMode, learned, "/tmp/evil-web"), agents.DropPolicyMismatch},
		{"a Learn policy's event with a denial", "node-a", ev("web-1", ns+"/web", learnMode, denied, "/usr/bin/su"), agents.DropModeMismatch},
		{"a pod that does not exist", "node-a", ev("ghost", ns+"/web", learnMode, learned, "/tmp/evil-ghost"), agents.DropPodNotFound},
		{"no pod at all", "node-a", ev("", ns+"/db", protect, denied, "/usr/bin/ncat"), agents.DropNoPod},
		{"a policy that does not exist", "node-a", ev("orphan", ns+"/gone", learnMode, learned, "/tmp/evil-orphan"), agents.DropPolicyNotFound},
	}

	fleet := webhooktest.NewFleet(t)
	sources := map[string]*webhooktest.EventSource{"node-a": webhooktest.NewEventSource(), "node-b": webhooktest.NewEventSource()}
	endpoints := map[string]string{}
	for node, src := range sources {
		endpoints[node], _ = fleet.Serve(t, node, "127.0.0.1:0", src)
	}
	pool, err := agents.NewAgentPool(fleet.Dialer, agents.NewStaticAgentDirectory(endpoints), 8, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)

	var (
		mu       sync.Mutex
		received []string // executables that reached the sinks
	)
	learner := &learn.ProposalLearner{Client: c, FlushInterval: time.Hour, Log: zaptest.NewLogger(t)}
	violationEvents := &violations.ViolationEvents{Client: c, Log: zaptest.NewLogger(t)}
	recorder := webhooktest.SinkFunc(func(_ context.Context, ev *agentv1.ExecEvent) {
		mu.Lock()
		defer mu.Unlock()
		received = append(received, ev.GetExecutable())
	})
	stream := &agents.AgentEventStream{Nodes: agents.NewStaticAgentDirectory(endpoints), Agents: pool, Origin: &agents.EventOrigin{Reader: c},
		Sinks: []agents.ExecEventSink{learner, violationEvents, recorder}, Resync: 50 * time.Millisecond, Log: zaptest.NewLogger(t)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- stream.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start: %v", err)
		}
	}()
	for node, src := range sources {
		webhooktest.WaitUntil(t, node+" stream open", func() bool { return src.Subscribers() == 1 })
	}

	dropped := func(node string, reason agents.DropReason) float64 {
		return webhooktest.Served(t, "execgate_controller_agent_events_dropped_total", map[string]string{"node": node, "reason": string(reason)})
	}
	before := map[string]float64{}
	for _, tc := range tests {
		if tc.drop != "" {
			before[tc.node+"/"+string(tc.drop)] = dropped(tc.node, tc.drop)
		}
	}
	deniedBefore := webhooktest.Served(t, "execgate_controller_violations_total", map[string]string{"namespace": ns, "policy": ns + "/db", "action": "denied"})
	for _, tc := range tests {
		forged := proto.CloneOf(tc.ev)
		forged.Node = "node-that-is-not-the-stream" // overwritten from the connection
		sources[tc.node].Emit(t, forged)
	}
	// Per node the stream delivers in order: a marker event after the cases says every
	// case was decided.
	for node, src := range sources {
		marker := ev("web-1", ns+"/web", learnMode, learned, "/usr/bin/marker-"+node)
		if node == "node-b" {
			marker = ev("db-1", ns+"/db", protect, denied, "/usr/bin/marker-"+node)
		}
		src.Emit(t, marker)
	}
	webhooktest.WaitUntil(t, "both markers delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, exe := range received {
			if exe == "/usr/bin/marker-node-a" || exe == "/usr/bin/marker-node-b" {
				n++
			}
		}
		return n == 2
	})

	mu.Lock()
	got := map[string]bool{}
	for _, exe := range received {
		got[exe] = true
	}
	mu.Unlock()
	for _, tc := range tests {
		if reached := got[tc.ev.Executable]; reached != (tc.drop == "") {
			t.Errorf("%s (from %s): reached the sinks %v, want %v", tc.name, tc.node, reached, tc.drop == "")
		}
	}
	for _, tc := range tests {
		if tc.drop == "" {
			continue
		}
		n := 0.0
		for _, other := range tests {
			if other.node == tc.node && other.drop == tc.drop {
				n++
			}
		}
		if rose := dropped(tc.node, tc.drop) - before[tc.node+"/"+string(tc.drop)]; rose != n {
			t.Errorf("execgate_controller_agent_events_dropped_total{node=%q,reason=%q} rose by %v, want %v", tc.node, tc.drop, rose, n)
		}
	}

	// Learn: node-a's workload learns what node-a saw, nothing node-b said about it. The
	// learner writes what it buffered when Start's context ends.
	created := func() float64 {
		return webhooktest.Served(t, "execgate_controller_proposal_writes_total", map[string]string{"result": "created"})
	}
	createdBefore := created()
	lctx, stopLearner := context.WithCancel(context.Background())
	stopLearner()
	if err := learner.Start(lctx); err != nil {
		t.Fatalf("learner Start: %v", err)
	}
	if n := created() - createdBefore; n != 1 {
		t.Errorf("the flush created %v proposals, want 1 (web-1's)", n)
	}
	var p v1alpha1.WorkloadPolicyProposal
	if err := c.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "pod-web-1"}, &p); err != nil {
		t.Fatalf("web-1's proposal: %v", err)
	}
	if exes := p.Spec.RulesByContainer["app"].Executables; !reflect.DeepEqual(exes, []string{"/usr/bin/ls", "/usr/bin/marker-node-a"}) {
		t.Errorf("web-1's proposal lists %v, want only what node-a ran", exes)
	}
	for _, name := range []string{"pod-db-1", "pod-ghost", "pod-orphan"} {
		if err := c.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, &p); !apierrors.IsNotFound(err) {
			t.Errorf("proposal %s exists (err %v): %v", name, err, p.Spec.RulesByContainer)
		}
	}
	// Violations: db's count holds node-b's two denials, none of the forged ones.
	if rose := webhooktest.Served(t, "execgate_controller_violations_total", map[string]string{"namespace": ns, "policy": ns + "/db", "action": "denied"}) - deniedBefore; rose != 2 {
		t.Errorf("execgate_controller_violations_total{policy=%q,action=denied} rose by %v, want 2 (genuine and marker)", ns+"/db", rose)
	}
}
