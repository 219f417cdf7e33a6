package binding

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/execgate/execgate/api/v1alpha1"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/webhook/agents"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
)

// The fuzz targets of the webhook feed it what the API server would never send (and what
// it would): the properties are the webhook's promises, not just "no panic":
//   - every request is answered allowed (fail open), with a known outcome, printable and
//     bounded warnings;
//   - a request that is not understood never reaches an agent;
//   - nothing the handler reads (cache, policy) is changed;
//   - a policy that compiles is accepted by a real agent gRPC server.

// fuzzAgents is an agents.AgentClients that has no agent but records which nodes were asked for.
type fuzzAgents struct {
	mu    sync.Mutex
	nodes []string
}

func (a *fuzzAgents) Client(node string) (agentv1.AgentServiceClient, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nodes = append(a.nodes, node)
	return nil, fmt.Errorf("node %q: %w", node, agents.ErrNoAgent)
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
	objs := []client.Object{webhooktest.Pod("web-1", "uid-web-1", "web", ""), webhooktest.Pod("plain", "uid-plain", "", ""), webhooktest.Policy("web", 1)}
	reader := fake.NewClientBuilder().WithScheme(webhooktest.Scheme(f)).WithObjects(objs...).Build()
	reached := &fuzzAgents{}
	return &Admitter{
		Cache: reader, APIReader: reader, LookupTimeout: 50 * time.Millisecond,
		Pusher: &agents.Pusher{Agents: reached, Timeout: 50 * time.Millisecond},
	}, reached, reader, objs
}

// checkFailOpen asserts the webhook's promises about one answer.
func checkFailOpen(t *testing.T, resp admission.Response, reached *fuzzAgents) {
	t.Helper()
	if !resp.Allowed || resp.Result == nil || resp.Result.Code != http.StatusOK {
		t.Fatalf("not allowed with 200: %+v", resp.Result)
	}
	outcome := outcomeOf(resp)
	if !slices.Contains([]agents.Outcome{agents.OutcomePushed, agents.OutcomeNoop, agents.OutcomeTimeout, agents.OutcomeError, agents.OutcomeNoAgent, OutcomeNoPolicy,
		OutcomeNoLabel, OutcomeInvalidRequest, OutcomeDryRun, OutcomeUnscheduled}, outcome) {
		t.Fatalf("unknown outcome %q in %q", outcome, resp.Result.Message)
	}
	for _, w := range resp.Warnings {
		if len(w) > maxWarningBytes+len("...") || !utf8.ValidString(w) || strings.ContainsFunc(w, func(r rune) bool { return !unicode.IsPrint(r) }) {
			t.Fatalf("warning not printable or too long (%d bytes): %q", len(w), w)
		}
	}
	nodes := reached.take()
	if outcome == OutcomeInvalidRequest && len(nodes) > 0 {
		t.Fatalf("a request that was not understood reached the reached of %q", nodes)
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
	a, reached, reader, objs := fuzzAdmitter(f)
	h := &BindingHandler{Admitter: a}
	f.Fuzz(func(t *testing.T, raw []byte, name string, dryRun bool) {
		reached.take()
		req := bindingRequest(t, "web-1", "node-a", func(r *admissionv1.AdmissionRequest) {
			r.Object.Raw = raw
			r.Name = name
			r.DryRun = &dryRun
		})
		checkFailOpen(t, h.Handle(context.Background(), req), reached)
		checkUnchanged(t, reader, objs)
	})
}

// FuzzPodHandler feeds arbitrary bytes as the Pod of a pods CREATE.
func FuzzPodHandler(f *testing.F) {
	for _, p := range []*corev1.Pod{webhooktest.Pod("web-1", "uid-web-1", "web", "node-a"), webhooktest.Pod("later", "uid-later", "web", ""), webhooktest.Pod("plain", "uid-plain", "", "node-a")} {
		raw, err := json.Marshal(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	for _, s := range []string{`{}`, `{"kind":"Binding"}`, `{"spec":{"nodeName":"Node_A"}}`, `{"metadata":{"labels":{"execgate.io/policy":"web"}},"spec":{"nodeName":"n","containers":[{"name":"` + strings.Repeat("c", 300) + `"}]}}`, "\xff"} {
		f.Add([]byte(s))
	}
	a, reached, reader, objs := fuzzAdmitter(f)
	h := &PodHandler{Admitter: a}
	f.Fuzz(func(t *testing.T, raw []byte) {
		reached.take()
		req := podRequest(t, webhooktest.Pod("web-1", "uid-web-1", "web", "node-a"))
		req.Object.Raw = raw
		checkFailOpen(t, h.Handle(context.Background(), req), reached)
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
	a, reached, reader, objs := fuzzAdmitter(f)
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
		reached.take()
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
			if len(reached.take()) != 0 {
				t.Fatal("an agent was contacted for a review that was not decoded")
			}
			return
		}
		if !out.Response.Allowed || out.Response.UID != handledID {
			t.Fatalf("handled request answered allowed=%v uid=%q, want allowed and uid %q", out.Response.Allowed, out.Response.UID, handledID)
		}
		checkFailOpen(t, *handled, reached)
		checkUnchanged(t, reader, objs)
	})
}
