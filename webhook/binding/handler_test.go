package binding

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap/zaptest"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/execgate/execgate/webhook/agents"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
)

func bindingRequest(t testing.TB, pod, node string, mutate func(*admissionv1.AdmissionRequest)) admission.Request {
	t.Helper()
	raw, err := json.Marshal(&corev1.Binding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Binding"},
		ObjectMeta: metav1.ObjectMeta{Namespace: webhooktest.NS, Name: pod},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node},
	})
	if err != nil {
		t.Fatal(err)
	}
	req := admissionv1.AdmissionRequest{
		UID:         types.UID("req-" + pod),
		Kind:        metav1.GroupVersionKind{Version: "v1", Kind: "Binding"},
		Resource:    metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		SubResource: "binding",
		Namespace:   webhooktest.NS,
		Name:        pod,
		Operation:   admissionv1.Create,
		Object:      runtime.RawExtension{Raw: raw},
	}
	if mutate != nil {
		mutate(&req)
	}
	return admission.Request{AdmissionRequest: req}
}

func podRequest(t testing.TB, pod *corev1.Pod) admission.Request {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID:       types.UID("req-" + pod.Name),
		Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: pod.Namespace, Name: pod.Name,
		Operation: admissionv1.Create,
		Object:    runtime.RawExtension{Raw: raw},
	}}
}

