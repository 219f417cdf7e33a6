package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/podpolicy"
)

// namedPolicy is a WorkloadPolicy "name" in namespace ns allowing echo to
// container "app".
func namedPolicy(t *testing.T, name string, mode v1alpha1.Mode) *unstructured.Unstructured {
	t.Helper()
	wp := &v1alpha1.WorkloadPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "WorkloadPolicy"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(name + "-uid"), Generation: 1},
		Spec: v1alpha1.WorkloadPolicySpec{Mode: mode,
			RulesByContainer: v1alpha1.RulesByContainer{"app": {Executables: []string{"/usr/bin/echo"}}}},
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(wp)
	if err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: obj}
}

// counterValue sums the samples of the counter family name whose labels
// include want.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue next
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// TestTamperLabelRemovalKeepsBinding is issue 14's attack 1 on the node:
// whoever may patch the pod removes its execgate.io/policy label, or points it
// at a Monitor policy, and the backstop used to unbind (or rebind) the running
// Protect pod, after which it ran anything. The pod must keep the policy it
// was bound with until it is gone, and the change must be loud: a Warning
// Event on the pod and execgate_agent_policy_label_changes_total.
func TestTamperLabelRemovalKeepsBinding(t *testing.T) {
	tests := []struct {
		name   string
		labels map[string]string
		change string
	}{
		{"label removed", map[string]string{"app": "web"}, "removed"},
		{"relabelled to a Monitor policy", map[string]string{v1alpha1.PolicyLabel: "lax"}, "changed"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := newTestNodeEnv(t, cgroups.DriverSystemd)
			e := n.newEnforcer(t)
			uid, cid := podUID(40+i), containerID(40+i)
			pod, ctr := n.mkPod(t, uid, cgroups.QoSBurstable, cid)
			kpod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-1", UID: types.UID(uid), Labels: map[string]string{v1alpha1.PolicyLabel: "web"}},
				Spec:       corev1.PodSpec{NodeName: testNode, Containers: []corev1.Container{{Name: "app"}}},
				Status: corev1.PodStatus{QOSClass: corev1.PodQOSBurstable, Phase: corev1.PodRunning,
					ContainerStatuses: []corev1.ContainerStatus{{Name: "app", ContainerID: "containerd://" + cid}}},
			}
			kube := kubefake.NewClientset(kpod)
			dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
				map[schema.GroupVersionResource]string{WorkloadPolicyResource: "WorkloadPolicyList"},
				namedPolicy(t, "web", v1alpha1.ModeProtect), namedPolicy(t, "lax", v1alpha1.ModeMonitor))
			reg := prometheus.NewRegistry()
			a := n.startAgent(t, e, func(o *Options) { o.Backstop = &Backstop{Kube: kube, Dynamic: dyn}; o.Registry = reg })
			ctx := context.Background()
			waitFor(t, "container bound from the API server", func() bool { b, ok := bindingOf(e, ctr.ID); return ok && b.Container == "app" })
			assertProtected(t, e, ctr)

			// The attack: `kubectl label pod web-1 execgate.io/policy-` (or =lax).
			kpod.Labels = tc.labels
			if _, err := kube.CoreV1().Pods("ns").Update(ctx, kpod, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			labelChanges := func() float64 {
				return counterValue(t, reg, "execgate_agent_policy_label_changes_total",
					map[string]string{"namespace": "ns", "policy": "ns/web", "change": tc.change})
			}
			// Either outcome of the backstop's reconcile ends the wait: the old
			// code unbinds (or rebinds to ns/lax), the fixed one counts.
			deadline := time.Now().Add(10 * time.Second)
			for labelChanges() == 0 && time.Now().Before(deadline) {
				if b, ok := bindingOf(e, pod.ID); !ok || b.Policy != "ns/web" {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			if b, ok := bindingOf(e, pod.ID); !ok || b.Policy != "ns/web" {
				t.Errorf("after the label change the pod cgroup is bound %v (%+v), want ns/web", ok, b)
			}
			if b, ok := bindingOf(e, ctr.ID); !ok || b.Policy != "ns/web" || b.Container != "app" {
				t.Errorf("after the label change the container cgroup is bound %v (%+v), want ns/web app", ok, b)
			}
			out, err := ctr.Run("/usr/bin/id")
			if err == nil {
				t.Errorf("id ran in the Protect container after the label change: %q", out)
			} else {
				assertDenied(t, e.AttachMode(), out, err)
			}
			if got := labelChanges(); got != 1 {
				t.Errorf("execgate_agent_policy_label_changes_total{change=%q} = %v, want 1", tc.change, got)
			}
			waitFor(t, "a Warning Event on the pod", func() bool {
				list, err := kube.EventsV1().Events("ns").List(ctx, metav1.ListOptions{})
				if err != nil {
					return false
				}
				for _, ev := range list.Items {
					if ev.Regarding.Name == "web-1" && ev.Type == corev1.EventTypeWarning && ev.Reason == "PolicyLabelChanged" {
						t.Logf("event: %s", ev.Note)
						return true
					}
				}
				return false
			})

			// The controller follows the label and pushes the new policy: the
			// agent refuses to rebind the running pod.
			lax := protectApp(1)
			lax.Name, lax.UID, lax.Mode = "lax", "lax-uid", podpolicy.ModeMonitor
			if _, _, err := a.ApplyPodPolicy(ctx, podPolicy(uid, cgroups.QoSBurstable, lax)); !errors.Is(err, podpolicy.ErrConflict) {
				t.Errorf("a push of another policy for the bound pod: err = %v, want ErrConflict", err)
			}
			if b, ok := bindingOf(e, pod.ID); !ok || b.Policy != "ns/web" {
				t.Errorf("after the refused push the pod cgroup is bound %v (%+v), want ns/web", ok, b)
			}

			// A resync (or any other update) must not report it again.
			kpod.Annotations = map[string]string{"touched": "1"}
			if _, err := kube.CoreV1().Pods("ns").Update(ctx, kpod, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)
			if got := labelChanges(); got != 1 {
				t.Errorf("after another update the counter is %v, want still 1", got)
			}

			// Gone for good: only the pod's deletion unbinds it.
			if err := kube.CoreV1().Pods("ns").Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "pod removed", func() bool { return len(e.Bindings()) == 0 && len(e.Policies()) == 0 })
		})
	}
}
