package controlplane

import (
	"context"
	"fmt"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/benchmarks/execbench"
	"github.com/execgate/execgate/benchmarks/harness"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/test/e2e/framework"
)

// pushedByWebhook says whether the webhook's push first brought the pod to
// its agent: applied_by is then the admission request's id. The agent's own
// watch of the API server records "backstop", the reconciler's push "".
func pushedByWebhook(p *agentv1.PodStatus) bool {
	by := p.GetAppliedBy()
	return by != "" && by != "backstop"
}

// bindLatency is item 4. Every pod has its own policy, so every push writes
// new map entries (a policy's 50 paths in its container slot and in the pod's
// union slot), as for the first pod of a workload on a node. The benchmark
// binds the pods itself, one at a time, round robin over the nodes:
//
//	t0         before the pods/binding call
//	return     the call returned; the webhook's push was acknowledged inside it
//	applied_at the agent's record of when the policy was in its maps (same clock)
func (b *Bench) bindLatency(ctx context.Context, env *framework.Env, res *harness.ControlPlaneResults) error {
	const ns = "bench-bind"
	c := b.cfg
	if err := createNamespace(ctx, env, ns); err != nil {
		return err
	}
	b.logf("item 4: %d pods, each with its own %d-path policy, bound one at a time over %d nodes", c.BindPods, execbench.PathsPerPolicy, len(env.Nodes))
	names := make([]string, c.BindPods)
	for i := range names {
		names[i] = fmt.Sprintf("pod-%d", i)
		policy := fmt.Sprintf("policy-%d", i)
		if err := env.Client.Create(ctx, newPolicy(ns, policy, i)); err != nil {
			return fmt.Errorf("create policy %s: %w", policy, err)
		}
		// The command never runs: no kubelet simulator in this environment.
		if err := env.Client.Create(ctx, newPod(ns, names[i], policy, manualScheduler, "/bin/true")); err != nil {
			return fmt.Errorf("create pod %s: %w", names[i], err)
		}
	}
	if err := waitPoliciesSeen(ctx, env, ns, c.StepTimeout); err != nil {
		return err
	}

	starts := make([]time.Time, len(names))
	acks := make([]time.Duration, len(names))
	for i, name := range names {
		if i > 0 && c.BindGap > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(c.BindGap):
			}
		}
		node := env.Nodes[i%len(env.Nodes)].Name
		t0 := time.Now()
		if err := bind(ctx, env, ns, name, node); err != nil {
			return err
		}
		acks[i] = time.Since(t0)
		starts[i] = t0
	}

	held := map[string]*agentv1.PodStatus{}
	err := poll(ctx, 100*time.Millisecond, c.StepTimeout, "every bound pod on its agent", func(ctx context.Context) (bool, string, error) {
		for _, n := range env.Nodes {
			pods, err := agentPods(ctx, n, ns)
			if err != nil {
				return false, err.Error(), nil
			}
			for name, p := range pods {
				if p.GetAppliedAt() != nil {
					held[name] = p
				}
			}
		}
		return len(held) >= len(names), fmt.Sprintf("%d of %d pods on their agents", len(held), len(names)), nil
	})
	if err != nil {
		return err
	}
	toMap := make([]time.Duration, len(names))
	for i, name := range names {
		p := held[name]
		if !pushedByWebhook(p) {
			res.BindPushMissed++
		}
		// applied_at is wall-clock time of the agent, on this machine's clock.
		toMap[i] = p.GetAppliedAt().AsTime().Sub(starts[i])
		if toMap[i] < 0 {
			return fmt.Errorf("pod %s: applied at %s, before its binding started at %s", name, p.GetAppliedAt().AsTime(), starts[i])
		}
	}
	res.BindToAck = execbench.Summarize(acks)
	res.BindToMap = execbench.Summarize(toMap)
	b.logf("item 4: binding call p50 %s p99 %s; in the map p50 %s p99 %s; %d of %d pods reached their agent by its own watch, not the push",
		res.BindToAck.Median, res.BindToAck.P99, res.BindToMap.Median, res.BindToMap.P99, res.BindPushMissed, len(names))

	if err := clearNamespace(ctx, env, ns, c.StepTimeout); err != nil {
		return err
	}
	if err := env.Client.DeleteAllOf(ctx, &v1alpha1.WorkloadPolicy{}, client.InNamespace(ns)); err != nil {
		return fmt.Errorf("delete the policies of %s: %w", ns, err)
	}
	return nil
}
