package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MaxNodePolicies bounds status.policies of an ExecgateNode. A node enforces only the
// policies of the pods it runs (at most a few hundred), so the bound is only reached by a
// misbehaving cluster; status.policyCount still counts them all.
const MaxNodePolicies = 512

// AttachMode is how the node agent's exec hook is attached to the kernel (see the README's
// table of attach modes).
// +kubebuilder:validation:Enum=lsm;fmod_ret;fanotify;exec_kill
type AttachMode string

const (
	// AttachLSM: BPF LSM program; a denied execve fails with EPERM.
	AttachLSM AttachMode = "lsm"
	// AttachFmodRet: BPF trampoline on the LSM hook; a denied execve fails with EPERM.
	AttachFmodRet AttachMode = "fmod_ret"
	// AttachFanotify: exec tracepoint plus a fanotify permission gate that asks the same
	// program; a denied execve fails with EPERM (no BPF trampolines needed).
	AttachFanotify AttachMode = "fanotify"
	// AttachExecKill: exec tracepoint; a denied process is killed before its first
	// instruction.
	AttachExecKill AttachMode = "exec_kill"
)

// NodePolicy is one policy version loaded in a node's kernel.
type NodePolicy struct {
	// Namespace of the WorkloadPolicy.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace"`

	// Name of the WorkloadPolicy.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Name string `json:"name"`

	// Version is the policy's metadata.generation that the node enforces.
	// +required
	// +kubebuilder:validation:Minimum=0
	Version int64 `json:"version"`

	// Mode is the mode of that version.
	// +optional
	Mode Mode `json:"mode,omitempty"`
}

// AttachRefusal says why a node's kernel refused an attach mode.
type AttachRefusal struct {
	// Mode is the attach mode refused.
	// +required
	Mode AttachMode `json:"mode"`

	// Reason is one line saying why.
	// +required
	// +kubebuilder:validation:MaxLength=512
	Reason string `json:"reason"`
}

// ExecgateNodeStatus is what one node's agent enforces, as the agent last reported it.
// The agent rewrites it only when it changes: soon after a pod or policy change, and at
// most once per --node-status-interval for the counters.
type ExecgateNodeStatus struct {
	// AttachMode is how the exec hook is attached on this node.
	// +optional
	AttachMode AttachMode `json:"attachMode,omitempty"`

	// AttachRefusals lists, best first, the attach modes better than AttachMode that the
	// node's kernel refused, each with the reason (the verifier's error line, or what the
	// kernel lacks, such as "bpf" in the boot-time LSM list).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=4
	AttachRefusals []AttachRefusal `json:"attachRefusals,omitempty"`

	// ContainerIdentity says where the agent learns container names: nri (the container
	// runtime, before each container starts: every container runs its own rules from its
	// first exec) or pod-status (the kubelet's reports: until a container is reported it
	// runs under its pod's union of every container's rules).
	// +optional
	// +kubebuilder:validation:Enum=nri;pod-status
	ContainerIdentity string `json:"containerIdentity,omitempty"`

	// Kernel is the node's kernel release (uname -r).
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Kernel string `json:"kernel,omitempty"`

	// BPFLSMActive says whether "bpf" is in the kernel's LSM list, which the lsm attach
	// mode needs.
	// +optional
	BPFLSMActive bool `json:"bpfLSMActive"`

	// PodsInForce counts the pods whose cgroups are bound to their policy.
	// +optional
	// +kubebuilder:validation:Minimum=0
	PodsInForce int32 `json:"podsInForce"`

	// PodsPending counts the pods whose policy is loaded but whose cgroup has not
	// appeared yet.
	// +optional
	// +kubebuilder:validation:Minimum=0
	PodsPending int32 `json:"podsPending"`

	// PolicyCount counts the policies loaded on the node, including any beyond the
	// MaxNodePolicies listed in Policies.
	// +optional
	// +kubebuilder:validation:Minimum=0
	PolicyCount int32 `json:"policyCount"`

	// Policies lists the loaded policies, sorted by namespace and name; at most 512.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=512
	Policies []NodePolicy `json:"policies,omitempty"`

	// PoliciesTruncated is true when Policies lists fewer than PolicyCount.
	// +optional
	PoliciesTruncated bool `json:"policiesTruncated"`

	// KernelMemoryBytes is the kernel memory charged to execgate's BPF maps.
	// +optional
	// +kubebuilder:validation:Minimum=0
	KernelMemoryBytes int64 `json:"kernelMemoryBytes"`

	// MapEntries counts the entries execgate wrote into its BPF maps.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MapEntries int64 `json:"mapEntries"`

	// EventsDropped counts exec events lost since the agent started (ring buffer full, or
	// slow consumers).
	// +optional
	// +kubebuilder:validation:Minimum=0
	EventsDropped int64 `json:"eventsDropped"`

	// AgentVersion is the version of the agent that wrote this status.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	AgentVersion string `json:"agentVersion,omitempty"`

	// LastUpdated is when the agent last wrote this status.
	// +optional
	LastUpdated *metav1.Time `json:"lastUpdated,omitempty"`
}

// ExecgateNode reports what execgate enforces on one node. Its name is the node's name; the
// node's agent creates it, owned by the Node so that it goes away with the node. It has no
// spec: nothing about a node is configured here.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=egn,categories=execgate
// +kubebuilder:printcolumn:name="Attach",type=string,JSONPath=`.status.attachMode`
// +kubebuilder:printcolumn:name="Pods",type=integer,JSONPath=`.status.podsInForce`,description="Pods whose cgroups are bound to their policy"
// +kubebuilder:printcolumn:name="Policies",type=integer,JSONPath=`.status.policyCount`,description="Policies loaded in the kernel"
// +kubebuilder:printcolumn:name="Kernel-Memory",type=integer,JSONPath=`.status.kernelMemoryBytes`,description="Bytes of kernel memory charged to execgate's BPF maps"
// +kubebuilder:printcolumn:name="Kernel",type=string,JSONPath=`.status.kernel`,priority=1
// +kubebuilder:printcolumn:name="Updated",type=date,JSONPath=`.status.lastUpdated`
type ExecgateNode struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Status ExecgateNodeStatus `json:"status,omitempty"`
}

// ExecgateNodeList is a list of ExecgateNode.
//
// +kubebuilder:object:root=true
type ExecgateNodeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ExecgateNode `json:"items"`
}

// Policy returns the entry of the policy namespace/name. When it is missing and
// PoliciesTruncated is set, the node may still have it loaded.
func (s *ExecgateNodeStatus) Policy(namespace, name string) (NodePolicy, bool) {
	for _, p := range s.Policies {
		if p.Namespace == namespace && p.Name == name {
			return p, true
		}
	}
	return NodePolicy{}, false
}
