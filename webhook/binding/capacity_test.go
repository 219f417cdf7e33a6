package binding

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/execgate/execgate/nodeagent/podpolicy"
	"github.com/execgate/execgate/webhook/agents"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
)

// fullNodeBackend is an agent whose node has no room for any policy: it refuses every
// push as the real agent does (ErrLimitExceeded, after holding the pod).
type fullNodeBackend struct{ *webhooktest.RecordingBackend }

func (b fullNodeBackend) ApplyPodPolicy(ctx context.Context, p *podpolicy.PodPolicy) (bool, uint64, error) {
	_, _, _ = b.RecordingBackend.ApplyPodPolicy(ctx, p)
	return false, 0, fmt.Errorf("load policy %s version %d: enforcer capacity exceeded: %w; pod %s/%s is held until the policy fits: its containers may execute nothing (fail closed)",
		p.Policy.Key(), p.Policy.Version, podpolicy.ErrLimitExceeded, p.Pod.Namespace, p.Pod.Name)
}

// TestCapacityRefusalVisibleAtAdmission: a pod whose policy does not fit on its node
// used to be admitted with only a generic "push failed" warning (issue 14.2). Now the
// admission warns that the pod is held deny-all, the pod gets a Warning Event
// PolicyCapacityExceeded and execgate_controller_policy_capacity_refusals_total counts it.
func TestCapacityRefusalVisibleAtAdmission(t *testing.T) {
	fleet := webhooktest.NewFleet(t)
	backend := fullNodeBackend{webhooktest.NewRecordingBackend()}
	fleet.Endpoints["node-full"], _ = fleet.Serve(t, "node-full", "127.0.0.1:0", backend)
	rec := events.NewFakeRecorder(32)
	pod := webhooktest.Pod("web-full", "uid-web-full", "web", "node-full")
	admitter := &Admitter{
		Cache:     fake.NewClientBuilder().WithScheme(webhooktest.Scheme(t)).WithObjects(pod, webhooktest.Policy("web", 2)).Build(),
		APIReader: fake.NewClientBuilder().WithScheme(webhooktest.Scheme(t)).Build(),
		Pusher:    &agents.Pusher{Agents: fleet.Pool(t, nil), Timeout: 2 * time.Second},
		Recorder:  rec,
		Log:       zaptest.NewLogger(t),
	}
	metric := map[string]string{"namespace": webhooktest.NS, "policy": "web"}
	before := webhooktest.Served(t, "execgate_controller_policy_capacity_refusals_total", metric)

	resp := (&PodHandler{Admitter: admitter}).Handle(context.Background(), podRequest(t, pod))
	if !resp.Allowed {
		t.Fatalf("pod refused: %+v", resp.Result)
	}
	if n := len(backend.AppliedCalls()); n != 1 {
		t.Fatalf("agent received %d pushes, want 1", n)
	}
	evs := webhooktest.DrainEvents(rec)
	if !webhooktest.HasEvent(evs, ReasonPolicyCapacityExceeded) {
		t.Errorf("no %s Event on the pod; events %q", ReasonPolicyCapacityExceeded, evs)
	} else {
		t.Logf("event: %s", evs)
	}
	if !slices.ContainsFunc(resp.Warnings, func(w string) bool { return strings.Contains(w, "does not fit on node node-full") }) {
		t.Errorf("admission warnings %q do not say the policy does not fit", resp.Warnings)
	}
	if got := webhooktest.Served(t, "execgate_controller_policy_capacity_refusals_total", metric) - before; got != 1 {
		t.Errorf("execgate_controller_policy_capacity_refusals_total +%v, want +1", got)
	}
}
