package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/internal/testenv"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/test/e2e/cluster"
	"github.com/execgate/execgate/test/e2e/framework"
)

// startEnv starts the whole installation for t, or fails/skips it per
// EXECGATE_REQUIRE_E2E / EXECGATE_REQUIRE_BPF.
func startEnv(t *testing.T, opts framework.Options) *framework.Env {
	t.Helper()
	cluster.RequireE2E(t)
	testenv.RequireBPF(t)
	if _, err := exec.LookPath("go"); err != nil {
		testenv.Need(t, cluster.RequireE2EEnv, "the go toolchain on PATH (the harness builds the agent and controller)")
	}
	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	env, err := framework.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start e2e environment: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- controller log ---\n%s", env.ControllerLog(40))
			for _, n := range env.Nodes {
				t.Logf("--- agent %s log ---\n%s", n.Name, n.AgentLog(40))
			}
		}
		if err := env.Stop(); err != nil {
			t.Errorf("stop e2e environment: %v", err)
		}
	})
	return env
}

// bin resolves a command to the file the kernel sees (merged /usr: /bin/x is
// /usr/bin/x), which is what policies list.
func bin(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not installed: %v", name, err)
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	return real
}

func policy(ns, name string, mode v1alpha1.Mode, container string, paths ...string) *v1alpha1.WorkloadPolicy {
	return &v1alpha1.WorkloadPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.WorkloadPolicySpec{Mode: mode, RulesByContainer: v1alpha1.RulesByContainer{
			container: {Executables: paths},
		}},
	}
}

// podSpec is a pod of one container "app" running argv, labelled with policy (if
// any) and allowed onto the given nodes only.
func podSpec(ns, name, policyName string, nodes []string, argv ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			Containers:                    []corev1.Container{{Name: "app", Image: "registry.invalid/none:1", Command: argv}},
			TerminationGracePeriodSeconds: ptr(int64(5)),
		},
	}
	if policyName != "" {
		p.Labels[v1alpha1.PolicyLabel] = policyName
	}
	if len(nodes) > 0 {
		p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: nodes}},
			}}},
		}}
	}
	return p
}

func ptr[T any](v T) *T { return &v }

// waitFor polls cond every 100ms until it holds or timeout; it fails t with the
// last reason cond gave.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) (bool, string, error)) {
	t.Helper()
	var last string
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		ok, why, err := cond(ctx)
		if ctx.Err() == nil { // a reason cut short by the deadline says nothing
			last = why
		}
		return ok, err
	})
	if err != nil {
		t.Fatalf("%s: %v (last: %s)", what, err, last)
	}
}

// runningPods waits until every listed pod runs its containers on some node and
// returns pod name -> node name.
func runningPods(t *testing.T, env *framework.Env, ns string, names []string, timeout time.Duration) map[string]string {
	t.Helper()
	nodeOf := map[string]string{}
	waitFor(t, timeout, "pods running", func(ctx context.Context) (bool, string, error) {
		var notYet []string
		for _, n := range names {
			var p corev1.Pod
			if err := env.Client.Get(ctx, keyOf(ns, n), &p); err != nil {
				return false, err.Error(), nil
			}
			if p.Spec.NodeName == "" || p.Status.Phase != corev1.PodRunning || len(p.Status.ContainerStatuses) == 0 {
				notYet = append(notYet, n)
				continue
			}
			nodeOf[n] = p.Spec.NodeName
		}
		return len(notYet) == 0, fmt.Sprintf("%d not running: %v", len(notYet), notYet), nil
	})
	return nodeOf
}

func node(t *testing.T, env *framework.Env, name string) *framework.Node {
	t.Helper()
	for _, n := range env.Nodes {
		if n.Name == name {
			return n
		}
	}
	t.Fatalf("no simulated node %q", name)
	return nil
}

func denied(err error) bool { return framework.IsDenial(err) }

// watchEvents subscribes to one pod's exec events on its node's agent until the
// test ends.
func watchEvents(t *testing.T, n *framework.Node, ns, pod string) <-chan *agentv1.ExecEvent {
	t.Helper()
	ch, stop, err := n.WatchEvents(context.Background(), &agentv1.EventFilter{Namespace: ns, Pod: pod})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return ch
}

// expectEvent waits for an event of action for executable.
func expectEvent(t *testing.T, ch <-chan *agentv1.ExecEvent, action agentv1.Action, executable string) *agentv1.ExecEvent {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("event stream closed before a %s event for %s", action, executable)
			}
			if ev.GetAction() == action && ev.GetExecutable() == executable {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s event for %s within 10s", action, executable)
		}
	}
}

func policyNames(st *agentv1.AgentStatus) []string {
	var out []string
	for _, p := range st.GetPolicies() {
		out = append(out, p.GetNamespace()+"/"+p.GetName())
	}
	sort.Strings(out)
	return out
}

// bpftoolEntries counts a pinned map's entries with bpftool: the kernel's
// view, read by a tool that shares no code with execgate.
func bpftoolEntries(t *testing.T, pin string) int {
	t.Helper()
	out, err := exec.Command("bpftool", "--json", "map", "dump", "pinned", pin).Output()
	if err != nil {
		t.Fatalf("bpftool map dump pinned %s: %v", pin, err)
	}
	var entries []json.RawMessage
	if err := json.Unmarshal(out, &entries); err != nil {
		t.Fatalf("bpftool map dump pinned %s: %v (%.200s)", pin, err, out)
	}
	return len(entries)
}

func mapEntries(st *agentv1.AgentStatus) map[string]uint64 {
	out := map[string]uint64{}
	for _, m := range st.GetMaps() {
		out[m.GetName()] = m.GetEntries()
	}
	return out
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func deleteAllPods(t *testing.T, env *framework.Env, ns string) {
	t.Helper()
	ctx := context.Background()
	if err := env.Cluster.Client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "pods deleted (kubelet confirmed)", func(ctx context.Context) (bool, string, error) {
		l, err := env.Cluster.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		return len(l.Items) == 0, fmt.Sprintf("%d pods left", len(l.Items)), nil
	})
}

func createNamespace(t *testing.T, env *framework.Env, ns string) {
	t.Helper()
	if err := env.Cluster.CreateNamespace(context.Background(), ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}
