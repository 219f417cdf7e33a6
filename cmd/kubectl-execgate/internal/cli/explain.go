package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/api/v1alpha1"
)

// InForce is explain's verdict.
type InForce string

const (
	// InForceYes: the pod's node enforces the policy's current generation.
	InForceYes InForce = "Yes"
	// InForceOutdated: the node enforces an older generation; the new one is rolling out.
	InForceOutdated InForce = "Outdated"
	// InForceNo: nothing is enforced on the pod.
	InForceNo InForce = "No"
	// InForceUnknown: the node's report does not tell.
	InForceUnknown InForce = "Unknown"
)

// Explanation is what explain found out about one pod.
type Explanation struct {
	Pod  string `json:"pod"`
	Node string `json:"node,omitempty"`
	// Policy is the pod's execgate.io/policy label.
	Policy       string                         `json:"policy,omitempty"`
	PolicyExists bool                           `json:"policyExists"`
	Mode         v1alpha1.Mode                  `json:"mode,omitempty"`
	Generation   int64                          `json:"generation,omitempty"`
	PolicyStatus *v1alpha1.WorkloadPolicyStatus `json:"policyStatus,omitempty"`
	Containers   []ContainerRules               `json:"containers,omitempty"`
	// NodeReported is false when the node has no ExecgateNode.
	NodeReported   bool                 `json:"nodeReported"`
	NodeAttachMode v1alpha1.AttachMode  `json:"nodeAttachMode,omitempty"`
	NodeLoaded     *v1alpha1.NodePolicy `json:"nodeLoaded,omitempty"`
	InForce        InForce              `json:"inForce"`
	// Why explains InForce in a sentence.
	Why string `json:"why"`
}

// ContainerRules says which rules of the policy apply to one container of the pod.
type ContainerRules struct {
	Name string `json:"name"`
	// From is the RulesByContainer key that applies: the container's name, "*", or ""
	// when none does (the container may execute nothing).
	From        string `json:"from"`
	Executables int    `json:"executables"`
}

func newExplainCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "explain POD",
		Short: "Say which policy a pod runs under, in which mode, and whether its node enforces it",
		Long: `Say which WorkloadPolicy a pod opts into (its execgate.io/policy label), whether
that policy exists, its mode and the rules each container gets, and whether the
pod's node enforces it, according to the node's ExecgateNode (the policies the
node's agent has loaded, with their generation).`,
		Example: `  kubectl execgate explain web-7d9f-x2k4 -n shop`,
		Args:    exactArg("pod name"),
		PreRunE: func(_ *cobra.Command, args []string) error {
			if msgs := validation.IsDNS1123Subdomain(args[0]); len(msgs) > 0 {
				return usagef("%q is not a pod name: %s", args[0], strings.Join(msgs, "; "))
			}
			return nil
		},
		RunE: runE(func(ctx context.Context, args []string) error { return o.explain(ctx, args[0]) }),
	}
}

func (o *options) explain(ctx context.Context, podName string) error {
	c, err := o.connect()
	if err != nil {
		return err
	}
	var pod corev1.Pod
	if err := c.objects.Get(ctx, client.ObjectKey{Namespace: c.namespace, Name: podName}, &pod); err != nil {
		return fmt.Errorf("get pod %s/%s: %w", c.namespace, podName, err)
	}
	x, err := explainPod(ctx, c.objects, &pod)
	if err != nil {
		return err
	}
	if o.machineReadable() {
		return o.print(x)
	}
	return x.write(o.stdout)
}

