package server

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/execgate/execgate/internal/execpath"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// maxStatusBytes bounds an InvalidArgument message: maxReportedViolations lines of a
// field path and a description, each quoting at most 80 bytes of the caller's input.
const maxStatusBytes = 8 << 10

// fuzzService is the AgentService as the gRPC server runs it, over a fake backend.
func fuzzService(f *testing.F) (*service, *fakeBackend) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		f.Fatal(err)
	}
	b := newFakeBackend()
	return &service{backend: b, nodeName: testNode, log: zap.NewNop(), metrics: m, stopping: make(chan struct{})}, b
}

// checkRefusal asserts that err is a bounded InvalidArgument with its violations attached.
func checkRefusal(t *testing.T, err error) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		t.Fatalf("refusal is %v, want InvalidArgument", err)
	}
	if len(st.Message()) > maxStatusBytes {
		t.Fatalf("message of %d bytes: %.200s...", len(st.Message()), st.Message())
	}
	n := len(badRequest(t, err).GetFieldViolations())
	if n == 0 || n > maxReportedViolations {
		t.Fatalf("%d field violations, want 1..%d", n, maxReportedViolations)
	}
}

// FuzzApplyPodPolicy decodes arbitrary bytes as an ApplyPodPolicyRequest, as gRPC would,
// and calls the service. A refused request is a bounded InvalidArgument that never
// reaches the backend; the request is never modified; an accepted one reaches the backend
// only with entries execpath accepts, sorted and deduplicated, and its conversion is
// deterministic.
func FuzzApplyPodPolicy(f *testing.F) {
	seed := func(mutate func(r *agentv1.ApplyPodPolicyRequest)) {
		r := validApply()
		if mutate != nil {
			mutate(r)
		}
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(nil)
	seed(func(r *agentv1.ApplyPodPolicyRequest) {
		r.Policy.RulesByContainer["app"].Executables = []string{"/", "/a/../b", "rel", "/日本/実行"}
	})
	seed(func(r *agentv1.ApplyPodPolicyRequest) { r.Policy.RulesByContainer["Bad Key"] = &agentv1.Rules{} })
	seed(func(r *agentv1.ApplyPodPolicyRequest) {
		r.Policy.RulesByContainer[strings.Repeat("K", 10000)] = &agentv1.Rules{}
	})
	seed(func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.NodeName = "node-b" })
	seed(func(r *agentv1.ApplyPodPolicyRequest) { r.Pod = nil; r.Policy.Mode = 99 })
	seed(func(r *agentv1.ApplyPodPolicyRequest) {
		r.Policy.RulesByContainer["app"].Executables = slices.Repeat([]string{"/lib64/ld-linux-x86-64.so.2", "/usr/lib/"}, 600)
	})
	f.Add([]byte{})
	f.Add([]byte("\x0a\xff\xff\xff\xff\x0f"))
	svc, backend := fuzzService(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req agentv1.ApplyPodPolicyRequest
		if err := proto.Unmarshal(data, &req); err != nil {
			return // gRPC refuses it before the service sees it
		}
		before := proto.Clone(&req)
		calls, state := backend.calls.Load(), backend.snapshot()

		pp, verr := validateApplyPodPolicy(&req)
		_, err := svc.ApplyPodPolicy(context.Background(), &req)
		if !proto.Equal(&req, before) {
			t.Fatal("validation modified the request")
		}
		if verr != nil {
			checkRefusal(t, err)
			if pp != nil {
				t.Fatal("a PodPolicy came back with the error")
			}
			if _, again := validateApplyPodPolicy(&req); status.Convert(again).Message() != status.Convert(verr).Message() {
				t.Fatalf("two validations of one request disagree:\n%v\n%v", verr, again)
			}
			if backend.calls.Load() != calls || len(backend.snapshot()) != len(state) {
				t.Fatal("a refused request reached the backend")
			}
			return
		}
		if pp.Pod.UID != req.GetPod().GetUid() || pp.Policy.Version != req.GetPolicy().GetGeneration() || len(pp.Pod.Containers) != len(req.GetPod().GetContainers()) {
			t.Fatalf("conversion lost fields: %+v", pp)
		}
		for name, exes := range pp.Policy.RulesByContainer {
			if !slices.IsSorted(exes) || len(slices.Compact(slices.Clone(exes))) != len(exes) {
				t.Fatalf("rules of %q not sorted and deduplicated: %q", name, exes)
			}
			for _, e := range exes {
				if err := execpath.Check(e); err != nil {
					t.Fatalf("accepted an entry execpath refuses: %v", err)
				}
			}
		}
		switch {
		case pp.Pod.NodeName != testNode:
			if status.Code(err) != codes.FailedPrecondition || backend.calls.Load() != calls {
				t.Fatalf("pod of node %q: %v, backend calls %d -> %d", pp.Pod.NodeName, err, calls, backend.calls.Load())
			}
		case err != nil:
			t.Fatalf("valid request for this node failed: %v", err)
		case backend.calls.Load() != calls+1:
			t.Fatal("valid request did not reach the backend exactly once")
		}
	})
}

// FuzzOtherRequests does the same for RemovePod, RemovePolicy and WatchEvents' filter.
func FuzzOtherRequests(f *testing.F) {
	add := func(kind uint8, m proto.Message) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(kind, b)
	}
	add(0, &agentv1.RemovePodRequest{PodUid: "abc-123", RequestId: "r-1"})
	add(0, &agentv1.RemovePodRequest{PodUid: strings.Repeat("A", 100)})
	add(1, &agentv1.RemovePolicyRequest{Namespace: "shop", Name: "cart", PolicyUid: "u-1"})
	add(1, &agentv1.RemovePolicyRequest{Namespace: "Shop", Name: "a..b"})
	add(2, &agentv1.WatchEventsRequest{Filter: &agentv1.EventFilter{Namespace: "shop", Pod: "p", Container: "c", Policy: "shop/cart", Actions: []agentv1.Action{agentv1.Action_ACTION_DENIED}}})
	add(2, &agentv1.WatchEventsRequest{Filter: &agentv1.EventFilter{Policy: "noslash", Actions: []agentv1.Action{0, 77}}})
	svc, backend := fuzzService(f)
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		calls := backend.calls.Load()
		var (
			req      proto.Message
			validate func() error
			call     func() error
		)
		switch kind % 3 {
		case 0:
			r := &agentv1.RemovePodRequest{}
			req, validate = r, func() error { return validateRemovePod(r) }
			call = func() error { _, err := svc.RemovePod(context.Background(), r); return err }
		case 1:
			r := &agentv1.RemovePolicyRequest{}
			req, validate = r, func() error { _, err := validateRemovePolicy(r); return err }
			call = func() error { _, err := svc.RemovePolicy(context.Background(), r); return err }
		default:
			r := &agentv1.WatchEventsRequest{}
			req, validate = r, func() error { _, err := validateWatchEvents(r); return err }
			call = nil // a stream: its validation is what the service runs first
		}
		if err := proto.Unmarshal(data, req); err != nil {
			return
		}
		before := proto.Clone(req)
		err := validate()
		if !proto.Equal(req, before) {
			t.Fatal("validation modified the request")
		}
		if err == nil {
			return
		}
		checkRefusal(t, err)
		if call != nil {
			if got := call(); status.Convert(got).Message() != status.Convert(err).Message() {
				t.Fatalf("service answered %v, validation said %v", got, err)
			}
		}
		if backend.calls.Load() != calls {
			t.Fatal("a refused request reached the backend")
		}
	})
}
