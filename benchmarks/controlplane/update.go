package controlplane

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/benchmarks/execbench"
	"github.com/execgate/execgate/benchmarks/harness"
	"github.com/execgate/execgate/nodeagent/agentclient"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/test/e2e/framework"
)

// policyUpdate is item 6: one policy whose pods run on every node, its
// allowlist changed Updates times; each change is timed from before the
// Update call until every node's agent reports the new version (the
// policy's generation), which it does once the new version is in its maps.
// The agents' status is polled every UpdatePoll, over one connection per
// node, so a time is late by up to the poll interval plus one status call.
func (b *Bench) policyUpdate(ctx context.Context, env *framework.Env, res *harness.ControlPlaneResults) error {
	const ns, policy = "bench-update", "rollout"
	c := b.cfg
	sleep, err := exec.LookPath("sleep")
	if err == nil {
		// Policies list the file the kernel sees (merged /usr: /bin/x is /usr/bin/x).
		sleep, err = filepath.EvalSymlinks(sleep)
	}
	if err != nil {
		return fmt.Errorf("find sleep for the pods to run: %w", err)
	}
	if err := createNamespace(ctx, env, ns); err != nil {
		return err
	}
	if err := env.Client.Create(ctx, newPolicy(ns, policy, 30000, sleep)); err != nil {
		return fmt.Errorf("create policy %s: %w", policy, err)
	}
	if err := waitPoliciesSeen(ctx, env, ns, c.StepTimeout); err != nil {
		return err
	}
	want := map[string][]string{} // node -> its pods
	for i, n := range env.Nodes {
		for k := range c.UpdatePodsPerNode {
			name := fmt.Sprintf("app-%d-%d", i, k)
			if err := env.Client.Create(ctx, newPod(ns, name, policy, manualScheduler, sleep, "infinity")); err != nil {
				return fmt.Errorf("create pod %s: %w", name, err)
			}
			if err := bind(ctx, env, ns, name, n.Name); err != nil {
				return err
			}
			want[n.Name] = append(want[n.Name], name)
		}
	}
	b.logf("item 6: %d pods running on %d nodes, waiting until every agent enforces them", res.UpdatePods, len(env.Nodes))
	if err := waitEnforced(ctx, env, ns, want, c.StepTimeout); err != nil {
		return err
	}

	clients := make([]*agentclient.Client, len(env.Nodes))
	for i, n := range env.Nodes {
		if clients[i], err = n.AgentClient(); err != nil {
			return fmt.Errorf("dial the agent on %s: %w", n.Name, err)
		}
		defer clients[i].Close()
	}
	key := client.ObjectKey{Namespace: ns, Name: policy}
	times := make([]time.Duration, 0, c.Updates)
	for u := 1; u <= c.Updates; u++ {
		var t0 time.Time
		var generation int64
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			var p v1alpha1.WorkloadPolicy
			if err := env.Client.Get(ctx, key, &p); err != nil {
				return err
			}
			rules := p.Spec.RulesByContainer[benchContainer]
			// The last path is a made-up one: the running pods keep sleep.
			rules.Executables[len(rules.Executables)-1] = fmt.Sprintf("/opt/rollout/v%d/bin/tool", u)
			p.Spec.RulesByContainer[benchContainer] = rules
			t0 = time.Now()
			if err := env.Client.Update(ctx, &p); err != nil {
				return err
			}
			generation = p.Generation
			return nil
		})
		if err != nil {
			return fmt.Errorf("update %d of policy %s: %w", u, policy, err)
		}
		d, err := inForceEverywhere(ctx, env, clients, ns, policy, uint64(generation), t0, c.UpdatePoll, c.StepTimeout)
		if err != nil {
			return fmt.Errorf("update %d: %w", u, err)
		}
		times = append(times, d)
		// The next update starts once the reconciler is idle (it has written
		// this generation's status), so that updates are timed one by one.
		if err := waitPoliciesSeen(ctx, env, ns, c.StepTimeout); err != nil {
			return err
		}
	}
	res.PolicyUpdate = execbench.Summarize(times)
	b.logf("item 6: %d updates, in force on all %d nodes after p50 %s, p99 %s", c.Updates, len(env.Nodes), res.PolicyUpdate.Median, res.PolicyUpdate.P99)
	return nil
}

// waitEnforced waits until each node's agent enforces its pods (their
// cgroups are bound).
func waitEnforced(ctx context.Context, env *framework.Env, ns string, want map[string][]string, timeout time.Duration) error {
	return poll(ctx, 100*time.Millisecond, timeout, "every pod enforced on its node", func(ctx context.Context) (bool, string, error) {
		for _, n := range env.Nodes {
			pods, err := agentPods(ctx, n, ns)
			if err != nil {
				return false, err.Error(), nil
			}
			for _, name := range want[n.Name] {
				if p := pods[name]; p.GetState() != agentv1.PodState_POD_STATE_ENFORCED {
					return false, fmt.Sprintf("pod %s on %s is %s", name, n.Name, p.GetState()), nil
				}
			}
		}
		return true, "", nil
	})
}

// inForceEverywhere polls every agent until it reports at least generation
// of the policy and returns the time from t0 to the last node's report.
func inForceEverywhere(ctx context.Context, env *framework.Env, clients []*agentclient.Client, ns, policy string, generation uint64,
	t0 time.Time, interval, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	seen := make([]time.Time, len(clients)) // each goroutine writes its own index
	var g errgroup.Group
	for i, cl := range clients {
		g.Go(func() error {
			for {
				st, err := cl.GetStatus(ctx, &agentv1.GetStatusRequest{})
				if err != nil {
					return fmt.Errorf("status of the agent on %s: %w", env.Nodes[i].Name, err)
				}
				if versionOf(st, ns, policy) >= generation {
					seen[i] = time.Now()
					return nil
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("the agent on %s does not report version %d of %s/%s within %s", env.Nodes[i].Name, generation, ns, policy, timeout)
				case <-time.After(interval):
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	var last time.Time
	for _, s := range seen {
		if s.After(last) {
			last = s
		}
	}
	return last.Sub(t0), nil
}

func versionOf(st *agentv1.AgentStatus, ns, name string) uint64 {
	for _, p := range st.GetPolicies() {
		if p.GetNamespace() == ns && p.GetName() == name {
			return p.GetVersion()
		}
	}
	return 0
}
