package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/execgate/execgate/nodeagent/agent"
	"github.com/execgate/execgate/test/e2e/cluster"
	"github.com/execgate/execgate/test/e2e/framework"
)

// TestAgentStartupTaintGuard is issue 14.7 at a real kube-apiserver, with the agent's
// RBAC and agent-node guard as the chart renders them: an agent may lift the startup
// taint from its own Node (agent.RemoveNodeTaint, as the running agent does), and
// nothing else: not another node's taint, not another taint, label or field of its own.
func TestAgentStartupTaintGuard(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := c.CreateNamespace(ctx, framework.Namespace); err != nil {
		t.Fatal(err)
	}
	saName, nodeA, nodeB := agentIdentityOnTwoNodes(ctx, t, c)
	startup := corev1.Taint{Key: agent.StartupTaintKey, Effect: corev1.TaintEffectNoSchedule}
	other := corev1.Taint{Key: "example.com/maintenance", Effect: corev1.TaintEffectNoSchedule}
	for _, n := range []string{nodeA, nodeB} {
		node, err := c.Client.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		node.Spec.Taints = append(node.Spec.Taints, startup, other)
		if _, err := c.Client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	agentA := agentClientsFor(ctx, t, c, saName, agentPod(ctx, t, c, saName, nodeA))

	patch := func(node, body string) error {
		_, err := agentA.kube.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(body), metav1.PatchOptions{})
		return err
	}
	// The guard takes effect once the API server's admission informers see it: wait
	// until node A's agent is refused node B's taint removal, at most 20 s.
	deadline := time.Now().Add(20 * time.Second)
	var errB error
	for {
		var removed bool
		removed, errB = agent.RemoveNodeTaint(ctx, agentA.kube, nodeB, agent.StartupTaintKey)
		if errB != nil || time.Now().After(deadline) {
			break
		}
		if removed { // not enforced yet: put it back, try again
			addTaint(ctx, t, c, nodeB, startup)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if errB == nil {
		t.Fatalf("node %s's agent removed node %s's startup taint", nodeA, nodeB)
	}
	expectGuardRefusal(t, errB, "may change only its own Node, not "+nodeB)

	refused := []struct{ name, node, body, want string }{
		{"removes another taint of its own Node", nodeA,
			fmt.Sprintf(`{"spec":{"taints":[{"key":%q,"effect":"NoSchedule"}]}}`, agent.StartupTaintKey), "only by removing " + agent.StartupTaintKey},
		{"adds a taint to its own Node", nodeA,
			fmt.Sprintf(`{"spec":{"taints":[{"key":%q,"effect":"NoSchedule"},{"key":%q,"effect":"NoSchedule"},{"key":"x/y","effect":"NoExecute"}]}}`, agent.StartupTaintKey, other.Key),
			"only by removing " + agent.StartupTaintKey},
		{"labels its own Node", nodeA, `{"metadata":{"labels":{"node-role.kubernetes.io/control-plane":""}}}`, "changes nothing of a Node but the startup taint"},
		{"cordons its own Node", nodeA, `{"spec":{"unschedulable":true}}`, "changes nothing of a Node but the startup taint"},
		{"labels node B", nodeB, `{"metadata":{"labels":{"x":"y"}}}`, "may change only its own Node, not " + nodeB},
	}
	for _, tc := range refused {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			expectGuardRefusal(t, patch(tc.node, tc.body), tc.want)
		})
	}
	if err := agentA.kube.CoreV1().Nodes().Delete(ctx, nodeA, metav1.DeleteOptions{}); err == nil {
		t.Fatal("node A's agent deleted its own Node")
	}

	removed, err := agent.RemoveNodeTaint(ctx, agentA.kube, nodeA, agent.StartupTaintKey)
	if err != nil || !removed {
		t.Fatalf("node A's agent removes its own startup taint: removed %v, err %v", removed, err)
	}
	for node, want := range map[string][]string{nodeA: {other.Key}, nodeB: {agent.StartupTaintKey, other.Key}} {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, tn := range n.Spec.Taints {
			got = append(got, tn.Key)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("node %s taints %v, want %v", node, got, want)
		}
	}
}

func addTaint(ctx context.Context, t *testing.T, c *cluster.Cluster, node string, taint corev1.Taint) {
	t.Helper()
	n, err := c.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Spec.Taints = append([]corev1.Taint{taint}, n.Spec.Taints...)
	if _, err := c.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
