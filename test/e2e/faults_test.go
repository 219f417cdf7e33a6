package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/api/v1alpha1"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/test/e2e/framework"
)

// ChurnCyclesEnv sets the pod create/delete cycles of the churn fault (default 10,000).
const ChurnCyclesEnv = "EXECGATE_CHURN_CYCLES"

// TestFaults runs the fault suite of the reliability issue through the real
// components: agent crash with pushes in flight, a partition between controller and
// agent, an API server restart, a policy update storm under exec load, and pod churn.
// Each subtest logs one "fault:" line with its result, for the chaos report.
func TestFaults(t *testing.T) {
	const pushTimeout = 300 * time.Millisecond
	env := startEnv(t, framework.Options{Nodes: 2, PushTimeout: pushTimeout, GCInterval: 2 * time.Second,
		PodStartDelay: 20 * time.Millisecond, SandboxDelay: 50 * time.Millisecond, NodeNetworks: true})
	ctx := context.Background()
	const ns = "faults"
	createNamespace(t, env, ns)
	sleep, trueBin, cat, id := bin(t, "sleep"), bin(t, "true"), bin(t, "cat"), bin(t, "id")
	if err := env.Client.Create(ctx, policy(ns, "guarded", v1alpha1.ModeProtect, "app", sleep, trueBin)); err != nil {
		t.Fatal(err)
	}
	n0, n1 := env.Nodes[0], env.Nodes[1]

	// assertExact checks that the node's agent holds exactly the labelled pods the
	// API server places on it, all enforced, and that every one denies cat.
	assertExact := func(t *testing.T, n *framework.Node) {
		t.Helper()
		pods, err := env.Cluster.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.Name})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]bool{}
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && p.Labels[v1alpha1.PolicyLabel] != "" {
				want[p.Name] = true
			}
		}
		waitFor(t, 60*time.Second, "agent of "+n.Name+" holds exactly its pods", func(ctx context.Context) (bool, string, error) {
			st, err := n.Status(ctx)
			if err != nil {
				return false, err.Error(), nil
			}
			got := map[string]bool{}
			for _, p := range st.GetPods() {
				if p.GetState() == agentv1.PodState_POD_STATE_ENFORCED {
					got[p.GetName()] = true
				}
			}
			if len(st.GetPods()) != len(got) || !slices.Equal(sortedKeys(got), sortedKeys(want)) {
				return false, fmt.Sprintf("agent holds %d pods (%d enforced) %v, API server %v", len(st.GetPods()), len(got), sortedKeys(got), sortedKeys(want)), nil
			}
			return true, "", nil
		})
		for name := range want {
			if _, err := n.Kubelet.Exec(ctx, ns, name, "app", cat, "/dev/null"); !denied(err) {
				t.Errorf("%s on %s: %s not denied (err %v)", name, n.Name, cat, err)
			}
		}
	}
	createPods := func(t *testing.T, prefix string, count int, nodes []string) []string {
		t.Helper()
		var names []string
		for i := range count {
			name := fmt.Sprintf("%s-%d", prefix, i)
			if err := env.Client.Create(ctx, podSpec(ns, name, "guarded", nodes, sleep, "infinity")); err != nil {
				t.Fatal(err)
			}
			names = append(names, name)
		}
		return names
	}

	t.Run("agent kill -9 with pods running and pushes in flight", func(t *testing.T) {
		runningPods(t, env, ns, createPods(t, "steady", 6, []string{n0.Name}), 60*time.Second)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // pushes in flight while the agent dies
			defer wg.Done()
			createPods(t, "inflight", 8, []string{n0.Name})
		}()
		time.Sleep(100 * time.Millisecond)
		n0.KillAgent()
		// No agent: the pinned program and maps keep enforcing.
		if _, err := n0.Kubelet.Exec(ctx, ns, "steady-0", "app", cat, "/dev/null"); !denied(err) {
			t.Errorf("with the agent dead, %s was not denied (err %v)", cat, err)
		}
		wg.Wait()
		if err := n0.StartAgent(ctx); err != nil {
			t.Fatal(err)
		}
		var inflight []string
		for i := range 8 {
			inflight = append(inflight, fmt.Sprintf("inflight-%d", i))
		}
		runningPods(t, env, ns, inflight, 60*time.Second)
		assertExact(t, n0)
		t.Logf("fault: agent SIGKILL with 6 running pods and 8 pushes in flight: enforcement held while down; restarted agent holds exactly the API server's pods")
	})

	t.Run("partition between controller and agent", func(t *testing.T) {
		// The agent runs in a network namespace of its own; its veth goes down:
		// the controller's packets are dropped, no connection is refused or reset.
		if err := n1.SetNetworkDown(true); err != nil {
			t.Fatal(err)
		}
		defer n1.SetNetworkDown(false)
		took := bindPod(t, env, podSpec(ns, "cut-off", "guarded", nil, sleep, "infinity"), n1.Name)
		if took > pushTimeout+700*time.Millisecond {
			t.Errorf("binding across a partition took %s, want <= %s + 700ms", took, pushTimeout)
		}
		runningPods(t, env, ns, []string{"cut-off"}, 60*time.Second)
		// The agent cannot be asked across the partition: the pod's own exec
		// shows it enforced, by the agent's watch of the API server.
		waitFor(t, 60*time.Second, "cut-off pod enforced behind the partition", func(ctx context.Context) (bool, string, error) {
			_, err := n1.Kubelet.Exec(ctx, ns, "cut-off", "app", cat, "/dev/null")
			return denied(err), fmt.Sprintf("cat: %v", err), nil
		})
		if err := n1.SetNetworkDown(false); err != nil {
			t.Fatal(err)
		}
		p := podOnAgent(t, n1, "cut-off", 60*time.Second)
		healed := bindPod(t, env, podSpec(ns, "healed", "guarded", nil, sleep, "infinity"), n1.Name)
		runningPods(t, env, ns, []string{"healed"}, 60*time.Second)
		h := podOnAgent(t, n1, "healed", 60*time.Second)
		if h.GetAppliedBy() == "backstop" {
			t.Logf("after healing the first push still lost the race to the backstop (the controller's connection was re-dialled)")
		}
		assertExact(t, n1)
		t.Logf("fault: partition: binding took %s (push timeout %s), pod enforced via %q; after heal binding took %s, applied by %q",
			took.Round(time.Millisecond), pushTimeout, p.GetAppliedBy(), healed.Round(time.Millisecond), h.GetAppliedBy())
	})

	t.Run("kube-apiserver restart", func(t *testing.T) {
		restartErr := make(chan error, 1)
		go func() { restartErr <- env.Cluster.RestartAPIServer(ctx, 3*time.Second) }()
		time.Sleep(time.Second)
		// API server down: enforcement goes on from what the agents hold.
		for _, pod := range []struct {
			n    *framework.Node
			name string
		}{{n0, "steady-1"}, {n1, "cut-off"}} {
			if _, err := pod.n.Kubelet.Exec(ctx, ns, pod.name, "app", cat, "/dev/null"); !denied(err) {
				t.Errorf("API server down: %s in %s not denied (err %v)", cat, pod.name, err)
			}
		}
		if err := <-restartErr; err != nil {
			t.Fatal(err)
		}
		// Resync: a pod deleted and one created after the restart are both seen.
		if err := env.Client.Delete(ctx, podSpec(ns, "steady-2", "", nil)); err != nil {
			t.Fatal(err)
		}
		runningPods(t, env, ns, createPods(t, "after-restart", 2, []string{n0.Name}), 60*time.Second)
		waitFor(t, 60*time.Second, "steady-2 gone", func(ctx context.Context) (bool, string, error) {
			var p corev1.Pod
			err := env.Client.Get(ctx, keyOf(ns, "steady-2"), &p)
			return apierrors.IsNotFound(err), fmt.Sprint(err), nil
		})
		assertExact(t, n0)
		assertExact(t, n1)
		t.Logf("fault: kube-apiserver down 3s: denials held; agents resynced (deletion and creation after restart seen)")
	})

	t.Run("policy update storm under exec load", func(t *testing.T) {
		// The storm is a number of updates, not a rate: a loaded 2-core CI machine
		// reached 22 to 95 updates/s (the rate is reported, and belongs in benchmarks).
		// It ends after wantUpdates, or fails when stormLimit passes first.
		const (
			wantUpdates = 200
			stormLimit  = 30 * time.Second
		)
		began := time.Now()
		ctx, cancel := context.WithTimeout(ctx, stormLimit)
		defer cancel()
		var updates, failed, execs, wrong, catRan, catDenied atomic.Int64
		var wg sync.WaitGroup
		for _, pod := range []struct {
			n    *framework.Node
			name string
		}{{n0, "steady-3"}, {n1, "cut-off"}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					// true is in every version of the allowlist, id in none.
					if _, err := pod.n.Kubelet.Exec(context.Background(), ns, pod.name, "app", trueBin); err != nil {
						wrong.Add(1)
						t.Errorf("%s: allowed %s failed during the storm: %v", pod.name, trueBin, err)
					}
					if _, err := pod.n.Kubelet.Exec(context.Background(), ns, pod.name, "app", id); !denied(err) {
						wrong.Add(1)
						t.Errorf("%s: %s not denied during the storm (err %v)", pod.name, id, err)
					}
					// cat is in every other version: it runs or is denied, nothing else.
					switch _, err := pod.n.Kubelet.Exec(context.Background(), ns, pod.name, "app", cat, "/dev/null"); {
					case err == nil:
						catRan.Add(1)
					case denied(err):
						catDenied.Add(1)
					default:
						wrong.Add(1)
						t.Errorf("%s: %s neither ran nor was denied during the storm: %v", pod.name, cat, err)
					}
					execs.Add(3)
				}
			}()
		}
		// Merge patches: no read-modify-write, so the controller's status writes
		// cause no conflicts and every tick is an update. One patch takes ~20 ms
		// here, so 4 workers take the ticks.
		tick := time.NewTicker(10 * time.Millisecond) // 100 updates/s
		defer tick.Stop()
		ticks := make(chan int)
		var patchers sync.WaitGroup
		for range 4 {
			patchers.Add(1)
			go func() {
				defer patchers.Done()
				for i := range ticks {
					paths := []string{sleep, trueBin}
					if i%2 == 0 {
						paths = append(paths, cat)
					}
					patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"rulesByContainer": map[string]any{
						"app": map[string]any{"executables": paths}}}})
					wp := &v1alpha1.WorkloadPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "guarded"}}
					if err := env.Client.Patch(ctx, wp, client.RawPatch(types.MergePatchType, patch)); err == nil {
						if updates.Add(1) >= wantUpdates {
							cancel()
						}
					} else if ctx.Err() == nil {
						failed.Add(1)
					}
				}
			}()
		}
		for i := 0; ctx.Err() == nil; i++ {
			select {
			case <-tick.C:
				select {
				case ticks <- i:
				case <-ctx.Done():
				}
			case <-ctx.Done():
			}
		}
		close(ticks)
		patchers.Wait()
		wg.Wait()
		storm := time.Since(began)
		rate := float64(updates.Load()) / storm.Seconds()
		if updates.Load() < wantUpdates {
			t.Errorf("update storm: %d updates in %s (%.0f/s, %d failed), want %d", updates.Load(), stormLimit, rate, failed.Load(), wantUpdates)
		}
		if catRan.Load() == 0 || catDenied.Load() == 0 {
			t.Errorf("%s ran %d times and was denied %d times during the storm: the updates did not reach the kernel both ways",
				cat, catRan.Load(), catDenied.Load())
		}
		// Leave the policy as the other subtests expect it: cat denied. The controller
		// writes the status meanwhile, so the update retries on conflict.
		wp, err := env.UpdatePolicy(context.Background(), keyOf(ns, "guarded"), func(wp *v1alpha1.WorkloadPolicy) {
			wp.Spec.RulesByContainer["app"] = v1alpha1.ContainerRules{Executables: []string{sleep, trueBin}}
		})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "final policy version on both nodes", func(ctx context.Context) (bool, string, error) {
			for _, n := range env.Nodes {
				st, err := n.Status(ctx)
				if err != nil {
					return false, err.Error(), nil
				}
				for _, p := range st.GetPolicies() {
					if p.GetName() == "guarded" && p.GetVersion() != uint64(wp.Generation) {
						return false, fmt.Sprintf("%s at version %d, want %d", n.Name, p.GetVersion(), wp.Generation), nil
					}
				}
			}
			return true, "", nil
		})
		t.Logf("fault: update storm: %d policy updates in %s (%.0f/s, %d failed) while %d execs ran (%s %d ran, %d denied as versions flipped): %d wrong decisions",
			updates.Load(), storm.Round(time.Millisecond), rate, failed.Load(), execs.Load(), filepath.Base(cat), catRan.Load(), catDenied.Load(), wrong.Load())
	})

	t.Run("pod churn leaves nothing behind", func(t *testing.T) {
		deleteAllPods(t, env, ns)
		cycles := 10000
		if v := os.Getenv(ChurnCyclesEnv); v != "" {
			var err error
			if cycles, err = strconv.Atoi(v); err != nil || cycles <= 0 {
				t.Fatalf("%s=%q: want a positive number", ChurnCyclesEnv, v)
			}
		}
		rssBefore := []int{agentRSS(t, n0), agentRSS(t, n1)}
		start := time.Now()
		const workers = 24
		var next, done atomic.Int64
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1) - 1
					if i >= int64(cycles) || t.Failed() {
						return
					}
					churnCycle(t, env, ns, fmt.Sprintf("churn-%d-%d", w, i), sleep)
					done.Add(1)
				}
			}()
		}
		wg.Wait()
		took := time.Since(start)
		waitFor(t, 60*time.Second, "agents empty after churn", func(ctx context.Context) (bool, string, error) {
			for _, n := range env.Nodes {
				st, err := n.Status(ctx)
				if err != nil {
					return false, err.Error(), nil
				}
				e := mapEntries(st)
				if len(st.GetPods()) > 0 || len(st.GetPolicies()) > 0 || e["bindings"] > 0 || e["exact_rules"] > 0 || e["prefix_rules"] > 0 {
					var sample []string
					for _, p := range st.GetPods()[:min(5, len(st.GetPods()))] {
						sample = append(sample, fmt.Sprintf("%s(%s by %q at %s)", p.GetName(), p.GetState(), p.GetAppliedBy(), p.GetAppliedAt().AsTime().Format(time.StampMilli)))
					}
					return false, fmt.Sprintf("%s: %d pods %v, %d policies, maps %v", n.Name, len(st.GetPods()), sample, len(st.GetPolicies()), e), nil
				}
			}
			return true, "", nil
		})
		// The agents' word, checked against the kernel's: every pinned map
		// dumped by bpftool, independently of execgate's code.
		for _, n := range env.Nodes {
			st, err := n.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			reported := mapEntries(st)
			for _, m := range []string{"bindings", "exact_rules", "prefix_rules", "mntns_pins", "slot_info"} {
				if got := bpftoolEntries(t, filepath.Join(n.PinDir, m)); got != 0 || reported[m] != 0 {
					t.Errorf("%s: map %s holds %d entries (bpftool), GetStatus says %d; want 0 and 0", n.Name, m, got, reported[m])
				}
			}
		}
		rssAfter := []int{agentRSS(t, n0), agentRSS(t, n1)}
		t.Logf("fault: pod churn: %d create/run/delete cycles in %s (%.0f/s) over 2 nodes: 0 leaked entries (GetStatus and bpftool agree); agent RSS %v KiB before, %v KiB after",
			done.Load(), took.Round(time.Second), float64(done.Load())/took.Seconds(), rssBefore, rssAfter)
		for i := range rssAfter {
			if rssAfter[i] > 4*rssBefore[i]+64<<10 {
				t.Errorf("agent %d RSS grew from %d to %d KiB over the churn", i, rssBefore[i], rssAfter[i])
			}
		}
	})
}

// churnCycle creates a labelled pod, waits until its container runs, deletes it and
// waits until the kubelet confirmed the deletion.
func churnCycle(t *testing.T, env *framework.Env, ns, name, sleep string) {
	ctx := context.Background()
	pods := env.Cluster.Client.CoreV1().Pods(ns)
	if _, err := pods.Create(ctx, podSpec(ns, name, "guarded", nil, sleep, "infinity"), metav1.CreateOptions{}); err != nil {
		t.Errorf("create %s: %v", name, err)
		return
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err == nil && p.Status.Phase == corev1.PodRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%s not running after 60s", name)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := pods.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Errorf("delete %s: %v", name, err)
		return
	}
	for {
		_, err := pods.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s not gone after 60s", name)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// agentRSS is the resident set of the node's agent, in KiB.
func agentRSS(t *testing.T, n *framework.Node) int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", n.AgentPID()))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatal(err)
			}
			return kb
		}
	}
	t.Fatal("no VmRSS")
	return 0
}