func counterValue(t testing.TB, outcome agents.Outcome) float64 {
	t.Helper()
	var m dto.Metric
	if err := bindingsTotal.WithLabelValues(string(outcome)).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func outcomeOf(resp admission.Response) agents.Outcome {
	if resp.Result == nil {
		return ""
	}
	o, _, _ := strings.Cut(resp.Result.Message, ":")
	return agents.Outcome(o)
}

type handlerEnv struct {
	fleet    *webhooktest.Fleet
	agentA   *webhooktest.RecordingBackend
	agentB   *webhooktest.RecordingBackend
	slow     *webhooktest.RecordingBackend
	recorder *events.FakeRecorder
	admitter *Admitter
}

func newHandlerEnv(t *testing.T, pushTimeout time.Duration) *handlerEnv {
	t.Helper()
	fleet := webhooktest.NewFleet(t)
	env := &handlerEnv{fleet: fleet, agentA: fleet.Start(t, "node-a", 0), agentB: fleet.Start(t, "node-b", 0), slow: fleet.Start(t, "node-slow", 2*time.Second)}
	scheme := webhooktest.Scheme(t)
	cached := []client.Object{
		webhooktest.Pod("web-1", "uid-web-1", "web", ""),
		webhooktest.Pod("web-2", "uid-web-2", "web", ""),
		webhooktest.Pod("plain", "uid-plain", "", ""),
		webhooktest.Pod("orphan", "uid-orphan", "missing", ""),
		webhooktest.Policy("web", 3),
	}
	// The API server also has a pod the informer has not seen yet.
	live := append(slices.Clone(cached), webhooktest.Pod("fresh", "uid-fresh", "web", ""))
	env.recorder = events.NewFakeRecorder(256)
	env.admitter = &Admitter{
		Cache:         fake.NewClientBuilder().WithScheme(scheme).WithObjects(cached...).Build(),
		APIReader:     fake.NewClientBuilder().WithScheme(scheme).WithObjects(live...).Build(),
		LookupTimeout: 200 * time.Millisecond,
		Pusher:        &agents.Pusher{Agents: fleet.Pool(t, nil), Timeout: pushTimeout},
		Recorder:      env.recorder,
		Log:           zaptest.NewLogger(t),
	}
	return env
}

func TestBindingHandler(t *testing.T) {
	env := newHandlerEnv(t, 100*time.Millisecond)
	h := &BindingHandler{Admitter: env.admitter}
	dryRun := true

	tests := []struct {
		name        string
		req         admission.Request
		want        agents.Outcome
		maxDuration time.Duration
		wantWarning string
		// agent that must have received exactly this many pushes after the case (cumulative)
		agent      *webhooktest.RecordingBackend
		agentCalls int
		check      func(t *testing.T)
	}{
		{name: "labelled pod is pushed to its node's agent", req: bindingRequest(t, "web-1", "node-a", nil), want: agents.OutcomePushed, agent: env.agentA, agentCalls: 1,
			check: func(t *testing.T) {
				got := env.agentA.AppliedCalls()[0]
				if got.Pod.UID != "uid-web-1" || got.Pod.NodeName != "node-a" || got.Pod.Namespace != webhooktest.NS || got.Pod.Name != "web-1" {
					t.Errorf("pod = %+v", got.Pod)
				}
				if got.Pod.QoSClass == "" || len(got.Pod.Containers) != 3 {
					t.Errorf("qos %q, containers %+v", got.Pod.QoSClass, got.Pod.Containers)
				}
				if got.Policy.Name != "web" || got.Policy.UID != "web-uid" || got.Policy.Version != 3 || got.Policy.Mode.String() == "" {
					t.Errorf("policy = %+v", got.Policy)
				}
				// The whole policy: the agent picks sidecar's and init's rules ("*").
				want := map[string][]string{"app": {"/usr/bin/app"}, "*": {"/bin/"}}
				if !maps.EqualFunc(got.Policy.RulesByContainer, want, slices.Equal) {
					t.Errorf("rules = %v, want %v", got.Policy.RulesByContainer, want)
				}
				if got.RequestID != "req-web-1" {
					t.Errorf("request id %q", got.RequestID)
				}
				if n := len(env.agentB.AppliedCalls()); n != 0 {
					t.Errorf("node-b got %d pushes, want 0", n)
				}
			}},
		{name: "same generation again is a no-op", req: bindingRequest(t, "web-1", "node-a", nil), want: agents.OutcomeNoop, agent: env.agentA, agentCalls: 2},
		{name: "pod missing from the cache is read from the API server", req: bindingRequest(t, "fresh", "node-b", nil), want: agents.OutcomePushed, agent: env.agentB, agentCalls: 1},
		{name: "unlabelled pod: no push, fast", req: bindingRequest(t, "plain", "node-a", nil), want: OutcomeNoLabel, maxDuration: 50 * time.Millisecond, agent: env.agentA, agentCalls: 2},
		{name: "missing policy: event on the pod", req: bindingRequest(t, "orphan", "node-a", nil), want: OutcomeNoPolicy, wantWarning: "does not exist", agent: env.agentA, agentCalls: 2,
			check: func(t *testing.T) {
				// Earlier cases left WritableRootFilesystem events (TestTamperWritableRootWarns).
				evs := webhooktest.DrainEvents(env.recorder)
				if !slices.ContainsFunc(evs, func(e string) bool {
					return strings.Contains(e, ReasonPolicyNotFound) && strings.Contains(e, "missing")
				}) {
					t.Errorf("no %s event naming the policy in %q", ReasonPolicyNotFound, evs)
				}
			}},
		{name: "unknown agent", req: bindingRequest(t, "web-2", "node-x", nil), want: agents.OutcomeNoAgent, wantWarning: "no agent"},
		{name: "slow agent: answered within the push timeout", req: bindingRequest(t, "web-2", "node-slow", nil), want: agents.OutcomeTimeout, maxDuration: 100*time.Millisecond + 400*time.Millisecond, wantWarning: "no answer within"},
		{name: "dry run: no push", req: bindingRequest(t, "web-2", "node-b", func(r *admissionv1.AdmissionRequest) { r.DryRun = &dryRun }), want: OutcomeDryRun, agent: env.agentB, agentCalls: 1},
		{name: "pod that does not exist", req: bindingRequest(t, "ghost", "node-a", nil), want: agents.OutcomeError, wantWarning: "not found"},
		{name: "garbage object bytes", req: bindingRequest(t, "web-1", "node-a", func(r *admissionv1.AdmissionRequest) { r.Object.Raw = []byte("\x00\xffnot json{") }), want: OutcomeInvalidRequest, wantWarning: "not a JSON Binding", agent: env.agentA, agentCalls: 2},
		{name: "wrong kind", req: bindingRequest(t, "web-1", "node-a", func(r *admissionv1.AdmissionRequest) { r.Kind.Kind = "Pod" }), want: OutcomeInvalidRequest, wantWarning: "core/v1 Binding"},
		{name: "object kind differs from request kind", req: bindingRequest(t, "web-1", "node-a", func(r *admissionv1.AdmissionRequest) { r.Object.Raw = []byte(`{"kind":"Pod","apiVersion":"v1"}`) }), want: OutcomeInvalidRequest, wantWarning: "want Binding"},
		{name: "no object", req: bindingRequest(t, "web-1", "node-a", func(r *admissionv1.AdmissionRequest) { r.Object.Raw = nil }), want: OutcomeInvalidRequest, wantWarning: "no object"},
		{name: "not a CREATE", req: bindingRequest(t, "web-1", "node-a", func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Delete }), want: OutcomeInvalidRequest, wantWarning: "CREATE only"},
		{name: "binding without target node", req: bindingRequest(t, "web-1", "", nil), want: OutcomeInvalidRequest, wantWarning: "node"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := counterValue(t, tc.want)
			served := gatherServed(t)
			start := time.Now()
			resp := h.Handle(context.Background(), tc.req)
			elapsed := time.Since(start)
			assertServedMetrics(t, served, gatherServed(t), tc.want)
			if !resp.Allowed {
				t.Fatalf("not allowed: %+v", resp.Result)
			}
			if got := outcomeOf(resp); got != tc.want {
				t.Errorf("outcome %q (message %q, warnings %q), want %q", got, resp.Result.Message, resp.Warnings, tc.want)
			}
			if got := counterValue(t, tc.want) - before; got != 1 {
				t.Errorf("bindings_total{outcome=%q} grew by %v, want 1", tc.want, got)
			}
			if tc.maxDuration > 0 && elapsed > tc.maxDuration {
				t.Errorf("answered in %v, want under %v", elapsed, tc.maxDuration)
			}
			if tc.wantWarning != "" && !strings.Contains(strings.Join(resp.Warnings, "\n"), tc.wantWarning) {
				t.Errorf("warnings %q, want one containing %q", resp.Warnings, tc.wantWarning)
			}
			if tc.agent != nil {
				if n := len(tc.agent.AppliedCalls()); n != tc.agentCalls {
					t.Errorf("agent got %d pushes in total, want %d", n, tc.agentCalls)
				}
			}
			if tc.check != nil {
				tc.check(t)
			}
		})
	}
}

