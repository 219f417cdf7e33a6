package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/test/e2e/cluster"
	"github.com/execgate/execgate/test/e2e/framework"
)

// TestTamperVAPRefusesLabelChange is issue 14's attack 1 at the API server: a
// tenant who may patch pods removes or changes the execgate.io/policy label of
// a bound pod. The chart's ValidatingAdmissionPolicy (applied as rendered, to a
// real kube-apiserver) must refuse that, for a patch and an update alike, and
// let through what is legitimate: other labels, a pod not bound yet, and the
// principals listed in policyLabelGuard.exemptUsers / exemptGroups.
func TestTamperVAPRefusesLabelChange(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	binDir, err := cluster.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out, err := framework.RenderChart(ctx, filepath.Join(binDir, "helm"), framework.ChartDir(root), framework.Release, framework.Namespace,
		"policyLabelGuard.exemptUsers={ops-admin}", "policyLabelGuard.exemptGroups={execgate:label-admins}")
	if err != nil {
		t.Fatal(err)
	}
	objs, err := framework.DecodeManifests(out)
	if err != nil {
		t.Fatal(err)
	}
	var guard []*unstructured.Unstructured
	for _, o := range objs {
		if strings.HasPrefix(o.GetKind(), "ValidatingAdmissionPolicy") {
			guard = append(guard, o)
		}
	}
	t.Logf("the chart renders %d ValidatingAdmissionPolicy objects", len(guard))
	ap, err := framework.NewApplier(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := ap.Apply(ctx, guard); err != nil {
		t.Fatal(err)
	}

	const ns = "tenant"
	if err := c.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	// Every identity below may update and patch pods in the namespace: RBAC
	// lets them, only the admission policy can stop them.
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "pod-editor"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "update", "patch"}}}}
	if _, err := c.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pod-editors"},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "pod-editor"},
		Subjects: []rbacv1.Subject{
			{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "tenant"},
			{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "ops-admin"},
			{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "execgate:label-admins"},
		}}
	if _, err := c.Client.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	clientFor := func(id cluster.Identity) kubernetes.Interface {
		cfg, err := c.RESTConfigFor(id)
		if err != nil {
			t.Fatal(err)
		}
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return cs
	}
	tenant := clientFor(cluster.Identity{User: "tenant"})
	opsAdmin := clientFor(cluster.Identity{User: "ops-admin"})
	groupAdmin := clientFor(cluster.Identity{User: "someone", Groups: []string{"execgate:label-admins"}})

	seq := 0
	newPod := func(node string) *corev1.Pod {
		seq++
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("web-%d", seq), Labels: map[string]string{v1alpha1.PolicyLabel: "web", "app": "web"}},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		}
		created, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return created
	}
	removeByPatch := func(cs kubernetes.Interface, pod *corev1.Pod) error {
		_, err := cs.CoreV1().Pods(ns).Patch(ctx, pod.Name, types.MergePatchType, []byte(`{"metadata":{"labels":{"execgate.io/policy":null}}}`), metav1.PatchOptions{})
		return err
	}
	setByUpdate := func(value string) func(kubernetes.Interface, *corev1.Pod) error {
		return func(cs kubernetes.Interface, pod *corev1.Pod) error {
			cur, err := cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			cur.Labels[v1alpha1.PolicyLabel] = value
			_, err = cs.CoreV1().Pods(ns).Update(ctx, cur, metav1.UpdateOptions{})
			return err
		}
	}
	otherLabel := func(cs kubernetes.Interface, pod *corev1.Pod) error {
		_, err := cs.CoreV1().Pods(ns).Patch(ctx, pod.Name, types.MergePatchType, []byte(`{"metadata":{"labels":{"app":"web2"},"annotations":{"a":"b"}}}`), metav1.PatchOptions{})
		return err
	}

	// The policy takes effect once the API server's admission informers see
	// it: the first refused case waits for that, never longer than 20 s.
	refused := []struct {
		name   string
		client kubernetes.Interface
		change func(kubernetes.Interface, *corev1.Pod) error
	}{
		{"tenant removes the label (kubectl label pod X execgate.io/policy-)", tenant, removeByPatch},
		{"tenant relabels to a Monitor policy by update", tenant, setByUpdate("lax")},
		{"cluster-admin (system:masters) not listed removes the label", c.Client, removeByPatch},
	}
	for i, tc := range refused {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			pod := newPod("node-0")
			deadline := time.Now().Add(20 * time.Second)
			var err error
			for {
				err = tc.change(tc.client, pod)
				if err != nil || i > 0 || time.Now().After(deadline) {
					break
				}
				// Not enforced yet: put the label back and try again. The guard may
				// take effect between the change and the put-back, which it then
				// refuses: try again on a fresh pod.
				if err := setByUpdate("web")(c.Client, pod); err != nil {
					if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
						t.Fatal(err)
					}
					pod = newPod("node-0")
				}
				time.Sleep(200 * time.Millisecond)
			}
			if err == nil {
				cur, _ := c.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
				t.Fatalf("the change went through: the bound pod's labels are now %v", cur.Labels)
			}
			if !apierrors.IsInvalid(err) && !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), v1alpha1.PolicyLabel) {
				t.Fatalf("refused, but not by the label guard: %v", err)
			}
			t.Logf("refused: %v", err)
			cur, err := c.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
			if err != nil || cur.Labels[v1alpha1.PolicyLabel] != "web" {
				t.Fatalf("label after the refused change: %v (%v)", cur.Labels, err)
			}
		})
	}

	allowed := []struct {
		name   string
		node   string
		client kubernetes.Interface
		change func(kubernetes.Interface, *corev1.Pod) error
	}{
		{"tenant changes another label and an annotation", "node-0", tenant, otherLabel},
		{"tenant removes the label before the pod is bound", "", tenant, removeByPatch},
		{"exempt user removes the label", "node-0", opsAdmin, removeByPatch},
		{"member of an exempt group relabels", "node-0", groupAdmin, setByUpdate("lax")},
	}
	for _, tc := range allowed {
		t.Run("allowed: "+tc.name, func(t *testing.T) {
			if err := tc.change(tc.client, newPod(tc.node)); err != nil {
				t.Fatalf("refused: %v", err)
			}
		})
	}
}
