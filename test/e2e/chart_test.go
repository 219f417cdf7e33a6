package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/execgate/execgate/test/e2e/cluster"
	"github.com/execgate/execgate/test/e2e/framework"
)

// chartValueSets are the configurations the chart must render, validate and apply.
var chartValueSets = []struct {
	name string
	set  []string
}{
	{"defaults", nil},
	{"one replica, no leader election, cgroupfs nodes", []string{"controller.replicas=1", "controller.leaderElect=false", "agent.cgroupDriver=cgroupfs"}},
	{"protect the webhook path with a short timeout", []string{"webhook.timeoutSeconds=1", "controller.pushTimeout=100ms"}},
}

// TestChart: `helm lint` passes, `helm template` output passes kubeconform -strict
// against the harness API server's own schemas (execgate's CRDs included), and is
// applied server-side to that API server without errors, for each value set.
func TestChart(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	binDir, err := cluster.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	helm := filepath.Join(binDir, "helm")
	for _, tool := range []string{"helm", "kubeconform"} {
		if _, err := os.Stat(filepath.Join(binDir, tool)); err != nil {
			t.Fatalf("%s missing in %s: run `make tools`", tool, binDir)
		}
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	chart := framework.ChartDir(root)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	t.Run("helm lint", func(t *testing.T) {
		out, err := exec.CommandContext(ctx, helm, "lint", "--strict", chart).CombinedOutput()
		if err != nil {
			t.Fatalf("helm lint --strict: %v\n%s", err, out)
		}
	})

	if err := c.CreateNamespace(ctx, framework.Namespace); err != nil {
		t.Fatal(err)
	}
	ap, err := framework.NewApplier(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	schemas := t.TempDir()
	for i, vs := range chartValueSets {
		t.Run(vs.name, func(t *testing.T) {
			out, err := framework.RenderChart(ctx, helm, chart, framework.Release, framework.Namespace, vs.set...)
			if err != nil {
				t.Fatal(err)
			}
			objs, err := framework.DecodeManifests(out)
			if err != nil {
				t.Fatal(err)
			}
			var crds, rest []*unstructured.Unstructured
			for _, o := range objs {
				if o.GetKind() == "CustomResourceDefinition" {
					crds = append(crds, o)
				} else {
					rest = append(rest, o)
				}
			}
			if len(crds) == 0 || len(rest) == 0 {
				t.Fatalf("chart rendered %d CRDs and %d other objects", len(crds), len(rest))
			}
			if err := ap.Apply(ctx, crds); err != nil {
				t.Fatalf("apply CRDs: %v", err)
			}
			if i == 0 {
				writeSchemas(ctx, t, c, schemas, crds)
			}
			file := filepath.Join(t.TempDir(), "rendered.yaml")
			if err := os.WriteFile(file, out, 0o644); err != nil {
				t.Fatal(err)
			}
			if res, err := cluster.Kubeconform(ctx, schemas, file); err != nil {
				t.Fatalf("kubeconform: %v", err)
			} else {
				t.Logf("kubeconform: %s", strings.TrimSpace(string(res)))
			}
			if err := ap.Apply(ctx, rest); err != nil {
				t.Fatalf("server-side apply of the rendered chart: %v", err)
			}
		})
	}
}

// writeSchemas waits until the API server's OpenAPI document includes every CRD
// (it is aggregated asynchronously) and writes kubeconform schemas from it.
func writeSchemas(ctx context.Context, t *testing.T, c *cluster.Cluster, dir string, crds []*unstructured.Unstructured) {
	t.Helper()
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if err := c.WriteKubeconformSchemas(ctx, dir); err != nil {
			return false, err
		}
		for _, crd := range crds {
			kind, _, _ := unstructured.NestedString(crd.Object, "spec", "names", "kind")
			group, _, _ := unstructured.NestedString(crd.Object, "spec", "group")
			versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
			for _, v := range versions {
				name, _, _ := unstructured.NestedString(v.(map[string]any), "name")
				file := strings.ToLower(kind) + "-" + strings.Split(group, ".")[0] + "-" + name + ".json"
				if _, err := os.Stat(filepath.Join(dir, file)); err != nil {
					return false, nil
				}
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("schemas including execgate's CRDs: %v", err)
	}

}
