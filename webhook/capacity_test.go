package webhook

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

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/nodeagent/podpolicy"
)

// TestCapacityLearnStopsAtPolicyCap: learning never proposes more executables than a
// policy may list (issue 14.2), so a proposal can always be promoted. Five containers
// that each exec 1,000 distinct files would have made a 5,000-path proposal the CRD
// refuses.
func TestCapacityLearnStopsAtPolicyCap(t *testing.T) {
	byPod := map[string]map[string]map[string]struct{}{}
	for p := range 5 {
		pod := fmt.Sprintf("pod-%d", p)
		byPod[pod] = map[string]map[string]struct{}{}
		c := fmt.Sprintf("c%d", p)
		byPod[pod][c] = map[string]struct{}{}
		for i := range 1000 {
			byPod[pod][c][fmt.Sprintf("/opt/%s/bin/%d", c, i)] = struct{}{}
		}
	}
	merged, contributors, overLimit := mergeRules(nil, byPod)
	if got := countExecutables(merged); got != v1alpha1.MaxExecutablesPerPolicy {
		t.Errorf("proposal lists %d executables, want the cap %d", got, v1alpha1.MaxExecutablesPerPolicy)
	}
	if want := 5000 - v1alpha1.MaxExecutablesPerPolicy; overLimit != want {
		t.Errorf("overLimit = %d, want %d", overLimit, want)
	}
	if len(contributors) != 5 {
		t.Errorf("contributors = %v, want all 5 pods (the fifth added 96 paths)", contributors)
	}
	p := &v1alpha1.WorkloadPolicyProposal{Spec: v1alpha1.WorkloadPolicyProposalSpec{
		Workload:         v1alpha1.WorkloadReference{APIVersion: "apps/v1", Kind: "Deployment", Name: "web"},
		RulesByContainer: merged,
	}}
	if err := p.Validate(); err != nil {
		t.Errorf("the learnt proposal is not valid: %v", err)
	}

	// Full: nothing more is added, and the existing entries stay.
	more := map[string]map[string]map[string]struct{}{"pod-9": {"c0": {"/usr/bin/new": {}}}}
	again, contributors, overLimit := mergeRules(merged, more)
	if countExecutables(again) != v1alpha1.MaxExecutablesPerPolicy || overLimit != 1 || len(contributors) != 0 {
		t.Errorf("on a full proposal: %d executables, overLimit %d, contributors %v; want %d, 1, none",
			countExecutables(again), overLimit, contributors, v1alpha1.MaxExecutablesPerPolicy)
	}
}

// fullNodeBackend is an agent whose node has no room for any policy: it refuses every
// push as the real agent does (ErrLimitExceeded, after holding the pod).
type fullNodeBackend struct{ *recordingBackend }

func (b fullNodeBackend) ApplyPodPolicy(ctx context.Context, p *podpolicy.PodPolicy) (bool, uint64, error) {
	_, _, _ = b.recordingBackend.ApplyPodPolicy(ctx, p)
	return false, 0, fmt.Errorf("load policy %s version %d: enforcer capacity exceeded: %w; pod %s/%s is held until the policy fits: its containers may execute nothing (fail closed)",
		p.Policy.Key(), p.Policy.Version, podpolicy.ErrLimitExceeded, p.Pod.Namespace, p.Pod.Name)
}

// TestCapacityRefusalVisibleAtAdmission: a pod whose policy does not fit on its node
// used to be admitted with only a generic "push failed" warning (issue 14.2). Now the
// admission warns that the pod is held deny-all, the pod gets a Warning Event
// PolicyCapacityExceeded and execgate_controller_policy_capacity_refusals_total counts it.
func TestCapacityRefusalVisibleAtAdmission(t *testing.T) {
	fleet := newAgentFleet(t)
	backend := fullNodeBackend{newRecordingBackend()}
	fleet.endpoints["node-full"], _ = fleet.serve(t, "node-full", "127.0.0.1:0", backend)
	rec := events.NewFakeRecorder(32)
	pod := testPod("web-full", "uid-web-full", "web", "node-full")
	admitter := &Admitter{
		Cache:     fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(pod, testPolicy("web", 2)).Build(),
		APIReader: fake.NewClientBuilder().WithScheme(testScheme(t)).Build(),
		Pusher:    &Pusher{Agents: fleet.pool(t, nil), Timeout: 2 * time.Second},
		Recorder:  rec,
		Log:       zaptest.NewLogger(t),
	}
	metric := map[string]string{"namespace": testNS, "policy": "web"}
	before := served(t, "execgate_controller_policy_capacity_refusals_total", metric)

	resp := (&PodHandler{Admitter: admitter}).Handle(context.Background(), podRequest(t, pod))
	if !resp.Allowed {
		t.Fatalf("pod refused: %+v", resp.Result)
	}
	if n := len(backend.appliedCalls()); n != 1 {
		t.Fatalf("agent received %d pushes, want 1", n)
	}
	evs := drainEvents(rec)
	if !hasEvent(evs, ReasonPolicyCapacityExceeded) {
		t.Errorf("no %s Event on the pod; events %q", ReasonPolicyCapacityExceeded, evs)
	} else {
		t.Logf("event: %s", evs)
	}
	if !slices.ContainsFunc(resp.Warnings, func(w string) bool { return strings.Contains(w, "does not fit on node node-full") }) {
		t.Errorf("admission warnings %q do not say the policy does not fit", resp.Warnings)
	}
	if got := served(t, "execgate_controller_policy_capacity_refusals_total", metric) - before; got != 1 {
		t.Errorf("execgate_controller_policy_capacity_refusals_total +%v, want +1", got)
	}
}