func TestPodHandler(t *testing.T) {
	env := newHandlerEnv(t, time.Second)
	h := &PodHandler{Admitter: env.admitter}

	tests := []struct {
		name string
		pod  *corev1.Pod
		want agents.Outcome
	}{
		{"pod with preset node is pushed", webhooktest.Pod("static-1", "uid-static-1", "web", "node-a"), agents.OutcomePushed},
		{"pod without node waits for its binding", webhooktest.Pod("later", "uid-later", "web", ""), OutcomeUnscheduled},
		{"unlabelled pod", webhooktest.Pod("plain-2", "uid-plain-2", "", "node-a"), OutcomeNoLabel},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := h.Handle(context.Background(), podRequest(t, tc.pod))
			if !resp.Allowed || outcomeOf(resp) != tc.want {
				t.Fatalf("allowed=%v outcome %q (%+v), want %q", resp.Allowed, outcomeOf(resp), resp.Result, tc.want)
			}
		})
	}
	calls := env.agentA.AppliedCalls()
	if len(calls) != 1 || calls[0].Pod.UID != "uid-static-1" {
		t.Fatalf("node-a pushes = %+v, want one for uid-static-1", calls)
	}
}

// gatherServed reads the controller's metrics as /metrics serves them (the
// controller-runtime registry), by name and label: counters' values and
// histograms' sample counts.
func gatherServed(t *testing.T) map[string]float64 {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch {
			case m.GetCounter() != nil:
				out[key] = m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				out[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// assertServedMetrics checks what one binding request adds to the served
// metrics: one webhook latency sample; one push counted by its outcome and
// timed when a push was attempted; nothing pushed otherwise.
func assertServedMetrics(t *testing.T, before, after map[string]float64, outcome agents.Outcome) {
	t.Helper()
	delta := func(key string) float64 { return after[key] - before[key] }
	if d := delta("execgate_controller_webhook_duration_seconds{webhook=binding}"); d != 1 {
		t.Errorf("webhook_duration_seconds{webhook=binding} gained %v samples, want 1", d)
	}
	pushes := 0.0
	for key := range after {
		if strings.HasPrefix(key, "execgate_controller_pushes_total{") {
			pushes += delta(key)
		}
	}
	timed := delta("execgate_controller_push_duration_seconds")
	switch outcome {
	case agents.OutcomePushed, agents.OutcomeNoop, agents.OutcomeTimeout:
		if d := delta("execgate_controller_pushes_total{outcome=" + string(outcome) + "}"); d != 1 || pushes != 1 {
			t.Errorf("pushes_total{outcome=%s} grew by %v (all outcomes %v), want 1", outcome, d, pushes)
		}
		if timed != 1 {
			t.Errorf("push_duration_seconds gained %v samples, want 1", timed)
		}
	case agents.OutcomeNoAgent:
		if d := delta("execgate_controller_pushes_total{outcome=no_agent}"); d != 1 || timed != 0 {
			t.Errorf("no agent: pushes_total{no_agent} grew by %v, push_duration by %v; want 1 and 0", d, timed)
		}
	default:
		if pushes != 0 || timed != 0 {
			t.Errorf("outcome %s pushed: pushes_total grew by %v, push_duration by %v", outcome, pushes, timed)
		}
	}
}
