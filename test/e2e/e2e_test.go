// Package e2e tests execgate as it runs: a real kube-apiserver and kube-scheduler,
// the chart's manifests, the real controller and webhook, one real agent per simulated
// node enforcing in this machine's kernel, and kubelet simulators creating real
// cgroups and processes.
package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/api/v1alpha1"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/test/e2e/framework"
)

func keyOf(ns, name string) client.ObjectKey { return client.ObjectKey{Namespace: ns, Name: name} }

// TestThreeNodes is the main scenario of the harness issue: 3 nodes, 30 pods over 3
// policies placed by the real scheduler, per-node loading, Protect and Monitor
// decisions in the kernel, a policy update reaching exactly its nodes, and deletion
// leaving empty maps.
func TestThreeNodes(t *testing.T) {
	env := startEnv(t, framework.Options{Nodes: 3})
	ctx := context.Background()
	const ns = "shop"
	createNamespace(t, env, ns)
	n0, n1, n2 := env.Nodes[0].Name, env.Nodes[1].Name, env.Nodes[2].Name
	sleep, trueBin, cat := bin(t, "sleep"), bin(t, "true"), bin(t, "cat")

	// Placement makes per-node loading visible: frontend on n0+n1, audit (Monitor)
	// on n1+n2, batch on n2 only.
	policies := []*v1alpha1.WorkloadPolicy{
		policy(ns, "frontend", v1alpha1.ModeProtect, "app", sleep, trueBin),
		policy(ns, "audit", v1alpha1.ModeMonitor, "app", sleep, trueBin),
		policy(ns, "batch", v1alpha1.ModeProtect, "app", sleep),
	}
	placement := map[string][]string{"frontend": {n0, n1}, "audit": {n1, n2}, "batch": {n2}}
	for _, p := range policies {
		if err := env.Client.Create(ctx, p); err != nil {
			t.Fatalf("create policy %s: %v", p.Name, err)
		}
	}
	var names []string
	policyOf := map[string]string{}
	for _, p := range policies {
		for i := range 10 {
			name := fmt.Sprintf("%s-%d", p.Name, i)
			if err := env.Client.Create(ctx, podSpec(ns, name, p.Name, placement[p.Name], sleep, "infinity")); err != nil {
				t.Fatalf("create pod %s: %v", name, err)
			}
			names = append(names, name)
			policyOf[name] = p.Name
		}
	}
	// An unlabelled pod: the webhook answers at once and no agent hears of it.
	if err := env.Client.Create(ctx, podSpec(ns, "plain", "", nil, sleep, "infinity")); err != nil {
		t.Fatal(err)
	}
	nodeOf := runningPods(t, env, ns, append(slices.Clone(names), "plain"), 90*time.Second)

	t.Run("each agent loaded only its own pods' policies, pushed before the binding", func(t *testing.T) {
		want := map[string]map[string]bool{}
		for _, name := range names {
			if want[nodeOf[name]] == nil {
				want[nodeOf[name]] = map[string]bool{}
			}
			want[nodeOf[name]][ns+"/"+policyOf[name]] = true
		}
		for _, n := range env.Nodes {
			st, err := n.Status(ctx)
			if err != nil {
				t.Fatalf("status of %s: %v", n.Name, err)
			}
			if got, exp := policyNames(st), sortedKeys(want[n.Name]); !slices.Equal(got, exp) {
				t.Errorf("%s loaded policies %v, want exactly %v", n.Name, got, exp)
			}
			pods := map[string]*agentv1.PodStatus{}
			for _, p := range st.GetPods() {
				pods[p.GetName()] = p
			}
			for _, name := range names {
				if nodeOf[name] != n.Name {
					if _, ok := pods[name]; ok {
						t.Errorf("%s holds pod %s, which runs on %s", n.Name, name, nodeOf[name])
					}
					continue
				}
				p := pods[name]
				switch {
				case p == nil:
					t.Errorf("%s does not hold its pod %s", n.Name, name)
				case p.GetState() != agentv1.PodState_POD_STATE_ENFORCED:
					t.Errorf("%s: pod %s is %s, want ENFORCED", n.Name, name, p.GetState())
				case p.GetAppliedBy() == "backstop" || p.GetAppliedBy() == "":
					t.Errorf("%s: pod %s was applied by %q, want the webhook's push (an admission request id)", n.Name, name, p.GetAppliedBy())
				}
			}
			if _, ok := pods["plain"]; ok {
				t.Errorf("%s holds the unlabelled pod", n.Name)
			}
		}
	})

	t.Run("protect denies and reports, monitor allows and reports", func(t *testing.T) {
		for _, tc := range []struct {
			pod    string
			action agentv1.Action
		}{
			{"frontend-0", agentv1.Action_ACTION_DENIED},
			{"batch-3", agentv1.Action_ACTION_DENIED},
			{"audit-5", agentv1.Action_ACTION_REPORTED},
		} {
			n := node(t, env, nodeOf[tc.pod])
			events := watchEvents(t, n, ns, tc.pod)
			if tc.pod != "batch-3" { // batch allows only sleep
				if out, err := n.Kubelet.Exec(ctx, ns, tc.pod, "app", trueBin); err != nil {
					t.Errorf("%s: allowed %s failed: %v %s", tc.pod, trueBin, err, out)
				}
			}
			_, err := n.Kubelet.Exec(ctx, ns, tc.pod, "app", cat, "/dev/null")
			if tc.action == agentv1.Action_ACTION_DENIED && !denied(err) {
				t.Errorf("%s: %s was not denied (err %v)", tc.pod, cat, err)
			}
			if tc.action == agentv1.Action_ACTION_REPORTED && err != nil {
				t.Errorf("%s: Monitor mode must allow %s, got %v", tc.pod, cat, err)
			}
			ev := expectEvent(t, events, tc.action, cat)
			if ev.GetPolicy() != ns+"/"+policyOf[tc.pod] || ev.GetContainer() != "app" || ev.GetNode() != n.Name {
				t.Errorf("%s: event names policy %q container %q node %q", tc.pod, ev.GetPolicy(), ev.GetContainer(), ev.GetNode())
			}
		}
		// The unlabelled pod is not enforced anywhere.
		n := node(t, env, nodeOf["plain"])
		if out, err := n.Kubelet.Exec(ctx, ns, "plain", "app", cat, "/dev/null"); err != nil {
			t.Errorf("unlabelled pod: %v %s", err, out)
		}
	})

	t.Run("the first exec of a container is already enforced", func(t *testing.T) {
		// The container's own command is outside the allowlist: it must never run.
		if err := env.Client.Create(ctx, podSpec(ns, "frontend-bad", "frontend", placement["frontend"], cat)); err != nil {
			t.Fatal(err)
		}
		var pod corev1.Pod
		waitFor(t, 60*time.Second, "container status of frontend-bad", func(ctx context.Context) (bool, string, error) {
			if err := env.Client.Get(ctx, keyOf(ns, "frontend-bad"), &pod); err != nil {
				return false, err.Error(), nil
			}
			return len(pod.Status.ContainerStatuses) == 1, string(pod.Status.Phase), nil
		})
		term := pod.Status.ContainerStatuses[0].State.Terminated
		if term == nil || (term.ExitCode != 137 && term.Reason != "StartError") {
			t.Fatalf("container whose first exec is %s should be killed at exec (137) or fail to start, got %+v", cat, pod.Status.ContainerStatuses[0].State)
		}
	})

	t.Run("a policy update reaches the nodes running its pods and no others", func(t *testing.T) {
		wp, err := env.UpdatePolicy(ctx, keyOf(ns, "frontend"), func(wp *v1alpha1.WorkloadPolicy) {
			wp.Spec.RulesByContainer["app"] = v1alpha1.ContainerRules{Executables: []string{sleep, trueBin, cat}}
		})
		if err != nil {
			t.Fatal(err)
		}
		gen := uint64(wp.Generation)
		waitFor(t, 30*time.Second, "new frontend version on its nodes", func(ctx context.Context) (bool, string, error) {
			for _, n := range env.Nodes {
				st, err := n.Status(ctx)
				if err != nil {
					return false, err.Error(), nil
				}
				var version uint64
				for _, p := range st.GetPolicies() {
					if p.GetName() == "frontend" {
						version = p.GetVersion()
					}
				}
				runs := slices.Contains(placement["frontend"], n.Name)
				if runs && version != gen {
					return false, fmt.Sprintf("%s has frontend version %d, want %d", n.Name, version, gen), nil
				}
				if !runs && version != 0 {
					return false, fmt.Sprintf("%s runs no frontend pod but loaded version %d", n.Name, version), nil
				}
			}
			return true, "", nil
		})
		n := node(t, env, nodeOf["frontend-1"])
		if out, err := n.Kubelet.Exec(ctx, ns, "frontend-1", "app", cat, "/dev/null"); err != nil {
			t.Errorf("after the update %s must be allowed in frontend-1: %v %s", cat, err, out)
		}
	})

	t.Run("deleting the pods empties every agent and map", func(t *testing.T) {
		deleteAllPods(t, env, ns)
		waitFor(t, 30*time.Second, "agents empty", func(ctx context.Context) (bool, string, error) {
			for _, n := range env.Nodes {
				st, err := n.Status(ctx)
				if err != nil {
					return false, err.Error(), nil
				}
				entries := mapEntries(st)
				var nonEmpty []string
				for _, name := range slices.Sorted(maps.Keys(entries)) {
					if entries[name] > 0 && name != "config" && name != "slot_info" && name != "stats" {
						nonEmpty = append(nonEmpty, fmt.Sprintf("%s=%d", name, entries[name]))
					}
				}
				if len(st.GetPods()) > 0 || len(st.GetPolicies()) > 0 || len(nonEmpty) > 0 {
					return false, fmt.Sprintf("%s: %d pods, %d policies, maps %v", n.Name, len(st.GetPods()), len(st.GetPolicies()), nonEmpty), nil
				}
				if n.Kubelet.Pods() != 0 {
					return false, fmt.Sprintf("%s kubelet still holds %d pods", n.Name, n.Kubelet.Pods()), nil
				}
			}
			return true, "", nil
		})
	})
}
