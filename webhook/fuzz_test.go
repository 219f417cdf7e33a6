package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/go-logr/logr"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/internal/execpath"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	"github.com/execgate/execgate/nodeagent/server"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// The fuzz targets of the webhook feed it what the API server would never send (and what
// it would): the properties are the webhook's promises, not just "no panic":
//   - every request is answered allowed (fail open), with a known outcome, printable and
//     bounded warnings;
//   - a request that is not understood never reaches an agent;
//   - nothing the handler reads (cache, policy) is changed;
//   - a policy that compiles is accepted by a real agent gRPC server.

// fuzzAgents is an AgentClients that has no agent but records which nodes were asked for.
type fuzzAgents struct {
	mu    sync.Mutex
	nodes []string
}

func (a *fuzzAgents) Client(node string) (agentv1.AgentServiceClient, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nodes = append(a.nodes, node)
	return nil, fmt.Errorf("node %q: %w", node, ErrNoAgent)
}

func (a *fuzzAgents) take() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := a.nodes
	a.nodes = nil
	return n
}

// fuzzAdmitter builds an Admitter over a fake cache holding a labelled pod, an unlabelled
// pod and their policy, and returns the objects as they were, to check nothing changed.
func fuzzAdmitter(f *testing.F) (*Admitter, *fuzzAgents, client.Reader, []client.Object) {
	objs := []client.Object{testPod("web-1", "uid-web-1", "web", ""), testPod("plain", "uid-plain", "", ""), testPolicy("web", 1)}
	reader := fake.NewClientBuilder().WithScheme(testScheme(f)).WithObjects(objs...).Build()
	agents := &fuzzAgents{}
	return &Admitter{
		Cache: reader, APIReader: reader, LookupTimeout: 50 * time.Millisecond,
		Pusher: &Pusher{Agents: agents, Timeout: 50 * time.Millisecond},
	}, agents, reader, objs
}

// checkFailOpen asserts the webhook's promises about one answer.
func checkFailOpen(t *testing.T, resp admission.Response, agents *fuzzAgents) {
	t.Helper()
	if !resp.Allowed || resp.Result == nil || resp.Result.Code != http.StatusOK {
		t.Fatalf("not allowed with 200: %+v", resp.Result)
	}
	outcome := outcomeOf(resp)
	if !slices.Contains([]Outcome{OutcomePushed, OutcomeNoop, OutcomeTimeout, OutcomeError, OutcomeNoAgent, OutcomeNoPolicy,
		OutcomeNoLabel, OutcomeInvalidRequest, OutcomeDryRun, OutcomeUnscheduled}, outcome) {
		t.Fatalf("unknown outcome %q in %q", outcome, resp.Result.Message)
	}
	for _, w := range resp.Warnings {
		if len(w) > maxWarningBytes+len("...") || !utf8.ValidString(w) || strings.ContainsFunc(w, func(r rune) bool { return !unicode.IsPrint(r) }) {
			t.Fatalf("warning not printable or too long (%d bytes): %q", len(w), w)
		}
	}
	nodes := agents.take()
	if outcome == OutcomeInvalidRequest && len(nodes) > 0 {
		t.Fatalf("a request that was not understood reached the agents of %q", nodes)
	}
	for _, n := range nodes {
		if msgs := validation.IsDNS1123Subdomain(n); len(msgs) > 0 {
			t.Fatalf("asked for the agent of an invalid node name %q: %v", n, msgs)
		}
	}
}

// checkUnchanged asserts that the cached objects are as they were created.
func checkUnchanged(t *testing.T, reader client.Reader, objs []client.Object) {
	t.Helper()
	for _, want := range objs {
		got := want.DeepCopyObject().(client.Object)
		if err := reader.Get(context.Background(), client.ObjectKeyFromObject(want), got); err != nil {
			t.Fatalf("read back %s: %v", want.GetName(), err)
		}
		if !reflect.DeepEqual(specOf(got), specOf(want)) || !reflect.DeepEqual(got.GetLabels(), want.GetLabels()) {
			t.Fatalf("%s changed: %+v", want.GetName(), got)
		}
	}
}

func specOf(o client.Object) any {
	switch o := o.(type) {
	case *corev1.Pod:
		return o.Spec
	case *v1alpha1.WorkloadPolicy:
		return o.Spec
	}
	return nil
}

