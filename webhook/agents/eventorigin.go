package agents

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/execgate/execgate/api/v1alpha1"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// EventVerifier decides whether an exec event a node's agent streamed can be true.
// *EventOrigin implements it. VerifyEvent runs on the stream goroutine of the node, for
// every event, before any sink sees it: it must return quickly and not modify ev.
type EventVerifier interface {
	// VerifyEvent returns "" to accept ev, received on node's stream, or why to drop it
	// and a line for the log.
	VerifyEvent(ctx context.Context, node string, ev *agentv1.ExecEvent) (DropReason, string)
}

// DropReason says why an event was dropped: the label "reason" of
// execgate_controller_agent_events_dropped_total.
type DropReason string

const (
	DropNoPod          DropReason = "no_pod"            // the event names no pod: nothing to check it against
	DropPodNotFound    DropReason = "pod_not_found"     // no such pod (in the controller's cache)
	DropPodOnOtherNode DropReason = "pod_on_other_node" // the pod's spec.nodeName is not the stream's node
	DropPolicyMismatch DropReason = "policy_mismatch"   // the pod's execgate.io/policy label names another policy
	DropPolicyNotFound DropReason = "policy_not_found"  // the WorkloadPolicy does not exist
	DropModeMismatch   DropReason = "mode_mismatch"     // the policy is not in the mode the event claims, or the action does not fit it
	DropLookupFailed   DropReason = "lookup_failed"     // the pod or policy could not be read: dropped, not trusted
)

var agentEventsDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "execgate_controller_agent_events_dropped_total",
	Help: "Exec events from node agents dropped before violations and Learn saw them, because they cannot be true for the node that sent them, by node and reason (no_pod, pod_not_found, pod_on_other_node, policy_mismatch, policy_not_found, mode_mismatch, lookup_failed). A node whose count keeps rising reports on pods it does not run, or in modes their policies are not in: a forged stream.",
}, []string{"node", "reason"})

func init() { metrics.Registry.MustRegister(agentEventsDropped) }

// EventOrigin accepts an event only if the node that streamed it could have seen it: the
// pod it names runs on that node (spec.nodeName), is labelled with the policy the event
// names, and that policy is in the mode the event claims, with the action that mode
// takes (Learn: learned, Monitor: reported, Protect: denied). The stream, not the
// message, says which node an event comes from (AgentEventStream sets ev.Node from the
// connection). So a compromised node can no longer plant executables into the proposal
// of a workload it does not run, raise violations on other nodes' pods, or turn a
// Protect workload's pods into Learn input (issue 14).
//
// What it cannot tell: anything a node says about its own pods that fits their policy.
// A node running one replica of a Learn workload can still add executables to that
// workload's proposal; proposals are reviewed before promotion for that reason.
type EventOrigin struct {
	// Reader reads pods and WorkloadPolicies: the manager's cache, so that a check costs
	// no API request (a forged stream must not become load on the API server).
	Reader client.Reader
}

var _ EventVerifier = (*EventOrigin)(nil)

// VerifyEvent implements EventVerifier.
func (o *EventOrigin) VerifyEvent(ctx context.Context, node string, ev *agentv1.ExecEvent) (DropReason, string) {
	if ev.GetNamespace() == "" || ev.GetPod() == "" {
		return DropNoPod, fmt.Sprintf("the event names no pod (policy %q)", ev.GetPolicy())
	}
	var pod corev1.Pod
	if err := o.Reader.Get(ctx, types.NamespacedName{Namespace: ev.GetNamespace(), Name: ev.GetPod()}, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			return DropPodNotFound, fmt.Sprintf("pod %s/%s does not exist", ev.GetNamespace(), ev.GetPod())
		}
		return DropLookupFailed, fmt.Sprintf("read pod %s/%s: %v", ev.GetNamespace(), ev.GetPod(), err)
	}
	if pod.Spec.NodeName != node {
		return DropPodOnOtherNode, fmt.Sprintf("pod %s/%s runs on node %q, not on %q", pod.Namespace, pod.Name, pod.Spec.NodeName, node)
	}
	label, labelled := pod.Labels[v1alpha1.PolicyLabel]
	if want := pod.Namespace + "/" + label; !labelled || ev.GetPolicy() != want {
		return DropPolicyMismatch, fmt.Sprintf("the event names policy %q; pod %s/%s is labelled %s=%q", ev.GetPolicy(), pod.Namespace, pod.Name, v1alpha1.PolicyLabel, label)
	}
	var policy v1alpha1.WorkloadPolicy
	if err := o.Reader.Get(ctx, types.NamespacedName{Namespace: pod.Namespace, Name: label}, &policy); err != nil {
		if apierrors.IsNotFound(err) {
			return DropPolicyNotFound, fmt.Sprintf("WorkloadPolicy %s/%s does not exist", pod.Namespace, label)
		}
		return DropLookupFailed, fmt.Sprintf("read WorkloadPolicy %s/%s: %v", pod.Namespace, label, err)
	}
	mode, err := agentMode(policy.Spec.Mode)
	if err != nil || ev.GetMode() != mode || ev.GetAction() != actionOf(mode) {
		return DropModeMismatch, fmt.Sprintf("the event claims mode %s and action %s; WorkloadPolicy %s/%s is in mode %q",
			ev.GetMode(), ev.GetAction(), policy.Namespace, policy.Name, policy.Spec.Mode)
	}
	return "", ""
}

// actionOf is the one action the kernel program takes outside the allowlist in mode.
func actionOf(mode agentv1.Mode) agentv1.Action {
	switch mode {
	case agentv1.Mode_MODE_LEARN:
		return agentv1.Action_ACTION_ALLOWED_LEARN
	case agentv1.Mode_MODE_MONITOR:
		return agentv1.Action_ACTION_REPORTED
	case agentv1.Mode_MODE_PROTECT:
		return agentv1.Action_ACTION_DENIED
	}
	return agentv1.Action_ACTION_UNSPECIFIED
}
