package promote_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/webhook/promote"
)

// The real API server (CRD schema and CEL) is exercised by webhook's TestE2ELearn; this
// table covers the decisions.

const ns = "shop"

func proposal(name string, rules v1alpha1.RulesByContainer) *v1alpha1.WorkloadPolicyProposal {
	return &v1alpha1.WorkloadPolicyProposal{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.WorkloadPolicyProposalSpec{
			Workload:         v1alpha1.WorkloadReference{APIVersion: "apps/v1", Kind: "Deployment", Name: "web"},
			RulesByContainer: rules,
		},
	}
}

func learnt() v1alpha1.RulesByContainer {
	return v1alpha1.RulesByContainer{
		"app":     {Executables: []string{"/usr/bin/dash", "/usr/local/bin/server"}},
		"sidecar": {Executables: []string{"/usr/bin/envoy"}},
	}
}

func newClient(t *testing.T, objs ...client.Object) client.Client {
	t.Helper()
	s := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := appsv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return fake.NewClientBuilder().WithScheme(s).WithObjects(objs...).Build()
}

// deployment is the proposal's workload; its pods opt into policy.
func deployment(policy string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web", v1alpha1.PolicyLabel: policy}},
		}},
	}
}

func TestPromote(t *testing.T) {
	existing := &v1alpha1.WorkloadPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web", Labels: map[string]string{"team": "shop"}, Annotations: map[string]string{"note": "keep"}},
		Spec:       v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.ModeLearn},
	}
	promotedBefore := &v1alpha1.WorkloadPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web", Annotations: map[string]string{promote.AnnotationProposal: "deployment-web"}},
		Spec:       v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.ModeMonitor, RulesByContainer: v1alpha1.RulesByContainer{"app": {Executables: []string{"/usr/bin/old"}}}},
	}
	handWritten := promotedBefore.DeepCopy()
	handWritten.Annotations = nil
	handWritten.Spec.Mode = v1alpha1.ModeProtect
	tests := []struct {
		name       string
		objs       []client.Object
		proposal   string
		mode       v1alpha1.Mode
		policy     string
		wantName   string
		wantErr    string // substring; "" = success
		wantLabels map[string]string
		// wantPrevious is the mode before an update; "" expects a creation.
		wantPrevious v1alpha1.Mode
		wantOptedIn  bool
	}{
		{name: "creates a Protect policy", objs: []client.Object{proposal("deployment-web", learnt())},
			proposal: "deployment-web", mode: v1alpha1.ModeProtect, policy: "web", wantName: "web"},
		{name: "policy named after the proposal by default", objs: []client.Object{proposal("deployment-web", learnt())},
			proposal: "deployment-web", mode: v1alpha1.ModeMonitor, wantName: "deployment-web"},
		{name: "updates the Learn policy the pods carry", objs: []client.Object{proposal("deployment-web", learnt()), existing},
			proposal: "deployment-web", mode: v1alpha1.ModeMonitor, policy: "web", wantName: "web", wantLabels: map[string]string{"team": "shop"}, wantPrevious: v1alpha1.ModeLearn},
		{name: "policy the pods carry by default", objs: []client.Object{proposal("deployment-web", learnt()), existing, deployment("web")},
			proposal: "deployment-web", mode: v1alpha1.ModeMonitor, wantName: "web", wantPrevious: v1alpha1.ModeLearn, wantOptedIn: true},
		{name: "pods opting into another policy", objs: []client.Object{proposal("deployment-web", learnt()), deployment("other")},
			proposal: "deployment-web", mode: v1alpha1.ModeMonitor, policy: "web", wantName: "web"},
		{name: "updates a policy promoted from the same proposal", objs: []client.Object{proposal("deployment-web", learnt()), promotedBefore},
			proposal: "deployment-web", mode: v1alpha1.ModeProtect, policy: "web", wantName: "web", wantPrevious: v1alpha1.ModeMonitor},
		{name: "leaves a policy it did not write alone", objs: []client.Object{proposal("deployment-web", learnt()), handWritten},
			proposal: "deployment-web", mode: v1alpha1.ModeProtect, policy: "web", wantErr: "policy shop/web exists in mode Protect and was not promoted from proposal deployment-web"},
		{name: "Learn refused", objs: []client.Object{proposal("deployment-web", learnt())},
			proposal: "deployment-web", mode: v1alpha1.ModeLearn, policy: "web", wantErr: "mode Learn: a proposal is what Learn recorded; promote it to Monitor"},
		{name: "unknown mode", proposal: "deployment-web", mode: "protect", wantErr: `mode "protect": want Monitor or Protect`},
		{name: "missing proposal", proposal: "deployment-api", mode: v1alpha1.ModeProtect, wantErr: "proposal shop/deployment-api not found (list them with: kubectl get workloadpolicyproposals -n shop)"},
		{name: "nothing learnt yet", objs: []client.Object{proposal("deployment-web", nil)},
			proposal: "deployment-web", mode: v1alpha1.ModeProtect, wantErr: "cannot become a Protect policy yet"},
		{name: "policy name too long for the label", objs: []client.Object{proposal("deployment-web", learnt())},
			proposal: "deployment-web", mode: v1alpha1.ModeProtect, policy: strings.Repeat("p", 64), wantErr: "is 64 characters long; pods name it in the label execgate.io/policy"},
		{name: "bad policy name", proposal: "deployment-web", mode: v1alpha1.ModeProtect, policy: "Web_1", wantErr: `policy name "Web_1" is not a valid object name`},
		{name: "bad policy name on the pods", objs: []client.Object{proposal("deployment-web", learnt()), deployment("Web_1")},
			proposal: "deployment-web", mode: v1alpha1.ModeProtect, wantErr: `policy name "Web_1", from the label execgate.io/policy of Deployment web's pods, is not a valid object name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(t, tt.objs...)
			res, err := promote.Promote(context.Background(), c, ns, tt.proposal, tt.mode, tt.policy)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				if !errors.Is(err, promote.ErrInvalidArgument) || strings.Contains(err.Error(), promote.ErrInvalidArgument.Error()) {
					t.Errorf("err = %v, want ErrInvalidArgument, unsaid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var stored v1alpha1.WorkloadPolicy
			if err := c.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: tt.wantName}, &stored); err != nil {
				t.Fatal(err)
			}
			if stored.Spec.Mode != tt.mode || !reflect.DeepEqual(stored.Spec.RulesByContainer, learnt()) || !reflect.DeepEqual(res.Policy.Spec, stored.Spec) {
				t.Errorf("policy spec %+v (returned %+v), want mode %s and the proposal's rules", stored.Spec, res.Policy.Spec, tt.mode)
			}
			if res.Created != (tt.wantPrevious == "") || res.PreviousMode != tt.wantPrevious || res.PodsOptedIn != tt.wantOptedIn || res.Proposal.Name != tt.proposal {
				t.Errorf("result: created %v, previous mode %q, pods opted in %v, proposal %s; want previous mode %q, opted in %v",
					res.Created, res.PreviousMode, res.PodsOptedIn, res.Proposal.Name, tt.wantPrevious, tt.wantOptedIn)
			}
			if stored.Annotations[promote.AnnotationProposal] != tt.proposal || stored.Annotations[promote.AnnotationWorkload] != "Deployment/web" {
				t.Errorf("annotations %v", stored.Annotations)
			}
			for k, v := range tt.wantLabels {
				if stored.Labels[k] != v || stored.Annotations["note"] != "keep" {
					t.Errorf("labels %v annotations %v: the update must keep what it does not own", stored.Labels, stored.Annotations)
				}
			}
		})
	}
}
