package e2e

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/execgate/execgate/api/v1alpha1"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/test/e2e/framework"
)

// manualScheduler is a scheduler name nobody serves: the test binds such pods
// itself, so that it times the pods/binding call the webhook sits in.
const manualScheduler = "execgate-e2e-manual"

// bindPod creates a pod that no scheduler picks up and binds it to node, returning
// how long the binding call took.
func bindPod(t *testing.T, env *framework.Env, pod *corev1.Pod, node string) time.Duration {
	t.Helper()
	ctx := context.Background()
	pod.Spec.SchedulerName = manualScheduler
	if err := env.Client.Create(ctx, pod); err != nil {
		t.Fatalf("create pod %s: %v", pod.Name, err)
	}
	binding := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name},
		Target: corev1.ObjectReference{Kind: "Node", Name: node}}
	start := time.Now()
	if err := env.Cluster.Client.CoreV1().Pods(pod.Namespace).Bind(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("bind %s to %s: %v", pod.Name, node, err)
	}
	return time.Since(start)
}

// podOnAgent waits until the node's agent enforces the pod and returns its status.
func podOnAgent(t *testing.T, n *framework.Node, name string, timeout time.Duration) *agentv1.PodStatus {
	t.Helper()
	p, err := n.WaitPodEnforced(context.Background(), name, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestFailOpen: whatever happens to an agent or to the controller, the binding
// completes within the push timeout plus a small margin, and the pod still ends up
// enforced, through the agent's own watch of the API server (the backstop).
func TestFailOpen(t *testing.T) {
	const pushTimeout = 300 * time.Millisecond
	// The API server's own overhead around the webhook call, on a loaded 2-core
	// machine; the bound proves the push timeout is respected, not the machine's speed.
	const margin = 700 * time.Millisecond
	env := startEnv(t, framework.Options{Nodes: 2, PushTimeout: pushTimeout})
	ctx := context.Background()
	const ns = "failopen"
	createNamespace(t, env, ns)
	sleep, cat := bin(t, "sleep"), bin(t, "cat")
	if err := env.Client.Create(ctx, policy(ns, "guarded", v1alpha1.ModeProtect, "app", sleep)); err != nil {
		t.Fatal(err)
	}
	n0, n1 := env.Nodes[0], env.Nodes[1]

	enforced := func(t *testing.T, n *framework.Node, pod string) {
		t.Helper()
		runningPods(t, env, ns, []string{pod}, 60*time.Second)
		podOnAgent(t, n, pod, 60*time.Second)
		if _, err := n.Kubelet.Exec(ctx, ns, pod, "app", cat, "/dev/null"); !denied(err) {
			t.Errorf("%s: %s not denied (err %v)", pod, cat, err)
		}
	}

	t.Run("healthy agent: the push lands before the binding returns", func(t *testing.T) {
		took := bindPod(t, env, podSpec(ns, "healthy", "guarded", nil, sleep, "infinity"), n0.Name)
		returned := time.Now()
		p := podOnAgent(t, n0, "healthy", 30*time.Second)
		if p.GetAppliedBy() == "backstop" {
			t.Errorf("pod applied by the backstop, want the webhook's push")
		}
		// Same machine, same clock: the agent had the pod in its maps before
		// the API server answered the binding call.
		if at := p.GetAppliedAt().AsTime(); !at.Before(returned) {
			t.Errorf("agent applied the pod at %s, after the binding call returned at %s",
				at.Format(time.StampMicro), returned.Format(time.StampMicro))
		} else {
			t.Logf("agent applied the pod %s before the binding call returned", returned.Sub(at).Round(time.Microsecond))
		}
		enforced(t, n0, "healthy")
		t.Logf("binding with a healthy agent took %s", took)
	})

	t.Run("slow agent", func(t *testing.T) {
		n0.Link.SetDelay(3 * time.Second)
		defer n0.Link.SetDelay(0)
		took := bindPod(t, env, podSpec(ns, "slow", "guarded", nil, sleep, "infinity"), n0.Name)
		if took > pushTimeout+margin {
			t.Errorf("binding behind a slow agent took %s, want <= push timeout %s + %s", took, pushTimeout, margin)
		}
		t.Logf("binding behind a 3s link took %s", took)
		enforced(t, n0, "slow")
	})

	t.Run("dead agent, enforced by the backstop once it is back", func(t *testing.T) {
		if err := n1.StopAgent(); err != nil {
			t.Fatal(err)
		}
		took := bindPod(t, env, podSpec(ns, "orphan", "guarded", nil, sleep, "infinity"), n1.Name)
		if took > pushTimeout+margin {
			t.Errorf("binding with a dead agent took %s, want <= %s + %s", took, pushTimeout, margin)
		}
		t.Logf("binding with a dead agent took %s", took)
		runningPods(t, env, ns, []string{"orphan"}, 60*time.Second)
		restart := time.Now()
		if err := n1.StartAgent(ctx); err != nil {
			t.Fatal(err)
		}
		p := podOnAgent(t, n1, "orphan", 60*time.Second)
		t.Logf("restarted agent enforced the pod %s after start (applied by %q)", time.Since(restart).Round(time.Millisecond), p.GetAppliedBy())
		enforced(t, n1, "orphan")
	})

	t.Run("controller down: scheduling goes on, the backstop enforces", func(t *testing.T) {
		if err := env.StopController(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := env.StartController(ctx); err != nil {
				t.Error(err)
			}
		}()
		created := time.Now()
		took := bindPod(t, env, podSpec(ns, "nowebhook", "guarded", nil, sleep, "infinity"), n0.Name)
		if took > pushTimeout+margin {
			t.Errorf("binding without a controller took %s", took)
		}
		p := podOnAgent(t, n0, "nowebhook", 60*time.Second)
		if p.GetAppliedBy() != "backstop" {
			t.Errorf("with the controller down the pod was applied by %q, want the backstop", p.GetAppliedBy())
		}
		t.Logf("controller down: binding took %s, pod enforced %s after creation", took, p.GetAppliedAt().AsTime().Sub(created).Round(time.Millisecond))
		enforced(t, n0, "nowebhook")
	})

}
