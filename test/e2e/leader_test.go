package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/test/e2e/framework"
	"github.com/execgate/execgate/webhook"
)

// TestControllerLeaderElection runs two controller replicas with the chart's
// identity and RBAC: one leads (the Lease names it) and reconciles, the other
// serves its webhook and waits; when the leader stops, the standby takes the
// Lease and reconciles from then on (policy status follows a new generation).
func TestControllerLeaderElection(t *testing.T) {
	env := startEnv(t, framework.Options{Nodes: 1, LeaderElection: true})
	ctx := context.Background()
	const ns = "leader"
	createNamespace(t, env, ns)
	sleep, trueBin := bin(t, "sleep"), bin(t, "true")
	if err := env.Client.Create(ctx, policy(ns, "elected", v1alpha1.ModeProtect, "app", sleep, trueBin)); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, podSpec(ns, "worker", "elected", nil, sleep, "infinity")); err != nil {
		t.Fatal(err)
	}
	runningPods(t, env, ns, []string{"worker"}, 60*time.Second)

	holder := func(ctx context.Context) (string, error) {
		l, err := env.Cluster.Client.CoordinationV1().Leases(framework.Namespace).Get(ctx, webhook.LeaderElectionID, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		if l.Spec.HolderIdentity == nil {
			return "", nil
		}
		return *l.Spec.HolderIdentity, nil
	}
	var first string
	waitFor(t, 30*time.Second, "a leader holds the Lease", func(ctx context.Context) (bool, string, error) {
		h, err := holder(ctx)
		first = h
		return err == nil && h != "", fmt.Sprintf("holder %q, %v", h, err), nil
	})
	// Status is written by the reconciler, which only the leader runs.
	reconciled := func(what string, gen int64) {
		t.Helper()
		waitFor(t, 30*time.Second, what, func(ctx context.Context) (bool, string, error) {
			var wp v1alpha1.WorkloadPolicy
			if err := env.Client.Get(ctx, keyOf(ns, "elected"), &wp); err != nil {
				return false, err.Error(), nil
			}
			return wp.Status.ObservedGeneration == gen && wp.Status.PodsInForce == 1,
				fmt.Sprintf("observedGeneration %d (want %d), podsInForce %d", wp.Status.ObservedGeneration, gen, wp.Status.PodsInForce), nil
		})
	}
	update := func(add string) int64 {
		t.Helper()
		wp, err := env.UpdatePolicy(ctx, keyOf(ns, "elected"), func(wp *v1alpha1.WorkloadPolicy) {
			wp.Spec.RulesByContainer["app"] = v1alpha1.ContainerRules{Executables: append(wp.Spec.RulesByContainer["app"].Executables, bin(t, add))}
		})
		if err != nil {
			t.Fatal(err)
		}
		return wp.Generation
	}
	reconciled("the leader reconciles the policy", 1)

	standby, err := env.StartStandbyController(ctx)
	if err != nil {
		t.Fatalf("start a standby replica: %v", err)
	}
	defer standby.Stop()
	time.Sleep(3 * time.Second) // a standby that stole the Lease would have by now
	if h, err := holder(ctx); err != nil || h != first {
		t.Fatalf("with a standby running the Lease is held by %q (%v), want the first leader %q", h, err, first)
	}
	reconciled("a policy update with two replicas is reconciled", update("uname"))

	stopped := time.Now()
	if err := env.StopController(); err != nil {
		t.Fatalf("stop the leader: %v", err)
	}
	var second string
	waitFor(t, 30*time.Second, "the standby takes the Lease", func(ctx context.Context) (bool, string, error) {
		h, err := holder(ctx)
		second = h
		return err == nil && h != "" && h != first, fmt.Sprintf("holder %q, %v", h, err), nil
	})
	failover := time.Since(stopped)
	gen := update("ls")
	reconciled("the new leader reconciles the next update", gen)
	if standby.ExitedErr() != nil {
		t.Fatalf("standby exited: %v\n%s", standby.ExitedErr(), standby.LogTail(40))
	}
	t.Logf("leader %s stopped; %s led %s later and reconciled generation %d", first, second, failover.Round(time.Millisecond), gen)
}
