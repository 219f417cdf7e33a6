package webhook

import (
	"context"
	"net/http"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

// FuzzBindingHandler feeds arbitrary bytes as the Binding object. The handler must never
// panic and must always answer allowed (fail open) or errored.
func FuzzBindingHandler(f *testing.F) {
	for _, seed := range []string{
		`{"apiVersion":"v1","kind":"Binding","metadata":{"name":"web-1","namespace":"shop"},"target":{"kind":"Node","name":"node-a"}}`,
		`{"kind":"Pod"}`, `{"target":{"name":""}}`, `null`, `[]`, `{"metadata":{"name":"` + string(make([]byte, 300)) + `"}}`,
		"\x00\xff", `{"target":{"kind":"Service","name":"x"}}`,
	} {
		f.Add([]byte(seed), "web-1", false)
	}
	scheme := testScheme(f)
	objs := testPod("web-1", "uid-web-1", "web", "")
	reader := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs, testPolicy("web", 1)).Build()
	h := &BindingHandler{Admitter: &Admitter{
		Cache: reader, APIReader: reader, LookupTimeout: 50 * time.Millisecond,
		// No agents: a request that gets as far as a push ends as no_agent.
		Pusher: &Pusher{Agents: staticClients{}, Timeout: 50 * time.Millisecond},
	}}
	f.Fuzz(func(t *testing.T, raw []byte, name string, dryRun bool) {
		req := bindingRequest(t, "web-1", "node-a", func(r *admissionv1.AdmissionRequest) {
			r.Object.Raw = raw
			r.Name = name
			r.DryRun = &dryRun
		})
		resp := h.Handle(context.Background(), req)
		errored := resp.Result != nil && resp.Result.Code == http.StatusBadRequest && !resp.Allowed
		if !resp.Allowed && !errored {
			t.Fatalf("neither allowed nor errored: %+v", resp.Result)
		}
	})
}