func explainPod(ctx context.Context, c client.Client, pod *corev1.Pod) (*Explanation, error) {
	x := &Explanation{Pod: pod.Namespace + "/" + pod.Name, Node: pod.Spec.NodeName, Policy: pod.Labels[v1alpha1.PolicyLabel]}
	if x.Policy == "" {
		x.InForce, x.Why = InForceNo, fmt.Sprintf("the pod has no %s label: execgate enforces nothing on it", v1alpha1.PolicyLabel)
		return x, nil
	}
	var policy v1alpha1.WorkloadPolicy
	err := c.Get(ctx, client.ObjectKey{Namespace: pod.Namespace, Name: x.Policy}, &policy)
	switch {
	case apierrors.IsNotFound(err):
		x.InForce, x.Why = InForceNo, fmt.Sprintf("the pod names WorkloadPolicy %q, which does not exist in namespace %s: create it, or fix the label", x.Policy, pod.Namespace)
		return x, nil
	case err != nil:
		return nil, explainAPIError(err, fmt.Sprintf("get WorkloadPolicy %s/%s", pod.Namespace, x.Policy))
	}
	x.PolicyExists, x.Mode, x.Generation = true, policy.Spec.Mode, policy.Generation
	x.PolicyStatus = policy.Status.DeepCopy()
	x.Containers = containerRules(pod, policy.Spec.RulesByContainer)

	switch {
	case pod.Spec.NodeName == "":
		x.InForce, x.Why = InForceNo, "the pod is not scheduled yet: its node loads the policy when the pod is bound"
		return x, nil
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		x.InForce, x.Why = InForceNo, fmt.Sprintf("the pod has finished (%s): nothing runs to enforce", pod.Status.Phase)
		return x, nil
	}
	var node v1alpha1.ExecgateNode
	err = c.Get(ctx, client.ObjectKey{Name: pod.Spec.NodeName}, &node)
	switch {
	case apierrors.IsNotFound(err) || meta.IsNoMatchError(err):
		x.InForce, x.Why = InForceUnknown, fmt.Sprintf("node %s has no ExecgateNode: its execgate agent has not reported (not running there, or cannot write execgatenodes)", x.Node)
		return x, nil
	case err != nil:
		return nil, explainAPIError(err, "get ExecgateNode "+x.Node)
	}
	x.NodeReported, x.NodeAttachMode = true, node.Status.AttachMode
	loaded, ok := node.Status.Policy(pod.Namespace, x.Policy)
	if ok {
		x.NodeLoaded = &loaded
	}
	key := pod.Namespace + "/" + x.Policy
	switch {
	case !ok && node.Status.PoliciesTruncated:
		x.InForce, x.Why = InForceUnknown, fmt.Sprintf("node %s lists only %d of its %d policies, not %s", x.Node, len(node.Status.Policies), node.Status.PolicyCount, key)
	case !ok:
		x.InForce, x.Why = InForceNo, fmt.Sprintf("node %s has not loaded %s%s", x.Node, key, failingReason(&policy, x.Node))
	case loaded.Version == policy.Generation:
		x.InForce, x.Why = InForceYes, fmt.Sprintf("node %s enforces generation %d of %s in mode %s", x.Node, loaded.Version, key, loaded.Mode)
	case loaded.Version < policy.Generation:
		x.InForce, x.Why = InForceOutdated, fmt.Sprintf("node %s enforces generation %d of %s in mode %s; generation %d is not loaded yet%s",
			x.Node, loaded.Version, key, loaded.Mode, policy.Generation, failingReason(&policy, x.Node))
	default:
		x.InForce, x.Why = InForceUnknown, fmt.Sprintf("node %s enforces generation %d of %s, newer than the policy's %d: was the policy deleted and created again?",
			x.Node, loaded.Version, key, policy.Generation)
	}
	return x, nil
}

// failingReason quotes the policy status's reason for the node, if it lists one.
func failingReason(p *v1alpha1.WorkloadPolicy, node string) string {
	for _, f := range p.Status.FailingNodes {
		if f.Node == node {
			return fmt.Sprintf(" (the policy's status says: %s)", f.Reason)
		}
	}
	return ""
}

