package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WorkloadReference names the top-level owner of the pods a proposal was learnt from.
//
// +kubebuilder:validation:XValidation:rule="self.kind in ['Deployment', 'StatefulSet', 'DaemonSet'] ? self.apiVersion.startsWith('apps/') : self.kind in ['CronJob', 'Job'] ? self.apiVersion.startsWith('batch/') : !self.apiVersion.contains('/')",message="apiVersion must match kind: apps/v1 for Deployment, StatefulSet and DaemonSet, batch/v1 for CronJob and Job, v1 for Pod"
type WorkloadReference struct {
	// APIVersion of the workload, such as apps/v1.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	APIVersion string `json:"apiVersion"`

	// Kind of the workload. Pod is for pods that have no controller.
	// +required
	// +kubebuilder:validation:Enum=Deployment;StatefulSet;DaemonSet;CronJob;Job;Pod
	Kind string `json:"kind"`

	// Name of the workload, in the proposal's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// WorkloadPolicyProposalSpec is what Learn mode observed for one workload.
type WorkloadPolicyProposalSpec struct {
	// Workload is the top-level owner of the observed pods. It cannot change: a proposal
	// describes one workload.
	// +required
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="workload is immutable; create a new proposal for another workload"
	Workload WorkloadReference `json:"workload"`

	// RulesByContainer holds every executable observed, per container. It has the type of
	// WorkloadPolicySpec.RulesByContainer so that it can be copied into a policy as is.
	// +optional
	RulesByContainer RulesByContainer `json:"rulesByContainer,omitempty"`
}

// WorkloadPolicyProposalStatus summarises the learning. It deliberately keeps no
// per-executable timestamps: the object lives in etcd and is rewritten while learning.
type WorkloadPolicyProposalStatus struct {
	// LastUpdated is when the rules last changed. A pointer, so that an unset time is
	// omitted rather than sent as null.
	// +optional
	LastUpdated *metav1.Time `json:"lastUpdated,omitempty"`

	// ObservedPods counts the pods whose executions contributed to the rules.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ObservedPods int32 `json:"observedPods,omitempty"`

	// ExecutablesObserved counts the entries of spec.rulesByContainer, over all containers.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ExecutablesObserved int32 `json:"executablesObserved,omitempty"`
}

// WorkloadPolicyProposal is the allowlist Learn mode recorded for a workload. Review it,
// then promote it with PolicySpec.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=wpp,categories=execgate
// +kubebuilder:printcolumn:name="Kind",type=string,JSONPath=`.spec.workload.kind`
// +kubebuilder:printcolumn:name="Workload",type=string,JSONPath=`.spec.workload.name`
// +kubebuilder:printcolumn:name="Executables",type=integer,JSONPath=`.status.executablesObserved`
// +kubebuilder:printcolumn:name="Pods",type=integer,JSONPath=`.status.observedPods`,priority=1
// +kubebuilder:printcolumn:name="Updated",type=date,JSONPath=`.status.lastUpdated`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type WorkloadPolicyProposal struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec WorkloadPolicyProposalSpec `json:"spec"`
	// +optional
	Status WorkloadPolicyProposalStatus `json:"status,omitempty"`
}

// PolicySpec returns a WorkloadPolicySpec with a copy of the proposal's rules, for
// promotion. The result is not validated: Monitor and Protect need rules for every
// container, which a fresh proposal may lack.
func (p *WorkloadPolicyProposal) PolicySpec(mode Mode) WorkloadPolicySpec {
	return WorkloadPolicySpec{Mode: mode, RulesByContainer: p.Spec.RulesByContainer.DeepCopy()}
}

// WorkloadPolicyProposalList is a list of WorkloadPolicyProposal.
//
// +kubebuilder:object:root=true
type WorkloadPolicyProposalList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []WorkloadPolicyProposal `json:"items"`
}
