package policy

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
)

type reconcilerEnv struct {
	client       client.Client
	statusWrites atomic.Int32
	reconciler   *PolicyReconciler
	agents       map[string]*webhooktest.RecordingBackend
}

func newReconcilerEnv(t *testing.T, objs ...client.Object) *reconcilerEnv {
	t.Helper()
	fleet := webhooktest.NewFleet(t)
	env := &reconcilerEnv{agents: map[string]*webhooktest.RecordingBackend{}}
	for _, n := range []string{"node-a", "node-b", "node-c"} {
		env.agents[n] = fleet.Start(t, n, 0)
	}
	env.client = fake.NewClientBuilder().WithScheme(webhooktest.Scheme(t)).
		WithStatusSubresource(&v1alpha1.WorkloadPolicy{}).
		WithObjects(objs...).
		WithInterceptorFuncs(interceptor.Funcs{
			SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
				env.statusWrites.Add(1)
				return c.SubResource(sub).Patch(ctx, obj, patch, opts...)
			},
			SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
				env.statusWrites.Add(1)
				return c.SubResource(sub).Update(ctx, obj, opts...)
			},
		}).Build()
	env.reconciler = &PolicyReconciler{Client: env.client, Agents: fleet.Pool(t, nil), PushTimeout: 2 * time.Second, Log: zaptest.NewLogger(t)}
	return env
}

func (env *reconcilerEnv) reconcile(t *testing.T, name string) reconcile.Result {
	t.Helper()
	before := env.statusWrites.Load()
	res, err := env.reconciler.Reconcile(context.Background(), reconcile.Request{NamespacedName: types.NamespacedName{Namespace: webhooktest.NS, Name: name}})
	if err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	if n := env.statusWrites.Load() - before; n > 1 {
		t.Fatalf("%d status writes in one reconcile, want at most 1", n)
	}
	return res
}

func (env *reconcilerEnv) policy(t *testing.T, name string) *v1alpha1.WorkloadPolicy {
	t.Helper()
	var p v1alpha1.WorkloadPolicy
	if err := env.client.Get(context.Background(), types.NamespacedName{Namespace: webhooktest.NS, Name: name}, &p); err != nil {
		t.Fatal(err)
	}
	return &p
}

func pushedUIDs(b *webhooktest.RecordingBackend) []string {
	var out []string
	for _, c := range b.AppliedCalls() {
		out = append(out, c.Pod.UID)
	}
	return out
}