// FuzzBindingHandler feeds arbitrary bytes as the Binding object, with an arbitrary
// request name and dry-run flag.
func FuzzBindingHandler(f *testing.F) {
	for _, seed := range []string{
		`{"apiVersion":"v1","kind":"Binding","metadata":{"name":"web-1","namespace":"shop"},"target":{"kind":"Node","name":"node-a"}}`,
		`{"apiVersion":"v1","kind":"Binding","metadata":{"name":"plain","namespace":"shop"},"target":{"name":"node-b"}}`,
		`{"kind":"Pod"}`, `{"target":{"name":""}}`, `null`, `[]`, `{"metadata":{"name":"` + string(make([]byte, 300)) + `"}}`,
		"\x00\xff", `{"target":{"kind":"Service","name":"x"}}`, `{"target":{"name":"NODE_A"}}`, `{"target":{"name":"a\u0000b"}}`,
		`{"metadata":{"name":"web-1","uid":"other-uid"},"target":{"name":"node-a"}}`,
	} {
		f.Add([]byte(seed), "web-1", false)
	}
	f.Add([]byte(`{"target":{"name":"node-a"}}`), "", true)
	a, agents, reader, objs := fuzzAdmitter(f)
	h := &BindingHandler{Admitter: a}
	f.Fuzz(func(t *testing.T, raw []byte, name string, dryRun bool) {
		agents.take()
		req := bindingRequest(t, "web-1", "node-a", func(r *admissionv1.AdmissionRequest) {
			r.Object.Raw = raw
			r.Name = name
			r.DryRun = &dryRun
		})
		checkFailOpen(t, h.Handle(context.Background(), req), agents)
		checkUnchanged(t, reader, objs)
	})
}

