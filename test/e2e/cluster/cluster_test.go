package cluster_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/test/e2e/cluster"
)

// TestE2ECluster runs one real control plane and checks what every e2e test relies on.
func TestE2ECluster(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	t.Run("scheduler binds pods to created nodes", func(t *testing.T) { testSchedulesPods(t, c) })
	t.Run("kubeconform validates offline", func(t *testing.T) { testKubeconform(t, c) })
}

// testSchedulesPods proves the control plane is real: the kube-scheduler binary, not
// the test, binds every pod to one of the created nodes.
func testSchedulesPods(t *testing.T, c *cluster.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	nodes, err := c.CreateNodes(ctx, 3)
	if err != nil {
		t.Fatalf("create nodes: %v", err)
	}
	nodeNames := map[string]bool{}
	for _, n := range nodes {
		nodeNames[n.Name] = true
	}
	const namespace = "smoke"
	if err := c.CreateNamespace(ctx, namespace); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := c.Client.CoreV1().Pods(namespace).Create(ctx, testPod(i), metav1.CreateOptions{}); err != nil {
			t.Fatalf("create pod %d: %v", i, err)
		}
	}

	var pods *corev1.PodList
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		pods, err = c.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			if p.Spec.NodeName == "" {
				return false, nil
			}
		}
		return len(pods.Items) == 5, nil
	})
	if err != nil {
		t.Fatalf("pods not scheduled: %v", err)
	}
	for _, p := range pods.Items {
		if !nodeNames[p.Spec.NodeName] {
			t.Errorf("pod %s bound to unknown node %q", p.Name, p.Spec.NodeName)
		}
	}
	// Without kube-controller-manager nothing taints the heartbeat-less nodes.
	for name := range nodeNames {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get node %s: %v", name, err)
		}
		if len(n.Spec.Taints) != 0 {
			t.Errorf("node %s has taints %v; want none", name, n.Spec.Taints)
		}
	}
}

func testKubeconform(t *testing.T, c *cluster.Cluster) {
	binDir, err := cluster.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(binDir, "kubeconform")); err != nil {
		testenv.Need(t, cluster.RequireE2EEnv, fmt.Sprintf("kubeconform (missing in %s: run `make tools`)", binDir))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	createWidgetCRD(ctx, t, c)
	schemas := t.TempDir()
	// The aggregated OpenAPI document picks up a new CRD asynchronously.
	err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if err := c.WriteKubeconformSchemas(ctx, schemas); err != nil {
			return false, err
		}
		_, err := os.Stat(filepath.Join(schemas, "widget-e2e-v1.json"))
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("write schemas including the Widget CRD: %v", err)
	}

	tests := []struct {
		name, manifest string
		wantErr        string // substring of kubeconform's output; "" = valid
	}{
		{name: "valid deployment", manifest: validDeployment},
		{name: "unknown field", manifest: strings.Replace(validDeployment, "replicas: 2", "replicas: 2\n  replicaz: 3", 1), wantErr: "replicaz"},
		{name: "wrong type", manifest: strings.Replace(validDeployment, "replicas: 2", "replicas: two", 1), wantErr: "replicas"},
		{name: "valid custom resource", manifest: validWidget},
		{name: "custom resource unknown field", manifest: strings.Replace(validWidget, "size: 3", "size: 3\n  colour: red", 1), wantErr: "colour"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "manifest.yaml")
			if err := os.WriteFile(file, []byte(tt.manifest), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := cluster.Kubeconform(ctx, schemas, file)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("want error mentioning %q, got valid:\n%s", tt.wantErr, out)
			case tt.wantErr != "" && !strings.Contains(string(out), tt.wantErr):
				t.Fatalf("want error mentioning %q, got:\n%s", tt.wantErr, out)
			}
		})
	}
}

// createWidgetCRD installs a CRD through the dynamic client, as a chart's CRDs would be.
func createWidgetCRD(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(widgetCRD), &obj); err != nil {
		t.Fatalf("decode CRD: %v", err)
	}
	client, err := dynamic.NewForConfig(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	if _, err := client.Resource(crds).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create CRD: %v", err)
	}
}

// TestE2EClusterStopRemovesEverything checks that Stop leaves nothing behind.
func TestE2EClusterStopRemovesEverything(t *testing.T) {
	cluster.RequireE2E(t)
	c, err := cluster.New(context.Background(), cluster.Options{})
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	dir := c.Dir
	if err := c.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("cluster directory %s still exists after Stop (stat: %v)", dir, err)
	}
	if _, err := c.Client.Discovery().ServerVersion(); err == nil {
		t.Errorf("API server still answers after Stop")
	}
}

// TestE2EClusterStartFailureCleansUp checks that a component that cannot start is
// reported with its log and that nothing of the half-started cluster stays behind.
func TestE2EClusterStartFailureCleansUp(t *testing.T) {
	cluster.RequireE2E(t)
	_, err := cluster.New(context.Background(), cluster.Options{ExtraAPIServerArgs: []string{"--no-such-flag"}})
	if err == nil || !strings.Contains(err.Error(), "kube-apiserver exited early") || !strings.Contains(err.Error(), "no-such-flag") {
		t.Fatalf("want kube-apiserver start error quoting its log, got %v", err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("execgate-e2e-cluster-%d-*", os.Getpid())))
	if len(leftovers) != 0 {
		t.Errorf("cluster directories left behind: %v", leftovers)
	}
}

func testPod(i int) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%d", i)},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "example.invalid/app:1",
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceCPU: resource.MustParse("100m"),
				}},
			}},
		},
	}
}

const validDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
  creationTimestamp: null
spec:
  replicas: 2
  selector:
    matchLabels: {app: app}
  template:
    metadata:
      labels: {app: app}
    spec:
      containers:
      - name: app
        image: example.invalid/app:1
        ports:
        - containerPort: 8080
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
`

const widgetCRD = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.e2e.execgate.io
spec:
  group: e2e.execgate.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
`

const validWidget = `apiVersion: e2e.execgate.io/v1
kind: Widget
metadata:
  name: w
spec:
  size: 3
`