func TestPolicyReconcilerPushesOnlyToNodesRunningItsPods(t *testing.T) {
	finished := webhooktest.Pod("web-done", "uid-web-done", "web", "node-c")
	finished.Status.Phase = corev1.PodSucceeded
	env := newReconcilerEnv(t,
		webhooktest.Policy("web", 2),
		webhooktest.Pod("web-1", "uid-web-1", "web", "node-a"),
		webhooktest.Pod("web-2", "uid-web-2", "web", "node-a"),
		webhooktest.Pod("web-3", "uid-web-3", "web", "node-b"),
		finished,
		webhooktest.Pod("other", "uid-other", "other", "node-c"),
	)

	env.reconcile(t, "web")
	if got := pushedUIDs(env.agents["node-a"]); len(got) != 2 {
		t.Errorf("node-a pushes %v, want web-1 and web-2", got)
	}
	if got := pushedUIDs(env.agents["node-b"]); len(got) != 1 || got[0] != "uid-web-3" {
		t.Errorf("node-b pushes %v, want web-3", got)
	}
	if got := pushedUIDs(env.agents["node-c"]); len(got) != 0 {
		t.Errorf("node-c runs no live pod of the policy but got pushes %v", got)
	}
	if n := env.statusWrites.Load(); n != 1 {
		t.Errorf("status writes = %d, want 1", n)
	}
	st := env.policy(t, "web").Status
	if st.ObservedGeneration != 2 || st.PodsTotal != 3 || st.PodsInForce != 3 || st.NodesInForce != 2 || st.FailingNodesTotal != 0 || len(st.FailingNodes) != 0 {
		t.Errorf("status = %+v", st)
	}
	if !meta.IsStatusConditionTrue(st.Conditions, v1alpha1.ConditionReady) || !meta.IsStatusConditionFalse(st.Conditions, v1alpha1.ConditionDegraded) {
		t.Errorf("conditions = %+v", st.Conditions)
	}

	// Nothing changed (a pod event requeues the policy): no push, no status write.
	env.reconcile(t, "web")
	if n := env.statusWrites.Load(); n != 1 {
		t.Errorf("status writes after an idle reconcile = %d, want still 1", n)
	}
	if calls := env.agents["node-b"].AppliedCalls(); len(calls) != 1 {
		t.Errorf("node-b calls after an idle reconcile = %d, want still 1: acknowledged pods are not pushed again", len(calls))
	}

	// A new generation reaches the same nodes, and only them.
	p := env.policy(t, "web")
	p.Generation = 3
	p.Spec.Mode = v1alpha1.ModeMonitor
	if err := env.client.Update(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	env.reconcile(t, "web")
	calls := env.agents["node-b"].AppliedCalls()
	if len(calls) != 2 || calls[1].Policy.Version != 3 {
		t.Errorf("node-b calls = %d, last version %d; want 2 calls, the last at generation 3", len(calls), calls[len(calls)-1].Policy.Version)
	}
	if got := pushedUIDs(env.agents["node-c"]); len(got) != 0 {
		t.Errorf("node-c got %v after an update", got)
	}
	if st := env.policy(t, "web").Status; st.ObservedGeneration != 3 || st.Mode != v1alpha1.ModeMonitor {
		t.Errorf("status after update = %+v", st)
	}
}

func TestPolicyReconcilerReportsFailingNodes(t *testing.T) {
	env := newReconcilerEnv(t,
		webhooktest.Policy("web", 1),
		webhooktest.Pod("web-1", "uid-web-1", "web", "node-a"),
		webhooktest.Pod("web-x", "uid-web-x", "web", "node-x"), // no agent there
		webhooktest.Pod("web-pending", "uid-web-pending", "web", ""),
	)
	res := env.reconcile(t, "web")
	if res.RequeueAfter == 0 {
		t.Error("no requeue with a failing node")
	}
	st := env.policy(t, "web").Status
	if st.PodsTotal != 3 || st.PodsInForce != 1 || st.NodesInForce != 1 || st.FailingNodesTotal != 1 {
		t.Errorf("status = %+v", st)
	}
	if len(st.FailingNodes) != 1 || st.FailingNodes[0].Node != "node-x" || st.FailingNodes[0].Reason == "" {
		t.Errorf("failing nodes = %+v", st.FailingNodes)
	}
	if !meta.IsStatusConditionTrue(st.Conditions, v1alpha1.ConditionDegraded) || !meta.IsStatusConditionFalse(st.Conditions, v1alpha1.ConditionReady) {
		t.Errorf("conditions = %+v", st.Conditions)
	}
	since := st.FailingNodes[0].LastTransitionTime
	env.reconcile(t, "web")
	if got := env.policy(t, "web").Status.FailingNodes[0].LastTransitionTime; !got.Equal(&since) {
		t.Errorf("lastTransitionTime moved from %v to %v while the reason stayed", since, got)
	}
}

func TestPolicyReconcilerInvalidPolicyIsNotPushed(t *testing.T) {
	bad := webhooktest.Policy("web", 1)
	bad.Spec.RulesByContainer["app"] = v1alpha1.ContainerRules{Executables: []string{"no-slash"}}
	env := newReconcilerEnv(t, bad, webhooktest.Pod("web-1", "uid-web-1", "web", "node-a"))
	env.reconcile(t, "web")
	if got := pushedUIDs(env.agents["node-a"]); len(got) != 0 {
		t.Errorf("invalid policy pushed: %v", got)
	}
	c := meta.FindStatusCondition(env.policy(t, "web").Status.Conditions, v1alpha1.ConditionReady)
	if c == nil || c.Reason != v1alpha1.ReasonInvalidPolicy {
		t.Errorf("Ready = %+v, want reason InvalidPolicy", c)
	}
}

func TestPolicyReconcilerDeleteRemovesFromItsNodes(t *testing.T) {
	env := newReconcilerEnv(t,
		webhooktest.Policy("web", 1),
		webhooktest.Pod("web-1", "uid-web-1", "web", "node-a"),
		webhooktest.Pod("other", "uid-other", "other", "node-c"),
	)
	env.reconcile(t, "web")
	if err := env.client.Delete(context.Background(), env.policy(t, "web")); err != nil {
		t.Fatal(err)
	}
	env.reconcile(t, "web") // kept while web-1 runs (TestTamperPolicyDeleteVisible)
	if err := env.client.Delete(context.Background(), webhooktest.Pod("web-1", "uid-web-1", "web", "node-a")); err != nil {
		t.Fatal(err)
	}
	env.reconcile(t, "web") // finalizer removed
	env.reconcile(t, "web") // gone: unloaded where it was sent
	pods, policies := env.agents["node-a"].Removals()
	if len(pods) != 0 || len(policies) != 1 || policies[0].Name != "web" {
		t.Errorf("node-a removals: pods %v, policies %+v", pods, policies)
	}
	for _, n := range []string{"node-b", "node-c"} {
		if pods, policies := env.agents[n].Removals(); len(pods)+len(policies) != 0 {
			t.Errorf("%s got removals %v %v", n, pods, policies)
		}
	}
}
