package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/internal/testchart"
	"github.com/execgate/execgate/test/e2e/cluster"
)

// TestCapacityCRDCapsTotalExecutables is issue 14.2 at the API server: the CRD used to
// accept 64 containers x 1024 paths (131,072 kernel entries on every node the pods run
// on, four times a node's default map). The chart's CRDs, applied to a real
// kube-apiserver, must refuse more than 4096 executables over all containers of a
// WorkloadPolicy or a WorkloadPolicyProposal, and accept 4096.
func TestCapacityCRDCapsTotalExecutables(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	testchart.InstallCRDs(ctx, t, c.RESTConfig)
	const ns = "tenant"
	if err := c.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	// rules lists perContainer distinct paths in each of containers containers.
	rules := func(containers, perContainer int) v1alpha1.RulesByContainer {
		r := v1alpha1.RulesByContainer{}
		for i := range containers {
			name := fmt.Sprintf("c%d", i)
			paths := make([]string, perContainer)
			for j := range paths {
				paths[j] = fmt.Sprintf("/opt/%s/bin-%d", name, j)
			}
			r[name] = v1alpha1.ContainerRules{Executables: paths}
		}
		return r
	}
	create := func(kind string, name string, r v1alpha1.RulesByContainer) error {
		var obj any
		resource := "workloadpolicies"
		switch kind {
		case "WorkloadPolicy":
			obj = &v1alpha1.WorkloadPolicy{
				TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: kind},
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec:       v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.ModeProtect, RulesByContainer: r},
			}
		default:
			resource = "workloadpolicyproposals"
			obj = &v1alpha1.WorkloadPolicyProposal{
				TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: kind},
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec: v1alpha1.WorkloadPolicyProposalSpec{
					Workload:         v1alpha1.WorkloadReference{APIVersion: "apps/v1", Kind: "Deployment", Name: name},
					RulesByContainer: r,
				},
			}
		}
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
		if err != nil {
			t.Fatal(err)
		}
		_, err = dyn.Resource(v1alpha1.GroupVersion.WithResource(resource)).Namespace(ns).
			Create(ctx, &unstructured.Unstructured{Object: u}, metav1.CreateOptions{})
		return err
	}
	tests := []struct {
		name, kind string
		rules      v1alpha1.RulesByContainer
		refused    bool
	}{
		{"policy with 4 x 1024 executables", "WorkloadPolicy", rules(4, 1024), false},
		{"policy with 5 x 1024 executables", "WorkloadPolicy", rules(5, 1024), true},
		{"policy with 64 x 65 executables", "WorkloadPolicy", rules(64, 65), true},
		{"proposal with 4 x 1024 executables", "WorkloadPolicyProposal", rules(4, 1024), false},
		{"proposal with 8 x 600 executables", "WorkloadPolicyProposal", rules(8, 600), true},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := create(tc.kind, fmt.Sprintf("cap-%d", i), tc.rules)
			if !tc.refused {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("the API server accepted a %s of %d executables", tc.kind, countAll(tc.rules))
			}
			if !strings.Contains(err.Error(), "at most 4096 executables over all containers") {
				t.Fatalf("refused, but not by the total cap: %.400s", err)
			}
			t.Logf("refused: %.300s", err)
			// Go's validation, which the webhook and the agent apply, agrees.
			p := &v1alpha1.WorkloadPolicy{ObjectMeta: metav1.ObjectMeta{Name: "x"}, Spec: v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.ModeProtect, RulesByContainer: tc.rules}}
			if err := p.Validate(); err == nil || !strings.Contains(err.Error(), "executables over all containers") {
				t.Errorf("Validate disagrees with the CRD: %v", err)
			}
		})
	}
}

func countAll(r v1alpha1.RulesByContainer) int {
	n := 0
	for _, c := range r {
		n += len(c.Executables)
	}
	return n
}
