package agents_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	toolscache "k8s.io/client-go/tools/cache"

	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/webhook/agents"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
)

func agentPod(name, node, ip string, ready bool) *corev1.Pod {
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "execgate", Name: name, Labels: map[string]string{"app": "execgate-agent"}},
		Spec:       corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: cond}}},
	}
}

func TestAgentDirectoryFollowsAgentPods(t *testing.T) {
	sel := labels.SelectorFromSet(labels.Set{"app": "execgate-agent"})
	d := agents.NewAgentDirectory("execgate", sel, 9443, nil)
	var changed []string
	d.OnChange(func(node string) { changed = append(changed, node) })

	steps := []struct {
		name     string
		apply    func()
		node     string
		want     string
		changeOn string
	}{
		{"not ready yet", func() { d.OnAdd(agentPod("agent-1", "node-a", "10.0.0.1", false), true) }, "node-a", "", ""},
		{"ready", func() { d.OnUpdate(nil, agentPod("agent-1", "node-a", "10.0.0.1", true)) }, "node-a", "10.0.0.1:9443", "node-a"},
		{"other namespace ignored", func() {
			p := agentPod("agent-z", "node-z", "10.0.0.9", true)
			p.Namespace = "kube-system"
			d.OnAdd(p, false)
		}, "node-z", "", ""},
		{"other labels ignored", func() {
			p := agentPod("agent-y", "node-y", "10.0.0.8", true)
			p.Labels = nil
			d.OnAdd(p, false)
		}, "node-y", "", ""},
		{"restarted with a new IP", func() { d.OnUpdate(nil, agentPod("agent-1", "node-a", "10.0.0.2", true)) }, "node-a", "10.0.0.2:9443", "node-a"},
		{"deleted (tombstone)", func() {
			d.OnDelete(toolscache.DeletedFinalStateUnknown{Key: "execgate/agent-1", Obj: agentPod("agent-1", "node-a", "10.0.0.2", true)})
		}, "node-a", "", "node-a"},
	}
	for _, s := range steps {
		changed = nil
		s.apply()
		got, _ := d.Lookup(s.node)
		if got != s.want {
			t.Errorf("%s: Lookup(%s) = %q, want %q", s.name, s.node, got, s.want)
		}
		if s.changeOn != "" && (len(changed) != 1 || changed[0] != s.changeOn) {
			t.Errorf("%s: changes %v, want [%s]", s.name, changed, s.changeOn)
		}
		if s.changeOn == "" && len(changed) != 0 {
			t.Errorf("%s: unexpected changes %v", s.name, changed)
		}
	}
}

func TestParseStaticEndpoints(t *testing.T) {
	tests := []struct {
		in      string
		want    map[string]string
		wantErr bool
	}{
		{in: "node-1=127.0.0.1:9443, node-2=[::1]:9444", want: map[string]string{"node-1": "127.0.0.1:9443", "node-2": "[::1]:9444"}},
		{in: "", want: map[string]string{}},
		{in: "node-1", wantErr: true},
		{in: "node-1=127.0.0.1", wantErr: true},
		{in: "a=1.2.3.4:1,a=1.2.3.4:2", wantErr: true},
	}
	for _, tc := range tests {
		got, err := agents.ParseStaticEndpoints(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: err = %v", tc.in, err)
			continue
		}
		if !tc.wantErr && len(got) != len(tc.want) {
			t.Errorf("%q: got %v, want %v", tc.in, got, tc.want)
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("%q: %s = %q, want %q", tc.in, k, got[k], v)
			}
		}
	}
}

// The pool reuses one connection per node, and replaces it when the agent moves.
func TestAgentPoolReconnectsWhenEndpointChanges(t *testing.T) {
	fleet := webhooktest.NewFleet(t)
	fleet.Start(t, "node-a", 0)
	moved := fleet.Start(t, "node-a-2", 0) // a second agent, reused as node-a's new address
	_ = moved
	sel := labels.SelectorFromSet(labels.Set{"app": "execgate-agent"})
	d := agents.NewAgentDirectory("execgate", sel, 0, nil)
	pool, err := agents.NewAgentPool(fleet.Dialer, d, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	// Point node-a at the first agent through a static override of the pod map.
	d.SetAgent("agent-1", "node-a", fleet.Endpoints["node-a"])
	c1, err := pool.Client("node-a")
	if err != nil {
		t.Fatal(err)
	}
	if c2, _ := pool.Client("node-a"); c2 != c1 {
		t.Error("second Client call dialled again")
	}
	if _, err := c1.GetStatus(context.Background(), &agentv1.GetStatusRequest{}); err != nil {
		t.Fatalf("GetStatus over mTLS: %v", err)
	}
	d.SetAgent("agent-1", "node-a", fleet.Endpoints["node-a-2"])
	if pool.Len() != 0 {
		t.Errorf("connection not closed when the endpoint changed (len %d)", pool.Len())
	}
	c3, err := pool.Client("node-a")
	if err != nil || c3 == c1 {
		t.Fatalf("Client after move: %v (same client: %v)", err, c3 == c1)
	}
	if _, err := pool.Client("node-gone"); err == nil {
		t.Error("Client for an unknown node succeeded")
	}
	// Bounded: a third node evicts the least recently used connection.
	d.SetAgent("agent-2", "node-b", fleet.Endpoints["node-a"])
	d.SetAgent("agent-3", "node-c", fleet.Endpoints["node-a"])
	for _, n := range []string{"node-b", "node-c"} {
		if _, err := pool.Client(n); err != nil {
			t.Fatal(err)
		}
	}
	if pool.Len() != 2 {
		t.Errorf("pool holds %d connections, want at most 2", pool.Len())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := c1.GetStatus(ctx, &agentv1.GetStatusRequest{}); err == nil {
		t.Error("closed connection still works")
	}
}
