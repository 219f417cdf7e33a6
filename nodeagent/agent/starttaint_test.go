package agent

import (
	"context"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/execgate/execgate/nodeagent/cgroups"
)

var otherTaint = corev1.Taint{Key: "example.com/other", Value: "x", Effect: corev1.TaintEffectNoExecute}

func taintedNode(name string, taints ...corev1.Taint) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{Taints: taints}}
}

func taintKeys(t *testing.T, kube *kubefake.Clientset, node string) []string {
	t.Helper()
	n, err := kube.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, tn := range n.Spec.Taints {
		keys = append(keys, tn.Key)
	}
	return keys
}

// TestRemoveNodeTaint removes the startup taint and nothing else, does nothing
// on a node without it, and reads again when the taint list changed between
// its read and its patch (the patch's test fails) instead of overwriting the
// other writer's taint.
func TestRemoveNodeTaint(t *testing.T) {
	ctx := context.Background()
	startup := corev1.Taint{Key: StartupTaintKey, Effect: corev1.TaintEffectNoSchedule}

	kube := kubefake.NewClientset(taintedNode("n1", otherTaint, startup), taintedNode("n2", otherTaint))
	if removed, err := RemoveNodeTaint(ctx, kube, "n2", StartupTaintKey); err != nil || removed {
		t.Fatalf("node without the taint: removed %v, err %v", removed, err)
	}
	for _, a := range kube.Actions() {
		if a.GetVerb() == "patch" {
			t.Fatalf("patched a node without the taint: %v", a)
		}
	}

	// Another controller adds a taint once, between the remover's GET and PATCH.
	raced := false
	kube.PrependReactor("patch", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		if !raced {
			raced = true
			n, _ := kube.Tracker().Get(corev1.SchemeGroupVersion.WithResource("nodes"), "", "n1")
			n = n.DeepCopyObject()
			node := n.(*corev1.Node)
			node.Spec.Taints = append(node.Spec.Taints, corev1.Taint{Key: "example.com/late", Effect: corev1.TaintEffectNoSchedule})
			if err := kube.Tracker().Update(corev1.SchemeGroupVersion.WithResource("nodes"), node, ""); err != nil {
				t.Error(err)
			}
		}
		return false, nil, nil
	})
	removed, err := RemoveNodeTaint(ctx, kube, "n1", StartupTaintKey)
	if err != nil || !removed {
		t.Fatalf("removed %v, err %v", removed, err)
	}
	if got, want := taintKeys(t, kube, "n1"), []string{otherTaint.Key, "example.com/late"}; !slices.Equal(got, want) {
		t.Fatalf("taints after removal %v, want %v (the racing writer's taint kept)", got, want)
	}
	if !raced {
		t.Fatal("the race was not exercised")
	}
}

// TestBPFStartupTaintRemovedOnceEnforcing: the node keeps its startup taint
// while the agent has not applied the policy of a pod already bound to it, and
// loses it (only it) once the pod is enforced.
func TestBPFStartupTaintRemovedOnceEnforcing(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	e := n.newEnforcer(t)
	uid, cid := podUID(9), containerID(9)
	pod, ctr := n.mkPod(t, uid, cgroups.QoSBurstable, cid)
	kpod := apiPod("web-9", uid, "web")
	startup := corev1.Taint{Key: StartupTaintKey, Effect: corev1.TaintEffectNoSchedule}
	kube := kubefake.NewClientset(kpod, taintedNode(testNode, startup, otherTaint))
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{WorkloadPolicyResource: "WorkloadPolicyList"}, workloadPolicy(t, 1, "/usr/bin/echo"))

	// The policy list is held back: the pod cannot be enforced yet.
	release := make(chan struct{})
	dyn.PrependReactor("list", "workloadpolicies", func(k8stesting.Action) (bool, runtime.Object, error) {
		<-release
		return false, nil, nil
	})
	a := n.startAgent(t, e, func(o *Options) { o.Backstop = &Backstop{Kube: kube, Dynamic: dyn} })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := &StartupTaintRemover{Kube: kube, NodeName: testNode, Ready: a.EnforcingAll, Log: zaptest.NewLogger(t), Poll: 20 * time.Millisecond}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	time.Sleep(time.Second)
	if got := taintKeys(t, kube, testNode); !slices.Contains(got, StartupTaintKey) {
		t.Fatalf("startup taint removed before the bound pod was enforced: taints %v", got)
	}
	if a.EnforcingAll() {
		t.Fatal("EnforcingAll before the backstop's first list was reconciled")
	}
	close(release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("startup taint not removed within 30s of the policies being listed")
	}
	if _, ok := bindingOf(e, pod.ID); !ok {
		t.Fatal("taint removed, but the pod bound to the node is not enforced")
	}
	assertProtected(t, e, ctr)
	if got := taintKeys(t, kube, testNode); !slices.Equal(got, []string{otherTaint.Key}) {
		t.Fatalf("taints after removal %v, want only %s", got, otherTaint.Key)
	}
}
