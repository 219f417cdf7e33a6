package webhook

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/execgate/execgate/api/v1alpha1"
)

// served is the value of the controller's metric name with labels, as served.
func served(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
					continue next
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

func drainEvents(rec *events.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func hasEvent(evs []string, reason string) bool {
	for _, e := range evs {
		if strings.Contains(e, " "+reason+" ") {
			return true
		}
	}
	return false
}

// TestTamperPolicyDeleteVisible is issue 14's attack 1 through the policy: whoever
// may delete WorkloadPolicies deleted the one a running Protect pod used, and the
// reconciler unbound the pod on its node at once, silently. Now the running pod
// keeps its binding until it is gone, the policy stays (Terminating, finalizer)
// with a Deleting condition while pods use it, and the deletion is a Warning
// Event and a metric. Pods created after the deletion are not pushed.
func TestTamperPolicyDeleteVisible(t *testing.T) {
	env := newReconcilerEnv(t,
		testPolicy("web", 1),
		testPod("web-1", "uid-web-1", "web", "node-a"),
	)
	rec := events.NewFakeRecorder(32)
	env.reconciler.Recorder = rec
	ctx := context.Background()
	env.reconcile(t, "web")
	before := served(t, "execgate_controller_policy_deletions_in_use_total", map[string]string{"namespace": testNS, "policy": "web"})

	if err := env.client.Delete(ctx, env.policy(t, "web")); err != nil {
		t.Fatal(err)
	}
	env.reconcile(t, "web")
	pods, _ := env.agents["node-a"].removals()
	if len(pods) != 0 {
		t.Errorf("deleting the policy unbound running pods %v on node-a", pods)
	}
	var p v1alpha1.WorkloadPolicy
	if err := env.client.Get(ctx, types.NamespacedName{Namespace: testNS, Name: "web"}, &p); err != nil {
		t.Fatalf("the policy of a running pod is gone at once: %v", err)
	}
	c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionDeleting)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonPodsStillEnforced {
		t.Errorf("Deleting condition = %+v, want True/%s", c, v1alpha1.ReasonPodsStillEnforced)
	} else {
		t.Logf("condition: %s", c.Message)
	}
	if evs := drainEvents(rec); !hasEvent(evs, ReasonPolicyDeletedInUse) {
		t.Errorf("events %q lack a Warning %s", evs, ReasonPolicyDeletedInUse)
	}
	if got := served(t, "execgate_controller_policy_deletions_in_use_total", map[string]string{"namespace": testNS, "policy": "web"}) - before; got != 1 {
		t.Errorf("execgate_controller_policy_deletions_in_use_total rose by %v, want 1", got)
	}
	// Reconciling again reports nothing new.
	env.reconcile(t, "web")
	if evs := drainEvents(rec); hasEvent(evs, ReasonPolicyDeletedInUse) {
		t.Errorf("the deletion was reported twice: %q", evs)
	}

	// The last pod goes: the policy goes, and the node unloads it.
	if err := env.client.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "web-1"}}); err != nil {
		t.Fatal(err)
	}
	env.reconcile(t, "web")
	if err := env.client.Get(ctx, client.ObjectKey{Namespace: testNS, Name: "web"}, &p); err == nil {
		t.Fatalf("policy still there with no pod left: finalizers %v", p.Finalizers)
	}
	env.reconcile(t, "web")
	pods, policies := env.agents["node-a"].removals()
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
		testPolicy("web", 1),
		testPod("web-1", "uid-web-1", "web", "node-a"),
	)
	rec := events.NewFakeRecorder(32)
	env.reconciler.Recorder = rec
	ctx := context.Background()
	env.reconcile(t, "web")
	labels := map[string]string{"namespace": testNS, "policy": "web", "from": "Protect", "to": "Monitor"}
	before := served(t, "execgate_controller_policy_weakened_total", labels)

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
	if evs := drainEvents(rec); !hasEvent(evs, ReasonPolicyWeakened) {
		t.Errorf("events %q lack a Warning %s", evs, ReasonPolicyWeakened)
	}
	if got := served(t, "execgate_controller_policy_weakened_total", labels) - before; got != 1 {
		t.Errorf("execgate_controller_policy_weakened_total rose by %v, want 1", got)
	}
	if got := env.agents["node-a"].appliedCalls(); len(got) != 2 || got[1].Policy.Mode.String() != "Monitor" {
		t.Errorf("the lowered mode must still be applied: pushes %d", len(got))
	}

	setMode(v1alpha1.ModeProtect, 3)
	c = meta.FindStatusCondition(env.policy(t, "web").Status.Conditions, v1alpha1.ConditionWeakened)
	if c == nil || c.Status != metav1.ConditionFalse {
		t.Errorf("back in Protect: Weakened = %+v, want False", c)
	}
}

