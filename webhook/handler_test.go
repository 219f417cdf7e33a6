package webhook

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
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/execgate/execgate/api/v1alpha1"
)

const testNS = "shop"

func testScheme(t testing.TB) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func testPod(name, uid, policy, node string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: name, UID: types.UID(uid)},
		Spec: corev1.PodSpec{
			NodeName:       node,
			InitContainers: []corev1.Container{{Name: "init"}},
			Containers:     []corev1.Container{{Name: "app"}, {Name: "sidecar"}},
		},
		Status: corev1.PodStatus{QOSClass: corev1.PodQOSBurstable},
	}
	if policy != "" {
		p.Labels = map[string]string{v1alpha1.PolicyLabel: policy}
	}
	return p
}

func testPolicy(name string, generation int64) *v1alpha1.WorkloadPolicy {
	return &v1alpha1.WorkloadPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: name, UID: types.UID(name + "-uid"), Generation: generation},
		Spec: v1alpha1.WorkloadPolicySpec{
			Mode: v1alpha1.ModeProtect,
			RulesByContainer: v1alpha1.RulesByContainer{
				"app": {Executables: []string{"/usr/bin/app"}},
				"*":   {Executables: []string{"/bin/"}},
			},
		},
	}
}

func bindingRequest(t testing.TB, pod, node string, mutate func(*admissionv1.AdmissionRequest)) admission.Request {
	t.Helper()
	raw, err := json.Marshal(&corev1.Binding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Binding"},
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: pod},
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
		Namespace:   testNS,
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

func counterValue(t testing.TB, outcome Outcome) float64 {
	t.Helper()
	var m dto.Metric
	if err := bindingsTotal.WithLabelValues(string(outcome)).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func outcomeOf(resp admission.Response) Outcome {
	if resp.Result == nil {
		return ""
	}
	o, _, _ := strings.Cut(resp.Result.Message, ":")
	return Outcome(o)
}

type handlerEnv struct {
	fleet    *agentFleet
	agentA   *recordingBackend
	agentB   *recordingBackend
	slow     *recordingBackend
	recorder *events.FakeRecorder
	admitter *Admitter
}

func newHandlerEnv(t *testing.T, pushTimeout time.Duration) *handlerEnv {
	t.Helper()
	fleet := newAgentFleet(t)
	env := &handlerEnv{fleet: fleet, agentA: fleet.start(t, "node-a", 0), agentB: fleet.start(t, "node-b", 0), slow: fleet.start(t, "node-slow", 2*time.Second)}
	scheme := testScheme(t)
	cached := []client.Object{
		testPod("web-1", "uid-web-1", "web", ""),
		testPod("web-2", "uid-web-2", "web", ""),
		testPod("plain", "uid-plain", "", ""),
		testPod("orphan", "uid-orphan", "missing", ""),
		testPolicy("web", 3),
	}
	// The API server also has a pod the informer has not seen yet.
	live := append(slices.Clone(cached), testPod("fresh", "uid-fresh", "web", ""))
	env.recorder = events.NewFakeRecorder(256)
	env.admitter = &Admitter{
		Cache:         fake.NewClientBuilder().WithScheme(scheme).WithObjects(cached...).Build(),
		APIReader:     fake.NewClientBuilder().WithScheme(scheme).WithObjects(live...).Build(),
		LookupTimeout: 200 * time.Millisecond,
		Pusher:        &Pusher{Agents: fleet.pool(t, nil), Timeout: pushTimeout},
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
		want        Outcome
		maxDuration time.Duration
		wantWarning string
		// agent that must have received exactly this many pushes after the case (cumulative)
		agent      *recordingBackend
		agentCalls int
		check      func(t *testing.T)
	}{
		{name: "labelled pod is pushed to its node's agent", req: bindingRequest(t, "web-1", "node-a", nil), want: OutcomePushed, agent: env.agentA, agentCalls: 1,
			check: func(t *testing.T) {
				got := env.agentA.appliedCalls()[0]
				if got.Pod.UID != "uid-web-1" || got.Pod.NodeName != "node-a" || got.Pod.Namespace != testNS || got.Pod.Name != "web-1" {
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
				if n := len(env.agentB.appliedCalls()); n != 0 {
					t.Errorf("node-b got %d pushes, want 0", n)
				}
			}},
		{name: "same generation again is a no-op", req: bindingRequest(t, "web-1", "node-a", nil), want: OutcomeNoop, agent: env.agentA, agentCalls: 2},
		{name: "pod missing from the cache is read from the API server", req: bindingRequest(t, "fresh", "node-b", nil), want: OutcomePushed, agent: env.agentB, agentCalls: 1},
		{name: "unlabelled pod: no push, fast", req: bindingRequest(t, "plain", "node-a", nil), want: OutcomeNoLabel, maxDuration: 50 * time.Millisecond, agent: env.agentA, agentCalls: 2},
		{name: "missing policy: event on the pod", req: bindingRequest(t, "orphan", "node-a", nil), want: OutcomeNoPolicy, wantWarning: "does not exist", agent: env.agentA, agentCalls: 2,
			check: func(t *testing.T) {
				// Earlier cases left WritableRootFilesystem events (TestTamperWritableRootWarns).
				evs := drainEvents(env.recorder)
				if !slices.ContainsFunc(evs, func(e string) bool {
					return strings.Contains(e, ReasonPolicyNotFound) && strings.Contains(e, "missing")
				}) {
					t.Errorf("no %s event naming the policy in %q", ReasonPolicyNotFound, evs)
				}
			}},
		{name: "unknown agent", req: bindingRequest(t, "web-2", "node-x", nil), want: OutcomeNoAgent, wantWarning: "no agent"},
		{name: "slow agent: answered within the push timeout", req: bindingRequest(t, "web-2", "node-slow", nil), want: OutcomeTimeout, maxDuration: 100*time.Millisecond + 400*time.Millisecond, wantWarning: "no answer within"},
		{name: "dry run: no push", req: bindingRequest(t, "web-2", "node-b", func(r *admissionv1.AdmissionRequest) { r.DryRun = &dryRun }), want: OutcomeDryRun, agent: env.agentB, agentCalls: 1},
		{name: "pod that does not exist", req: bindingRequest(t, "ghost", "node-a", nil), want: OutcomeError, wantWarning: "not found"},
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
				if n := len(tc.agent.appliedCalls()); n != tc.agentCalls {
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
		want Outcome
	}{
		{"pod with preset node is pushed", testPod("static-1", "uid-static-1", "web", "node-a"), OutcomePushed},
		{"pod without node waits for its binding", testPod("later", "uid-later", "web", ""), OutcomeUnscheduled},
		{"unlabelled pod", testPod("plain-2", "uid-plain-2", "", "node-a"), OutcomeNoLabel},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := h.Handle(context.Background(), podRequest(t, tc.pod))
			if !resp.Allowed || outcomeOf(resp) != tc.want {
				t.Fatalf("allowed=%v outcome %q (%+v), want %q", resp.Allowed, outcomeOf(resp), resp.Result, tc.want)
			}
		})
	}
	calls := env.agentA.appliedCalls()
	if len(calls) != 1 || calls[0].Pod.UID != "uid-static-1" {
		t.Fatalf("node-a pushes = %+v, want one for uid-static-1", calls)
	}
}

func TestCompilePodPolicyRejectsInvalidPolicy(t *testing.T) {
	p := testPolicy("web", 1)
	p.Spec.RulesByContainer["app"] = v1alpha1.ContainerRules{Executables: []string{"relative/path"}}
	if _, err := CompilePodPolicy(testPod("a", "uid-a", "web", "node-a"), "node-a", p, ""); err == nil || !strings.Contains(err.Error(), "relative/path") {
		t.Fatalf("err = %v, want it to name the bad path", err)
	}
}

func TestPodQOSClass(t *testing.T) {
	t.Parallel()
	if got := podQOSClass(&corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}}}}); got != corev1.PodQOSBestEffort {
		t.Errorf("no resources: %s", got)
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
func assertServedMetrics(t *testing.T, before, after map[string]float64, outcome Outcome) {
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
	case OutcomePushed, OutcomeNoop, OutcomeTimeout:
		if d := delta("execgate_controller_pushes_total{outcome=" + string(outcome) + "}"); d != 1 || pushes != 1 {
			t.Errorf("pushes_total{outcome=%s} grew by %v (all outcomes %v), want 1", outcome, d, pushes)
		}
		if timed != 1 {
			t.Errorf("push_duration_seconds gained %v samples, want 1", timed)
		}
	case OutcomeNoAgent:
		if d := delta("execgate_controller_pushes_total{outcome=no_agent}"); d != 1 || timed != 0 {
			t.Errorf("no agent: pushes_total{no_agent} grew by %v, push_duration by %v; want 1 and 0", d, timed)
		}
	default:
		if pushes != 0 || timed != 0 {
			t.Errorf("outcome %s pushed: pushes_total grew by %v, push_duration by %v", outcome, pushes, timed)
		}
	}
}
