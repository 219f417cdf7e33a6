package e2e

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/test/e2e/framework"
	"github.com/execgate/execgate/webhook/learn"
	"github.com/execgate/execgate/webhook/promote"
	"github.com/execgate/execgate/webhook/violations"
)

// TestLearnPromoteLoop is the Learn -> promote -> Protect loop of
// docs/learn-monitor-protect.md on the real installation:
//
//  1. a Deployment's pod (Deployment -> ReplicaSet -> Pod, written as the
//     controller-manager would) learns under a Learn policy; the workload's
//     WorkloadPolicyProposal lists exactly what ran in its container, owned by the
//     Deployment; promote.Promote (the kubectl plugin's code path) turns it into a
//     Protect policy under which new pods run the learnt binaries and are denied
//     anything else;
//  2. 1,000 identical denials in one pod are one Event on the pod with count 1,000
//     (violations.ViolationEvents' series) and add exactly 1,000 to the agent's
//     execgate_agent_violations_total.
func TestLearnPromoteLoop(t *testing.T) {
	env := startEnv(t, framework.Options{Nodes: 1})
	ctx := context.Background()
	const (
		ns         = "learnloop"
		deployName = "web"
		policyName = "web" // the Learn policy the pod template opts into
		rsHash     = "5d8b7c9f6d"
		burstN     = 1000
	)
	rsName := deployName + "-" + rsHash
	createNamespace(t, env, ns)
	sleep, trueBin, uname, ls := bin(t, "sleep"), bin(t, "true"), bin(t, "uname"), bin(t, "ls")
	cat, id := bin(t, "cat"), bin(t, "id")

	// A Learn policy needs no rules.
	learnPolicy := &v1alpha1.WorkloadPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: policyName},
		Spec: v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.ModeLearn}}
	if err := env.Client.Create(ctx, learnPolicy); err != nil {
		t.Fatalf("create Learn policy: %v", err)
	}

	// Deployment -> ReplicaSet -> Pod, as kube-controller-manager writes them (the
	// harness runs none).
	template := podSpec(ns, "", policyName, nil, sleep, "infinity")
	template.Labels = map[string]string{"app": deployName, v1alpha1.PolicyLabel: policyName}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: deployName},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": deployName}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: template.Labels}, Spec: template.Spec},
		},
	}
	if err := env.Client.Create(ctx, dep); err != nil {
		t.Fatalf("create Deployment: %v", err)
	}
	rsLabels := map[string]string{"app": deployName, v1alpha1.PolicyLabel: policyName, appsv1.DefaultDeploymentUniqueLabelKey: rsHash}
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: rsName, Labels: rsLabels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: dep.Name, UID: dep.UID,
				Controller: ptr(true), BlockOwnerDeletion: ptr(true)}}},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": deployName, appsv1.DefaultDeploymentUniqueLabelKey: rsHash}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: rsLabels}, Spec: template.Spec},
		},
	}
	if err := env.Client.Create(ctx, rs); err != nil {
		t.Fatalf("create ReplicaSet: %v", err)
	}
	rsPod := func(suffix, policy string) *corev1.Pod {
		p := podSpec(ns, rsName+"-"+suffix, policy, nil, sleep, "infinity")
		p.Labels = maps.Clone(rsLabels)
		p.Labels[v1alpha1.PolicyLabel] = policy
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID,
			Controller: ptr(true), BlockOwnerDeletion: ptr(true)}}
		return p
	}

	learner := rsPod("lrn01", policyName)
	if err := env.Client.Create(ctx, learner); err != nil {
		t.Fatalf("create learning pod: %v", err)
	}
	n := node(t, env, runningPods(t, env, ns, []string{learner.Name}, 60*time.Second)[learner.Name])
	if _, err := n.WaitPodEnforced(ctx, learner.Name, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	// Learn: run a few binaries in the container.
	learnt := [][]string{{trueBin}, {uname, "-r"}, {ls, "/"}}
	for _, argv := range learnt {
		if out, err := n.Kubelet.Exec(ctx, ns, learner.Name, "app", argv...); err != nil {
			t.Fatalf("Learn mode must allow %v: %v %s", argv, err, out)
		}
	}
	lastExec := time.Now()
	want := []string{sleep, trueBin, uname, ls} // the container's own command and what was run
	slices.Sort(want)

	proposalName := learn.ProposalName(v1alpha1.WorkloadReference{APIVersion: "apps/v1", Kind: "Deployment", Name: deployName})
	if proposalName != "deployment-"+deployName {
		t.Errorf("proposal name %q, documented as deployment-%s", proposalName, deployName)
	}
	var proposal v1alpha1.WorkloadPolicyProposal
	waitFor(t, 60*time.Second, "proposal "+proposalName+" with every executable run", func(ctx context.Context) (bool, string, error) {
		if err := env.Client.Get(ctx, keyOf(ns, proposalName), &proposal); err != nil {
			return false, err.Error(), nil
		}
		got := proposal.Spec.RulesByContainer["app"].Executables
		for _, w := range want {
			if !slices.Contains(got, w) {
				return false, fmt.Sprintf("app lists %v, missing %s", got, w), nil
			}
		}
		total := 0
		for _, r := range proposal.Spec.RulesByContainer {
			total += len(r.Executables)
		}
		if int(proposal.Status.ExecutablesObserved) != total {
			return false, fmt.Sprintf("status.executablesObserved %d, spec lists %d", proposal.Status.ExecutablesObserved, total), nil
		}
		return true, "", nil
	})
	proposalLatency := time.Since(lastExec)
	t.Logf("proposal %s complete %v after the last learnt exec (flush interval %v)", proposalName, proposalLatency.Round(time.Millisecond), learn.DefaultLearnFlushInterval)
	if got := slices.Sorted(maps.Keys(proposal.Spec.RulesByContainer)); !slices.Equal(got, []string{"app"}) {
		t.Errorf("proposal lists containers %v, want exactly [app]", got)
	}
	if got := slices.Sorted(slices.Values(proposal.Spec.RulesByContainer["app"].Executables)); !slices.Equal(got, want) {
		t.Errorf("proposal lists for app %v, want exactly %v", got, want)
	}
	if w := proposal.Spec.Workload; w.APIVersion != "apps/v1" || w.Kind != "Deployment" || w.Name != deployName {
		t.Errorf("proposal's workload is %+v, want apps/v1 Deployment %s", w, deployName)
	}
	if proposal.Status.ObservedPods != 1 || int(proposal.Status.ExecutablesObserved) != len(want) || proposal.Status.LastUpdated == nil {
		t.Errorf("proposal status %+v, want observedPods 1, executablesObserved %d, lastUpdated set", proposal.Status, len(want))
	}

	// Promote, as `kubectl execgate promote deployment-web --mode protect` does: no
	// policy name, so the one the pod template opts into.
	res, err := promote.Promote(ctx, env.Client, ns, proposalName, v1alpha1.ModeProtect, "")
	if err != nil {
		t.Fatalf("promote %s: %v", proposalName, err)
	}
	if res.Policy.Name != policyName || res.Created || res.PreviousMode != v1alpha1.ModeLearn || !res.PodsOptedIn {
		t.Errorf("promote wrote policy %q (created %v, previous mode %q, pods opted in %v), want the template's Learn policy %q updated",
			res.Policy.Name, res.Created, res.PreviousMode, res.PodsOptedIn, policyName)
	}
	var promoted v1alpha1.WorkloadPolicy
	if err := env.Client.Get(ctx, keyOf(ns, res.Policy.Name), &promoted); err != nil {
		t.Fatal(err)
	}
	if promoted.Spec.Mode != v1alpha1.ModeProtect ||
		!slices.Equal(slices.Sorted(slices.Values(promoted.Spec.RulesByContainer["app"].Executables)), want) ||
		len(promoted.Spec.RulesByContainer) != 1 || promoted.Annotations[promote.AnnotationProposal] != proposalName {
		t.Errorf("promoted policy: mode %s, rules %v, annotations %v", promoted.Spec.Mode, promoted.Spec.RulesByContainer, promoted.Annotations)
	}
	gen := uint64(promoted.Generation)
	waitFor(t, 30*time.Second, "promoted policy loaded on "+n.Name, func(ctx context.Context) (bool, string, error) {
		st, err := n.Status(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		for _, p := range st.GetPolicies() {
			if p.GetNamespace() == ns && p.GetName() == promoted.Name {
				return p.GetVersion() == gen, fmt.Sprintf("version %d, want %d", p.GetVersion(), gen), nil
			}
		}
		return false, "policy not loaded", nil
	})

	// New pods of the workload, labelled with the promoted policy: one to check the
	// rules, one for the burst of identical violations.
	protected, burst := rsPod("prt01", promoted.Name), rsPod("brs01", promoted.Name)
	for _, p := range []*corev1.Pod{protected, burst} {
		if err := env.Client.Create(ctx, p); err != nil {
			t.Fatalf("create pod %s: %v", p.Name, err)
		}
	}
	nodeOf := runningPods(t, env, ns, []string{protected.Name, burst.Name}, 60*time.Second)
	for _, p := range []*corev1.Pod{protected, burst} {
		if nodeOf[p.Name] != n.Name {
			t.Fatalf("pod %s on %s, want %s (one node)", p.Name, nodeOf[p.Name], n.Name)
		}
		if _, err := n.WaitPodEnforced(ctx, p.Name, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		// Its own command (sleep, learnt) runs.
		if exited, err := n.Kubelet.ContainerExit(ns, p.Name, "app"); exited || err != nil {
			t.Errorf("pod %s: the container's own command %s exited (%v, %v) under the promoted policy", p.Name, sleep, exited, err)
		}
	}

	t.Run("the promoted policy allows what was learnt and denies the rest", func(t *testing.T) {
		for _, argv := range learnt {
			if out, err := n.Kubelet.Exec(ctx, ns, protected.Name, "app", argv...); err != nil {
				t.Errorf("learnt %v must run under the promoted policy: %v %s", argv, err, out)
			}
		}
		if out, err := n.Kubelet.Exec(ctx, ns, protected.Name, "app", id); !denied(err) {
			t.Errorf("%s was not learnt and must be denied in a new pod, got err %v, output %q", id, err, out)
		}
		// The learning pod carries the same policy: it switched to Protect in place.
		if out, err := n.Kubelet.Exec(ctx, ns, learner.Name, "app", trueBin); err != nil {
			t.Errorf("learnt %s in the learning pod after the promotion: %v %s", trueBin, err, out)
		}
		if out, err := n.Kubelet.Exec(ctx, ns, learner.Name, "app", id); !denied(err) {
			t.Errorf("%s must be denied in the learning pod after the promotion, got err %v, output %q", id, err, out)
		}
	})

	t.Run("1,000 identical denials are one Event of count 1,000 and 1,000 in the agent's counter", func(t *testing.T) {
		labels := map[string]string{"namespace": ns, "policy": ns + "/" + promoted.Name, "action": "denied"}
		const before = 2 // the two denials of id above
		waitMetric(t, n.MetricsURL, "execgate_agent_violations_total", labels, before, 15*time.Second)

		start := time.Now()
		eperm := 0
		for i := range burstN {
			out, err := n.Kubelet.Exec(ctx, ns, burst.Name, "app", cat, "/dev/null")
			if !denied(err) {
				t.Fatalf("exec %d of %s was not denied: err %v, output %q", i, cat, err, out)
			}
			if errors.Is(err, syscall.EPERM) {
				eperm++
			}
		}
		burstEnd := time.Now()
		t.Logf("%d denied execs of %s in %v (%v each; %d refused with EPERM, %d killed at exec)", burstN, cat,
			burstEnd.Sub(start).Round(time.Millisecond), (burstEnd.Sub(start) / burstN).Round(time.Microsecond), eperm, burstN-eperm)

		waitMetric(t, n.MetricsURL, "execgate_agent_violations_total", labels, before+burstN, 30*time.Second)
		t.Logf("agent counter +%d, %v after the burst", burstN, time.Since(burstEnd).Round(time.Millisecond))
		for _, stage := range []string{"ring_buffer", "reader", "subscriber"} {
			if d := scrapeMetric(t, n.MetricsURL, "execgate_agent_events_dropped_total", map[string]string{"stage": stage}); d != 0 {
				t.Errorf("execgate_agent_events_dropped_total{stage=%q} = %v, want 0", stage, d)
			}
		}

		// One series, one Event: created at the first violation, its count patched at
		// most once per window (violations.DefaultViolationWindow).
		var events []corev1.Event
		// Documented: count 1,000 within a window of the burst; twice that on a loaded machine.
		waitFor(t, 2*violations.DefaultViolationWindow, "one Event of count 1,000 on "+burst.Name, func(ctx context.Context) (bool, string, error) {
			var list corev1.EventList
			if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
				return false, err.Error(), nil
			}
			events = events[:0]
			for _, ev := range list.Items {
				// The scheduler's "Scheduled" Event is on the pod too.
				if ev.InvolvedObject.Kind == "Pod" && ev.InvolvedObject.Name == burst.Name && ev.Source.Component == "execgate-controller" {
					events = append(events, ev)
				}
			}
			if len(events) > 1 {
				var desc []string
				for _, ev := range events {
					desc = append(desc, fmt.Sprintf("%s %s count %d from %s: %s", ev.Name, ev.Reason, ev.Count, ev.Source.Component, ev.Message))
				}
				return false, "", fmt.Errorf("%d Events of execgate on the pod, want one: %s", len(events), strings.Join(desc, "; "))
			}
			if len(events) == 0 {
				return false, "no Event of execgate on the pod", nil
			}
			return events[0].Count >= burstN, fmt.Sprintf("count %d", events[0].Count), nil
		})
		t.Logf("Event count %d, %v after the burst", events[0].Count, time.Since(burstEnd).Round(time.Millisecond))
		ev := events[0]
		if ev.Count != burstN {
			t.Errorf("Event count %d, want %d", ev.Count, burstN)
		}
		if ev.Reason != violations.ReasonExecDenied || ev.Type != corev1.EventTypeWarning || ev.InvolvedObject.UID != burst.UID ||
			ev.InvolvedObject.FieldPath != "spec.containers{app}" || !strings.Contains(ev.Message, "exec of "+cat+" denied") {
			t.Errorf("Event %s: reason %q type %q involved %+v message %q", ev.Name, ev.Reason, ev.Type, ev.InvolvedObject, ev.Message)
		}
		if ev.FirstTimestamp.Time.Before(start.Add(-time.Second)) || ev.LastTimestamp.Time.Before(ev.FirstTimestamp.Time) {
			t.Errorf("Event timestamps first %v last %v, burst %v..%v", ev.FirstTimestamp, ev.LastTimestamp, start, burstEnd)
		}
	})
}

// scrapeMetric sums the samples of the metric name whose labels include labels,
// read from a Prometheus text endpoint.
func scrapeMetric(t *testing.T, url, name string, labels map[string]string) float64 {
	t.Helper()
	v, err := readMetric(context.Background(), url, name, labels)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitMetric waits until the metric equals want, and fails t if it does not within
// timeout or goes past it.
func waitMetric(t *testing.T, url, name string, labels map[string]string, want float64, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%s%v = %v", name, labels, want), func(ctx context.Context) (bool, string, error) {
		v, err := readMetric(ctx, url, name, labels)
		if err != nil {
			return false, err.Error(), nil
		}
		if v > want {
			return false, "", fmt.Errorf("%s%v is %v, past %v", name, labels, v, want)
		}
		return v == want, fmt.Sprintf("%v", v), nil
	})
}

func readMetric(ctx context.Context, url, name string, labels map[string]string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", url, err)
	}
	var sum float64
	for _, m := range families[name].GetMetric() {
		match := true
		for k, v := range labels {
			found := false
			for _, l := range m.GetLabel() {
				found = found || (l.GetName() == k && l.GetValue() == v)
			}
			match = match && found
		}
		if match {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue()
		}
	}
	return sum, nil
}
