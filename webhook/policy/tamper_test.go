package policy

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
)

// TestTamperPolicyDeleteVisible is issue 14's attack 1 through the policy: whoever
// may delete WorkloadPolicies deleted the one a running Protect pod used, and the
// reconciler unbound the pod on its node at once, silently. Now the running pod
// keeps its binding until it is gone, the policy stays (Terminating, finalizer)
// with a Deleting condition while pods use it, and the deletion is a Warning
// Event and a metric. Pods created after the deletion are not pushed.
func TestTamperPolicyDeleteVisible(t *testing.T) {
	env := newReconcilerEnv(t,
		webhooktest.Policy("web", 1),
		webhooktest.Pod("web-1", "uid-web-1", "web", "node-a"),
	)
	rec := events.NewFakeRecorder(32)
	env.reconciler.Recorder = rec
	ctx := context.Background()
	env.reconcile(t, "web")
	before := webhooktest.Served(t, "execgate_controller_policy_deletions_in_use_total", map[string]string{"namespace": webhooktest.NS, "policy": "web"})

	if err := env.client.Delete(ctx, env.policy(t, "web")); err != nil {
		t.Fatal(err)
	}
	env.reconcile(t, "web")
	pods, _ := env.agents["node-a"].Removals()
	if len(pods) != 0 {
		t.Errorf("deleting the policy unbound running pods %v on node-a", pods)
	}
	var p v1alpha1.WorkloadPolicy
	if err := env.client.Get(ctx, types.NamespacedName{Namespace: webhooktest.NS, Name: "web"}, &p); err != nil {
		t.Fatalf("the policy of a running pod is gone at once: %v", err)
	}
	c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionDeleting)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonPodsStillEnforced {
		t.Errorf("Deleting condition = %+v, want True/%s", c, v1alpha1.ReasonPodsStillEnforced)
	} else {
		t.Logf("condition: %s", c.Message)
	}
	if evs := webhooktest.DrainEvents(rec); !webhooktest.HasEvent(evs, ReasonPolicyDeletedInUse) {
		t.Errorf("events %q lack a Warning %s", evs, ReasonPolicyDeletedInUse)
	}
	if got := webhooktest.Served(t, "execgate_controller_policy_deletions_in_use_total", map[string]string{"namespace": webhooktest.NS, "policy": "web"}) - before; got != 1 {
		t.Errorf("execgate_controller_policy_deletions_in_use_total rose by %v, want 1", got)
	}
	// Reconciling again reports nothing new.
	env.reconcile(t, "web")
	if evs := webhooktest.DrainEvents(rec); webhooktest.HasEvent(evs, ReasonPolicyDeletedInUse) {
		t.Errorf("the deletion was reported twice: %q", evs)
	}

	// The last pod goes: the policy goes, and the node unloads it.
	if err := env.client.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: webhooktest.NS, Name: "web-1"}}); err != nil {
		t.Fatal(err)
	}
	env.reconcile(t, "web")
	if err := env.client.Get(ctx, client.ObjectKey{Namespace: webhooktest.NS, Name: "web"}, &p); err == nil {
		t.Fatalf("policy still there with no pod left: finalizers %v", p.Finalizers)
	}
	env.reconcile(t, "web")
	pods, policies := env.agents["node-a"].Removals()
	if len(pods) != 0 || len(policies) != 1 || policies[0].Name != "web" {
		t.Errorf("node-a removals after the last pod: pods %v, policies %+v; want only the policy", pods, policies)
	}
}

// TestTamperPolicyWeakenVisible: lowering a policy's mode while pods run under
// it (Protect to Monitor) is applied, and said: condition Weakened, a Warning
// Event and execgate_controller_policy_weakened_total. Back in Protect, the
// condition turns False.
func TestTamperPolicyWeakenVisible(t *testing.T) {
	env := newReconcilerEnv(t,
		webhooktest.Policy("web", 1),
		webhooktest.Pod("web-1", "uid-web-1", "web", "node-a"),
	)
	rec := events.NewFakeRecorder(32)
	env.reconciler.Recorder = rec
	ctx := context.Background()
	env.reconcile(t, "web")
	labels := map[string]string{"namespace": webhooktest.NS, "policy": "web", "from": "Protect", "to": "Monitor"}
	before := webhooktest.Served(t, "execgate_controller_policy_weakened_total", labels)

	setMode := func(mode v1alpha1.Mode, generation int64) {
		p := env.policy(t, "web")
		p.Spec.Mode, p.Generation = mode, generation
		if err := env.client.Update(ctx, p); err != nil {
			t.Fatal(err)
		}
		env.reconcile(t, "web")
	}
	setMode(v1alpha1.ModeMonitor, 2)
	c := meta.FindStatusCondition(env.policy(t, "web").Status.Conditions, v1alpha1.ConditionWeakened)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonModeLowered {
		t.Errorf("Weakened condition = %+v, want True/%s", c, v1alpha1.ReasonModeLowered)
	} else {
		t.Logf("condition: %s", c.Message)
	}
	if evs := webhooktest.DrainEvents(rec); !webhooktest.HasEvent(evs, ReasonPolicyWeakened) {
		t.Errorf("events %q lack a Warning %s", evs, ReasonPolicyWeakened)
	}
	if got := webhooktest.Served(t, "execgate_controller_policy_weakened_total", labels) - before; got != 1 {
		t.Errorf("execgate_controller_policy_weakened_total rose by %v, want 1", got)
	}
	if got := env.agents["node-a"].AppliedCalls(); len(got) != 2 || got[1].Policy.Mode.String() != "Monitor" {
		t.Errorf("the lowered mode must still be applied: pushes %d", len(got))
	}

	setMode(v1alpha1.ModeProtect, 3)
	c = meta.FindStatusCondition(env.policy(t, "web").Status.Conditions, v1alpha1.ConditionWeakened)
	if c == nil || c.Status != metav1.ConditionFalse {
		t.Errorf("back in Protect: Weakened = %+v, want False", c)
	}
}

// TestTamperWritableRootCondition is the policy's side of binding's
// TestTamperWritableRootWarns (issue 14's item 9): condition WritableRootFilesystem names
// the Protect pods whose containers have a writable root filesystem, and turns False
// once only read-only pods are left.
func TestTamperWritableRootCondition(t *testing.T) {
	renv := newReconcilerEnv(t, webhooktest.Policy("web", 1), webhooktest.Pod("web-1", "uid-web-1", "web", "node-a"),
		webhooktest.ReadOnlyRoot(webhooktest.Pod("web-2", "uid-web-2", "web", "node-b")))
	renv.reconcile(t, "web")
	c := meta.FindStatusCondition(renv.policy(t, "web").Status.Conditions, v1alpha1.ConditionWritableRootFilesystem)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonWritableRoot || !strings.Contains(c.Message, "web-1") {
		t.Fatalf("WritableRootFilesystem = %+v, want True/%s naming web-1", c, v1alpha1.ReasonWritableRoot)
	}
	t.Logf("condition: %s", c.Message)
	if err := renv.client.Delete(context.Background(), webhooktest.Pod("web-1", "uid-web-1", "web", "node-a")); err != nil {
		t.Fatal(err)
	}
	renv.reconcile(t, "web")
	c = meta.FindStatusCondition(renv.policy(t, "web").Status.Conditions, v1alpha1.ConditionWritableRootFilesystem)
	if c == nil || c.Status != metav1.ConditionFalse {
		t.Fatalf("with only read-only pods left: %+v, want False", c)
	}
}