// FuzzPodHandler feeds arbitrary bytes as the Pod of a pods CREATE.
func FuzzPodHandler(f *testing.F) {
	for _, p := range []*corev1.Pod{testPod("web-1", "uid-web-1", "web", "node-a"), testPod("later", "uid-later", "web", ""), testPod("plain", "uid-plain", "", "node-a")} {
		raw, err := json.Marshal(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	for _, s := range []string{`{}`, `{"kind":"Binding"}`, `{"spec":{"nodeName":"Node_A"}}`, `{"metadata":{"labels":{"execgate.io/policy":"web"}},"spec":{"nodeName":"n","containers":[{"name":"` + strings.Repeat("c", 300) + `"}]}}`, "\xff"} {
		f.Add([]byte(s))
	}
	a, agents, reader, objs := fuzzAdmitter(f)
	h := &PodHandler{Admitter: a}
	f.Fuzz(func(t *testing.T, raw []byte) {
		agents.take()
		req := podRequest(t, testPod("web-1", "uid-web-1", "web", "node-a"))
		req.Object.Raw = raw
		checkFailOpen(t, h.Handle(context.Background(), req), agents)
		checkUnchanged(t, reader, objs)
	})
}

// FuzzAdmissionReview feeds arbitrary HTTP bodies to the binding webhook as served
// (controller-runtime's decoding of the AdmissionReview included, panics not recovered).
// Whenever the review was understood well enough to reach the handler, the answer is
// allowed and carries the request's UID; otherwise it is controller-runtime's 400, which
// the API server only gets from a body it did not send.
func FuzzAdmissionReview(f *testing.F) {
	review := func(apiVersion string, req *admissionv1.AdmissionRequest) []byte {
		b, err := json.Marshal(map[string]any{"apiVersion": apiVersion, "kind": "AdmissionReview", "request": req})
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	good := bindingRequest(f, "web-1", "node-a", nil).AdmissionRequest
	f.Add(review("admission.k8s.io/v1", &good))
	f.Add(review("admission.k8s.io/v1beta1", &good))
	f.Add(review("admission.k8s.io/v1", nil))
	f.Add(review("admission.k8s.io/v2", &good))
	for _, s := range []string{``, `{}`, `null`, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","object":"not an object"}}`, "\x00\xff{"} {
		f.Add([]byte(s))
	}
	a, agents, reader, objs := fuzzAdmitter(f)
	var (
		handled   *admission.Response
		handledID types.UID
	)
	recoverPanic := false
	wh := &admission.Webhook{
		Handler: admission.HandlerFunc(func(ctx context.Context, req admission.Request) admission.Response {
			resp := (&BindingHandler{Admitter: a}).Handle(ctx, req)
			handled, handledID = &resp, req.UID
			return resp
		}),
		RecoverPanic:   &recoverPanic,
		LogConstructor: func(logr.Logger, *admission.Request) logr.Logger { return logr.Discard() },
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		handled = nil
		agents.take()
		r := httptest.NewRequest(http.MethodPost, BindingPath, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		wh.ServeHTTP(w, r)
		var out admissionv1.AdmissionReview
		if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil || out.Response == nil {
			t.Fatalf("answer is not an AdmissionReview with a response: %v %q", err, w.Body.String())
		}
		if handled == nil {
			if out.Response.Allowed || out.Response.Result == nil || out.Response.Result.Code != http.StatusBadRequest {
				t.Fatalf("request never reached the handler, yet the answer is %+v", out.Response)
			}
			if len(agents.take()) != 0 {
				t.Fatal("an agent was contacted for a review that was not decoded")
			}
			return
		}
		if !out.Response.Allowed || out.Response.UID != handledID {
			t.Fatalf("handled request answered allowed=%v uid=%q, want allowed and uid %q", out.Response.Allowed, out.Response.UID, handledID)
		}
		checkFailOpen(t, *handled, agents)
		checkUnchanged(t, reader, objs)
	})
}

// fuzzAgentBackend accepts everything the agent server lets through and keeps the last one.
type fuzzAgentBackend struct {
	mu   sync.Mutex
	last *podpolicy.PodPolicy
}

func (b *fuzzAgentBackend) ApplyPodPolicy(_ context.Context, p *podpolicy.PodPolicy) (bool, uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.last = p
	return true, p.Policy.Version, nil
}
func (b *fuzzAgentBackend) RemovePod(context.Context, string) (bool, error) { return false, nil }
func (b *fuzzAgentBackend) RemovePolicy(context.Context, podpolicy.PolicyRef) (bool, error) {
	return false, nil
}
func (b *fuzzAgentBackend) Status(context.Context) (*agentv1.AgentStatus, error) {
	return &agentv1.AgentStatus{}, nil
}
func (b *fuzzAgentBackend) Subscribe(context.Context, podpolicy.EventFilter) (<-chan *agentv1.ExecEvent, func()) {
	ch := make(chan *agentv1.ExecEvent)
	return ch, func() {}
}

// startFuzzAgent runs a real agent gRPC server (plaintext: TLS is not what is fuzzed) for
// node-a and returns a client of it.
func startFuzzAgent(f *testing.F) (agentv1.AgentServiceClient, *fuzzAgentBackend) {
	b := &fuzzAgentBackend{}
	srv, err := server.New(server.Config{NodeName: "node-a", Insecure: true, ShutdownGracePeriod: time.Second}, b, zap.NewNop(), nil)
	if err != nil {
		f.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		_ = conn.Close()
		cancel()
		<-done
	})
	return agentv1.NewAgentServiceClient(conn), b
}

// FuzzCompilePodPolicy compiles policies with arbitrary modes, container names and
// executables (NUL, "..", unicode, lists past the limits) for pods with arbitrary
// containers. It checks that neither input is modified, that a refusal names the policy
// and stays bounded, and that whatever compiles is exactly the whole policy (every key)
// with the digest the agent computes, and is accepted by a real agent server.
func FuzzCompilePodPolicy(f *testing.F) {
	f.Add("Protect", int64(3), "app,sidecar", "app", "/usr/bin/app\n/opt/app/", uint16(0))
	f.Add("Monitor", int64(1), "app", "*", "/bin/sh\n/bin/sh", uint16(0))
	f.Add("Learn", int64(1), "init,app", "", "", uint16(0))
	f.Add("Protect", int64(1), "app", "app", "/usr/../bin/id\n/a\x00b\nrel\n/\n/日本/実行", uint16(3))
	f.Add("Protect", int64(1), "app", "app", "/lib64/ld-linux-x86-64.so.2\n/usr/lib/", uint16(0))
	f.Add("Protect", int64(2), "app", "app", "/x", uint16(1100))
	f.Add("protect", int64(0), "App,app", "App", "/x", uint16(0))
	agent, backend := startFuzzAgent(f)
	f.Fuzz(func(t *testing.T, mode string, generation int64, containers, key, paths string, extra uint16) {
		pod := testPod("web-1", "uid-web-1", "web", "node-a")
		pod.Spec.InitContainers = nil
		pod.Spec.Containers = nil
		for _, c := range strings.Split(containers, ",") {
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: c})
		}
		var exes []string
		if paths != "" {
			exes = strings.Split(paths, "\n")
		}
		for i := range int(extra % 1200) { // past MaxExecutablesPerContainer
			exes = append(exes, fmt.Sprintf("/opt/bin/x%d", i))
		}
		policy := &v1alpha1.WorkloadPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "web", UID: "web-uid", Generation: generation},
			Spec: v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.Mode(mode), RulesByContainer: v1alpha1.RulesByContainer{
				key: {Executables: exes},
			}},
		}
		podBefore, policyBefore := pod.DeepCopy(), policy.DeepCopy()

		req, err := CompilePodPolicy(pod, "node-a", policy, "req-1")
		if !reflect.DeepEqual(pod, podBefore) || !reflect.DeepEqual(policy, policyBefore) {
			t.Fatal("CompilePodPolicy modified its input")
		}
		if err != nil {
			if req != nil {
				t.Fatal("a request came back with the error")
			}
			if !strings.Contains(err.Error(), "shop/web") || len(err.Error()) > 16<<10 {
				t.Fatalf("error does not name the policy or is unbounded (%d bytes): %.300s", len(err.Error()), err)
			}
			return
		}
		// What compiled is a valid policy, container by container.
		if err := policy.Validate(); err != nil || generation < 1 {
			t.Fatalf("compiled an invalid policy (generation %d): %v", generation, err)
		}
		if got := req.GetPolicy().GetGeneration(); got != uint64(generation) {
			t.Fatalf("generation %d, want %d", got, generation)
		}
		for i, c := range pod.Spec.Containers {
			if req.GetPod().GetContainers()[i].GetName() != c.Name {
				t.Fatalf("container %d is %q, want %q", i, req.GetPod().GetContainers()[i].GetName(), c.Name)
			}
		}
		// The whole policy, whatever the pod's containers (issue 14: a subset made the
		// next pod sharing the policy on the node run with empty slots).
		if got, want := len(req.GetPolicy().GetRulesByContainer()), len(policy.Spec.RulesByContainer); got != want {
			t.Fatalf("%d rule keys compiled, the policy has %d", got, want)
		}
		for key, want := range policy.Spec.RulesByContainer {
			got, has := req.GetPolicy().GetRulesByContainer()[key]
			if !has || !slices.Equal(got.GetExecutables(), want.Executables) {
				t.Fatalf("rules of %q = %v (%v), want %v", key, got.GetExecutables(), has, want.Executables)
			}
			for _, e := range got.GetExecutables() {
				if err := execpath.Check(e); err != nil {
					t.Fatalf("compiled an entry execpath refuses: %v", err)
				}
			}
		}
		if !strings.HasPrefix(req.GetPolicy().GetDigest(), "sha256:") {
			t.Fatalf("digest %q", req.GetPolicy().GetDigest())
		}
		// The request is a copy: changing it does not touch the policy.
		for _, r := range req.GetPolicy().GetRulesByContainer() {
			if len(r.Executables) > 0 {
				r.Executables[0] = "/changed"
			}
		}
		if !reflect.DeepEqual(policy, policyBefore) {
			t.Fatal("the compiled request shares memory with the policy")
		}
		// The agent accepts what compiles, for a pod the API server would admit.
		if !admissiblePod(pod) {
			return
		}
		req, _ = CompilePodPolicy(pod, "node-a", policy, "req-1")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := agent.ApplyPodPolicy(ctx, req); err != nil {
			t.Fatalf("the agent refused a compiled policy (%s): %v", status.Code(err), err)
		}
		backend.mu.Lock()
		got := backend.last
		backend.mu.Unlock()
		for name, r := range req.GetPolicy().GetRulesByContainer() {
			want := slices.Compact(slices.Sorted(slices.Values(r.GetExecutables())))
			if !slices.Equal(got.Policy.RulesByContainer[name], want) {
				t.Fatalf("agent received %v for %q, want %v", got.Policy.RulesByContainer[name], name, want)
			}
		}
		if d := got.Policy.Digest(); d != req.GetPolicy().GetDigest() {
			t.Fatalf("the agent's digest %s differs from the sent %s", d, req.GetPolicy().GetDigest())
		}
	})
}

// admissiblePod reports whether the API server would accept the pod's containers: 1 to 64
// unique DNS-1123 labels (the agent's limit is the API server's practical one).
func admissiblePod(pod *corev1.Pod) bool {
	names := map[string]bool{}
	for _, c := range pod.Spec.Containers {
		if len(validation.IsDNS1123Label(c.Name)) > 0 || names[c.Name] {
			return false
		}
		names[c.Name] = true
	}
	return len(names) >= 1 && len(names) <= server.MaxContainers
}
