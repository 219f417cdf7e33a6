package agents

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// CompilePodPolicy builds the request that puts policy in force for pod on node. It
// carries the whole policy, every RulesByContainer key ("*" included), whatever
// containers the pod has, and its content digest: the agent loads one version per node
// and binds each container to its own rules, so the second pod sharing the policy on a
// node finds its containers' rules loaded, and the agent's own watch of the API server
// loads the identical version (issue 14). It fails if the policy does not validate: the
// agent would refuse it anyway, and the error names the field to fix.
func CompilePodPolicy(pod *corev1.Pod, node string, policy *v1alpha1.WorkloadPolicy, requestID string) (*agentv1.ApplyPodPolicyRequest, error) {
	if err := policy.Validate(); err != nil {
		return nil, fmt.Errorf("policy %s/%s is invalid: %w", policy.Namespace, policy.Name, err)
	}
	mode, err := agentMode(policy.Spec.Mode)
	if err != nil {
		return nil, err
	}
	if policy.Generation < 1 {
		return nil, fmt.Errorf("policy %s/%s has no metadata.generation", policy.Namespace, policy.Name)
	}
	names := containerNames(pod)
	containers := make([]*agentv1.Container, 0, len(names))
	for _, name := range names {
		containers = append(containers, &agentv1.Container{Name: name, ContainerId: containerID(pod, name)})
	}
	rules := make(map[string]*agentv1.Rules, len(policy.Spec.RulesByContainer))
	paths := make(map[string][]string, len(policy.Spec.RulesByContainer))
	for key, r := range policy.Spec.RulesByContainer {
		rules[key] = &agentv1.Rules{Executables: append([]string(nil), r.Executables...)}
		paths[key] = r.Executables
	}
	return &agentv1.ApplyPodPolicyRequest{
		Pod: &agentv1.Pod{
			Uid:        string(pod.UID),
			Namespace:  pod.Namespace,
			Name:       pod.Name,
			NodeName:   node,
			QosClass:   agentQOS(podQOSClass(pod)),
			Containers: containers,
		},
		Policy: &agentv1.Policy{
			Uid:              string(policy.UID),
			Namespace:        policy.Namespace,
			Name:             policy.Name,
			Generation:       uint64(policy.Generation),
			Mode:             mode,
			RulesByContainer: rules,
			Digest:           podpolicy.Digest(podpolicy.Mode(mode), paths),
		},
		RequestId: requestID,
	}, nil
}

// WritableRootContainers names the pod's init and regular containers without
// securityContext.readOnlyRootFilesystem: true: there an allowed path can be
// overwritten with another program, which the agent then lets run as the allowed one.
func WritableRootContainers(pod *corev1.Pod) []string {
	var out []string
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				out = append(out, c.Name)
			}
		}
	}
	return out
}

func agentMode(m v1alpha1.Mode) (agentv1.Mode, error) {
	switch m {
	case v1alpha1.ModeLearn:
		return agentv1.Mode_MODE_LEARN, nil
	case v1alpha1.ModeMonitor:
		return agentv1.Mode_MODE_MONITOR, nil
	case v1alpha1.ModeProtect:
		return agentv1.Mode_MODE_PROTECT, nil
	}
	return agentv1.Mode_MODE_UNSPECIFIED, fmt.Errorf("mode %q is not Learn, Monitor or Protect", m)
}

// containerNames lists init, regular and ephemeral containers (names are unique across
// the three).
func containerNames(pod *corev1.Pod) []string {
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
	return names
}

func containerID(pod *corev1.Pod, name string) string {
	for _, list := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses, pod.Status.EphemeralContainerStatuses} {
		for _, s := range list {
			if s.Name == name {
				return s.ContainerID
			}
		}
	}
	return ""
}

func agentQOS(q corev1.PodQOSClass) agentv1.QOSClass {
	switch q {
	case corev1.PodQOSGuaranteed:
		return agentv1.QOSClass_QOS_CLASS_GUARANTEED
	case corev1.PodQOSBurstable:
		return agentv1.QOSClass_QOS_CLASS_BURSTABLE
	default:
		return agentv1.QOSClass_QOS_CLASS_BEST_EFFORT
	}
}

// podQOSClass returns status.qosClass, which the API server sets at creation; for a pod
// that lacks it (an old object, a test fixture) it recomputes the class the way kubelet
// does for cpu and memory: no requests or limits at all is BestEffort, limits equal to
// requests for both resources in every container is Guaranteed, anything else Burstable.
// Pod-level resources are not considered.
func podQOSClass(pod *corev1.Pod) corev1.PodQOSClass {
	if pod.Status.QOSClass != "" {
		return pod.Status.QOSClass
	}
	hasAny, guaranteed := false, true
	check := func(c corev1.Container) {
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, hasReq := c.Resources.Requests[res]
			lim, hasLim := c.Resources.Limits[res]
			if (hasReq && !req.IsZero()) || (hasLim && !lim.IsZero()) {
				hasAny = true
			}
			if !hasLim || lim.IsZero() || (hasReq && req.Cmp(lim) != 0) {
				guaranteed = false
			}
		}
	}
	for _, c := range pod.Spec.InitContainers {
		check(c)
	}
	for _, c := range pod.Spec.Containers {
		check(c)
	}
	switch {
	case !hasAny:
		return corev1.PodQOSBestEffort
	case guaranteed:
		return corev1.PodQOSGuaranteed
	default:
		return corev1.PodQOSBurstable
	}
}
