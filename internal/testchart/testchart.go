// Package testchart installs the Helm chart's CRDs (deploy/helm/execgate/crds) into a
// test API server, for the packages whose tests run against a real kube-apiserver
// (test/e2e/cluster) without the whole chart: the kubectl plugin, the controller's Learn
// and the agent's node status.
//
// It owns nothing but that fixture, and applies the CRDs exactly as the chart ships them,
// with test/e2e/framework's Applier (server-side apply, then wait until established). It
// must not be imported by non-test code.
package testchart

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"

	"github.com/execgate/execgate/test/e2e/cluster"
	"github.com/execgate/execgate/test/e2e/framework"
)

// InstallCRDs applies every CRD of the chart to the API server of cfg and returns when
// each is established; it fails t otherwise.
func InstallCRDs(ctx context.Context, t testing.TB, cfg *rest.Config) {
	t.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(framework.ChartDir(root), "crds", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRDs found in the chart (%v)", err)
	}
	var crds []*unstructured.Unstructured
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := framework.DecodeManifests(data)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		crds = append(crds, objs...)
	}
	applier, err := framework.NewApplier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := applier.Apply(ctx, crds); err != nil {
		t.Fatalf("install the chart's CRDs: %v", err)
	}
}
