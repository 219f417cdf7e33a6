package learn

import (
	"fmt"
	"testing"

	"github.com/execgate/execgate/api/v1alpha1"
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
