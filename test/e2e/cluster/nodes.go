package cluster

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NodeNamePrefix prefixes the names CreateNodes gives: execgate-node-0, -1, ...
const NodeNamePrefix = "execgate-node-"

// CreateNodes registers n Ready nodes (4 CPU, 8Gi, 110 pods, linux/amd64) that the
// scheduler can bind pods to, and returns them. Names continue across calls.
//
// The TaintNodesByCondition admission plugin puts node.kubernetes.io/not-ready on
// every new Node; kube-controller-manager's node lifecycle controller would remove it
// once the node reports Ready, so CreateNodes does that itself. No kubelet heartbeats
// the nodes and none needs to: only that same controller (not running here) taints
// nodes whose heartbeats go stale, and the scheduler does not read leases.
func (c *Cluster) CreateNodes(ctx context.Context, n int) ([]*corev1.Node, error) {
	nodes := make([]*corev1.Node, 0, n)
	for range n {
		name := fmt.Sprintf("%s%d", NodeNamePrefix, c.nodeSeq.Add(1)-1)
		node, err := c.createReadyNode(ctx, name)
		if err != nil {
			return nodes, err
		}
		nodes = append(nodes, node)
	}
	return nodes, nil
}

func (c *Cluster) createReadyNode(ctx context.Context, name string) (*corev1.Node, error) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: name,
		Labels: map[string]string{
			corev1.LabelHostname:   name,
			corev1.LabelOSStable:   "linux",
			corev1.LabelArchStable: "amd64",
		},
	}}
	created, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create node %s: %w", name, err)
	}
	// Status is a subresource: what Create was given is dropped.
	created.Status = readyNodeStatus(name)
	withStatus, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("set status of node %s: %w", name, err)
	}
	withStatus.Spec.Taints = withoutTaint(withStatus.Spec.Taints, corev1.TaintNodeNotReady)
	ready, err := c.Client.CoreV1().Nodes().Update(ctx, withStatus, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("remove %s taint from node %s: %w", corev1.TaintNodeNotReady, name, err)
	}
	return ready, nil
}

func withoutTaint(taints []corev1.Taint, key string) []corev1.Taint {
	var kept []corev1.Taint
	for _, t := range taints {
		if t.Key != key {
			kept = append(kept, t)
		}
	}
	return kept
}

func readyNodeStatus(name string) corev1.NodeStatus {
	now := metav1.Now()
	resources := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("4"),
		corev1.ResourceMemory: resource.MustParse("8Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	condition := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return corev1.NodeStatus{
		Capacity:    resources,
		Allocatable: resources,
		Phase:       corev1.NodeRunning,
		Conditions: []corev1.NodeCondition{
			condition(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady"),
			condition(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory"),
			condition(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure"),
			condition(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID"),
			condition(corev1.NodeNetworkUnavailable, corev1.ConditionFalse, "RouteCreated"),
		},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
			{Type: corev1.NodeHostName, Address: name},
		},
		NodeInfo: corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: "amd64", KubeletVersion: "v1.37.2"},
	}
}