func readOnlyRoot(pod *corev1.Pod) *corev1.Pod {
	ro := true
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			list[i].SecurityContext = &corev1.SecurityContext{ReadOnlyRootFilesystem: &ro}
		}
	}
	return pod
}

// TestTamperWritableRootWarns is issue 14's item 9: on a writable root
// filesystem an allowed path can be overwritten with another program, which
// then runs as the allowed one (escape rows 3, 5, 12), so a Protect pod whose
// containers lack readOnlyRootFilesystem must be flagged at admission: a
// Warning Event on the pod, an admission warning, a metric, and condition
// WritableRootFilesystem on its policy. Read-only pods are not flagged.
func TestTamperWritableRootWarns(t *testing.T) {
	env := newHandlerEnv(t, time.Second)
	h := &PodHandler{Admitter: env.admitter}
	metric := map[string]string{"namespace": testNS, "policy": "web"}
	tests := []struct {
		name string
		pod  *corev1.Pod
		warn bool
	}{
		{"containers with writable roots", testPod("rw-1", "uid-rw-1", "web", "node-a"), true},
		{"one container writable", func() *corev1.Pod {
			p := readOnlyRoot(testPod("rw-2", "uid-rw-2", "web", "node-a"))
			p.Spec.Containers[1].SecurityContext = nil
			return p
		}(), true},
		{"every container read-only", readOnlyRoot(testPod("ro-1", "uid-ro-1", "web", "node-a")), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			drainEvents(env.recorder)
			before := served(t, "execgate_controller_writable_root_pods_total", metric)
			resp := h.Handle(context.Background(), podRequest(t, tc.pod))
			if !resp.Allowed || outcomeOf(resp) != OutcomePushed {
				t.Fatalf("allowed=%v outcome %q, want pushed", resp.Allowed, outcomeOf(resp))
			}
			evs := drainEvents(env.recorder)
			warned := slices.ContainsFunc(resp.Warnings, func(w string) bool { return strings.Contains(w, "readOnlyRootFilesystem") })
			counted := served(t, "execgate_controller_writable_root_pods_total", metric) - before
			if hasEvent(evs, ReasonWritableRootFilesystem) != tc.warn || warned != tc.warn || (counted == 1) != tc.warn {
				t.Errorf("event %v (%q), admission warning %v (%q), metric +%v; want all %v", hasEvent(evs, ReasonWritableRootFilesystem), evs, warned, resp.Warnings, counted, tc.warn)
			}
			if tc.warn {
				t.Logf("event: %s", evs)
			}
		})
	}

	// The policy's status says it too.
	renv := newReconcilerEnv(t, testPolicy("web", 1), testPod("web-1", "uid-web-1", "web", "node-a"),
		readOnlyRoot(testPod("web-2", "uid-web-2", "web", "node-b")))
	renv.reconcile(t, "web")
	c := meta.FindStatusCondition(renv.policy(t, "web").Status.Conditions, v1alpha1.ConditionWritableRootFilesystem)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonWritableRoot || !strings.Contains(c.Message, "web-1") {
		t.Fatalf("WritableRootFilesystem = %+v, want True/%s naming web-1", c, v1alpha1.ReasonWritableRoot)
	}
	t.Logf("condition: %s", c.Message)
	if err := renv.client.Delete(context.Background(), testPod("web-1", "uid-web-1", "web", "node-a")); err != nil {
		t.Fatal(err)
	}
	renv.reconcile(t, "web")
	c = meta.FindStatusCondition(renv.policy(t, "web").Status.Conditions, v1alpha1.ConditionWritableRootFilesystem)
	if c == nil || c.Status != metav1.ConditionFalse {
		t.Fatalf("with only read-only pods left: %+v, want False", c)
	}
}
