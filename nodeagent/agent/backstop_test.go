package agent

import (
	"context"
	"errors"
	"testing"
	"time"

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
	"github.com/execgate/execgate/nodeagent/enforcer"
	"github.com/execgate/execgate/nodeagent/podpolicy"
)

func workloadPolicy(t *testing.T, generation int64, executables ...string) *unstructured.Unstructured {
	t.Helper()
	wp := &v1alpha1.WorkloadPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "WorkloadPolicy"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: "policy-uid-1", Generation: generation},
		Spec: v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.ModeProtect,
			RulesByContainer: v1alpha1.RulesByContainer{"app": {Executables: executables}}},
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(wp)
	if err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: obj}
}

// TestBPFBackstop: a labelled local pod that was never pushed gets its
// policy from the API server; a policy update loads the new generation; the
// container name comes from the pod status; pod deletion unloads it all.
func TestBPFBackstop(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	e := n.newEnforcer(t)
	uid, cid := podUID(6), containerID(6)
	pod, ctr := n.mkPod(t, uid, cgroups.QoSBurstable, cid)

	kpod := apiPod("web-1", uid, "web")
	other := kpod.DeepCopy()
	other.Name, other.UID, other.Spec.NodeName = "elsewhere", types.UID(podUID(7)), "node-b"
	kube := kubefake.NewClientset(kpod, other)
	scheme := runtime.NewScheme()
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme,
		map[schema.GroupVersionResource]string{WorkloadPolicyResource: "WorkloadPolicyList"}, workloadPolicy(t, 1, "/usr/bin/echo"))
	a := n.startAgent(t, e, func(o *Options) { o.Backstop = &Backstop{Kube: kube, Dynamic: dyn} })
	ctx := context.Background()

	waitFor(t, "pod bound from the API server", func() bool { _, ok := bindingOf(e, pod.ID); return ok })
	assertProtected(t, e, ctr)
	if st, _ := a.Status(ctx); len(st.Pods) != 1 || st.Pods[0].Name != "web-1" {
		t.Fatalf("only the local pod may be loaded: %v", st.Pods)
	}

	if _, err := dyn.Resource(WorkloadPolicyResource).Namespace("ns").Update(ctx, workloadPolicy(t, 2, "/usr/bin/echo", "/usr/bin/id"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "generation 2 loaded", func() bool { v, _ := e.PolicyVersionOf("ns/web"); return v == 2 })
	if _, err := ctr.Run("/usr/bin/id"); err != nil {
		t.Fatalf("id allowed by generation 2: %v", err)
	}

	kpod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", ContainerID: "containerd://" + cid}}
	if _, err := kube.CoreV1().Pods("ns").UpdateStatus(ctx, kpod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "container bound by name", func() bool { b, ok := bindingOf(e, ctr.ID); return ok && b.Container == "app" })
	if b, _ := bindingOf(e, pod.ID); b.Container != enforcer.UnionContainer {
		t.Fatalf("pod binding: %+v", b)
	}

	if err := kube.CoreV1().Pods("ns").Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod removed", func() bool { return len(e.Bindings()) == 0 && len(e.Policies()) == 0 })
	assertNoEntries(t, e)
	if st, _ := a.Status(ctx); len(st.Pods) != 0 {
		t.Fatalf("pods left: %v", st.Pods)
	}
}

// TestBPFDeletedPodsConverge: a push that arrives after its pod's deletion is
// refused, and a waiting pod whose deletion event was missed is forgotten once
// the API server confirms it is gone, while a waiting pod that exists is kept.
func TestBPFDeletedPodsConverge(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	e := n.newEnforcer(t)
	exists := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "slow-start", UID: types.UID(podUID(21))},
		Spec:       corev1.PodSpec{NodeName: testNode},
	}
	kube := kubefake.NewClientset(exists)
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{WorkloadPolicyResource: "WorkloadPolicyList"})
	a := n.startAgent(t, e, func(o *Options) { o.Backstop = &Backstop{Kube: kube, Dynamic: dyn}; o.GCInterval = time.Millisecond })
	ctx := context.Background()

	for _, pp := range []*podpolicy.PodPolicy{
		podPolicy(podUID(21), cgroups.QoSBurstable, protectApp(1)),
		podPolicy(podUID(22), cgroups.QoSBurstable, protectApp(1)), // its deletion event was missed
	} {
		pp.Pod.Namespace, pp.Pod.Name = "ns", map[string]string{podUID(21): "slow-start", podUID(22): "missed"}[pp.Pod.UID]
		if _, _, err := a.ApplyPodPolicy(ctx, pp); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(5 * time.Millisecond) // both now waited longer than two GC periods
	a.verifyWaitingPods(ctx)
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Pods) != 1 || st.Pods[0].Name != "slow-start" {
		t.Fatalf("after verification the agent holds %v, want only slow-start", st.Pods)
	}

	late := podPolicy(podUID(22), cgroups.QoSBurstable, protectApp(2))
	if _, _, err := a.ApplyPodPolicy(ctx, late); !errors.Is(err, podpolicy.ErrConflict) {
		t.Fatalf("a push for a deleted pod must be refused with ErrConflict, got %v", err)
	}
}