func containerRules(pod *corev1.Pod, rules v1alpha1.RulesByContainer) []ContainerRules {
	var names []string
	for _, c := range pod.Spec.InitContainers {
		names = append(names, c.Name)
	}
	for _, c := range pod.Spec.Containers {
		names = append(names, c.Name)
	}
	for _, c := range pod.Spec.EphemeralContainers {
		names = append(names, c.Name)
	}
	out := make([]ContainerRules, 0, len(names))
	for _, name := range names {
		cr := ContainerRules{Name: name}
		if r, ok := rules[name]; ok {
			cr.From, cr.Executables = name, len(r.Executables)
		} else if r, ok := rules[v1alpha1.AnyContainer]; ok {
			cr.From, cr.Executables = v1alpha1.AnyContainer, len(r.Executables)
		}
		out = append(out, cr)
	}
	return out
}

func (x *Explanation) write(w io.Writer) error {
	node := x.Node
	if node == "" {
		node = "not scheduled"
	}
	fmt.Fprintf(w, "Pod:        %s (node %s)\n", x.Pod, node)
	switch {
	case x.Policy == "":
		fmt.Fprintf(w, "Policy:     none (no %s label)\n", v1alpha1.PolicyLabel)
	case !x.PolicyExists:
		fmt.Fprintf(w, "Policy:     %s (does not exist)\n", x.Policy)
	default:
		fmt.Fprintf(w, "Policy:     %s (generation %d, mode %s)\n", x.Policy, x.Generation, x.Mode)
		switch s := x.PolicyStatus; {
		case s == nil || s.ObservedGeneration == 0:
			fmt.Fprintln(w, "Status:     not reported by the execgate controller yet")
		default:
			readyText := "Ready unknown"
			if ready := meta.FindStatusCondition(s.Conditions, v1alpha1.ConditionReady); ready != nil {
				readyText = fmt.Sprintf("Ready=%s (%s)", ready.Status, ready.Reason)
			}
			of := ""
			if s.ObservedGeneration != x.Generation {
				of = fmt.Sprintf(" (of generation %d)", s.ObservedGeneration)
			}
			fmt.Fprintf(w, "Status:     %s%s, %d/%d pods in force on %d node(s), %d node(s) failing\n",
				readyText, of, s.PodsInForce, s.PodsTotal, s.NodesInForce, s.FailingNodesTotal)
		}
		for i, c := range x.Containers {
			label := "Containers:"
			if i > 0 {
				label = ""
			}
			fmt.Fprintf(w, "%-11s %s\n", label, c.describe(x.Mode))
		}
	}
	if x.NodeReported {
		fmt.Fprintf(w, "Node:       %s, attach mode %s: %s\n", x.Node, x.NodeAttachMode, denialLooksLike(x.NodeAttachMode))
	}
	fmt.Fprintf(w, "In force:   %s: %s\n", x.InForce, x.Why)
	return nil
}

func (c ContainerRules) describe(mode v1alpha1.Mode) string {
	switch {
	case c.From == "" && mode == v1alpha1.ModeLearn:
		return fmt.Sprintf("%s: no rules (Learn mode records what it runs)", c.Name)
	case c.From == "":
		return fmt.Sprintf("%s: no rules, and no \"*\" entry: it may execute nothing", c.Name)
	case c.From == v1alpha1.AnyContainer:
		return fmt.Sprintf("%s: %d executable(s), from the \"*\" entry", c.Name, c.Executables)
	}
	return fmt.Sprintf("%s: %d executable(s)", c.Name, c.Executables)
}

func denialLooksLike(m v1alpha1.AttachMode) string {
	switch m {
	case v1alpha1.AttachLSM, v1alpha1.AttachFmodRet, v1alpha1.AttachFanotify:
		return "a denied execve fails with EPERM"
	case v1alpha1.AttachExecKill:
		return "a denied process is killed (SIGKILL) before its first instruction"
	}
	return "unknown how a denial looks"
}
