package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PolicyLabel is the pod label that opts a pod into a policy: its value is the name of a
// WorkloadPolicy in the pod's namespace. A pod runs under at most one policy.
const PolicyLabel = "execgate.io/policy"

// Mode says what happens when a container executes a file outside its allowlist.
// +kubebuilder:validation:Enum=Learn;Monitor;Protect
type Mode string

const (
	// ModeLearn lets everything run and records every executable seen into the
	// WorkloadPolicyProposal of the pod's workload.
	ModeLearn Mode = "Learn"
	// ModeMonitor lets everything run and reports executables outside the allowlist.
	ModeMonitor Mode = "Monitor"
	// ModeProtect denies executables outside the allowlist (execve fails with EPERM) and
	// reports them.
	ModeProtect Mode = "Protect"
)

// Condition types of a WorkloadPolicy.
const (
	// ConditionReady is True when the current generation is in force for every pod that
	// carries the policy label.
	ConditionReady = "Ready"
	// ConditionDegraded is True when at least one node failed to put the policy in force;
	// status.failingNodes says which and why.
	ConditionDegraded = "Degraded"
	// ConditionWeakened is True when the mode was lowered (Protect to Monitor or Learn,
	// Monitor to Learn) while pods ran under the policy; it turns False when the mode is
	// Protect again.
	ConditionWeakened = "Weakened"
	// ConditionDeleting is True while a deleted policy is kept (finalizer PodsEnforcedFinalizer)
	// because pods bound to it still run: they keep its last generation until they are gone.
	ConditionDeleting = "Deleting"
	// ConditionWritableRootFilesystem is True when a pod of a Protect policy has a container
	// without securityContext.readOnlyRootFilesystem: an allowed path on its writable root can
	// be overwritten with another program, which then runs as the allowed one.
	ConditionWritableRootFilesystem = "WritableRootFilesystem"
)

// PodsEnforcedFinalizer keeps a deleted WorkloadPolicy while pods bound to it still run, so
// that its deletion is visible (condition Deleting) for as long as they keep enforcing it.
const PodsEnforcedFinalizer = "execgate.io/pods-enforced"

// Condition reasons of a WorkloadPolicy.
const (
	// ReasonInForce (Ready=True): every labelled pod runs under the current generation.
	ReasonInForce = "InForce"
	// ReasonNoPods (Ready=True): no pod carries the label; there is nothing to enforce.
	ReasonNoPods = "NoPods"
	// ReasonRollingOut (Ready=False): some labelled pods do not run under the current
	// generation yet.
	ReasonRollingOut = "RollingOut"
	// ReasonInvalidPolicy (Ready=False): the spec failed validation; the message says which
	// field to fix. Pods keep the last valid generation.
	ReasonInvalidPolicy = "InvalidPolicy"
	// ReasonNodesFailing (Degraded=True, and Ready=False): some nodes failed to put the
	// policy in force.
	ReasonNodesFailing = "NodesFailing"
	// ReasonNoFailures (Degraded=False): no node reported a failure.
	ReasonNoFailures = "NoFailures"
	// ReasonModeLowered (Weakened=True): the mode was lowered while pods ran under the policy.
	ReasonModeLowered = "ModeLowered"
	// ReasonProtectRestored (Weakened=False): the mode is Protect again.
	ReasonProtectRestored = "ProtectRestored"
	// ReasonPodsStillEnforced (Deleting=True): the policy was deleted while pods bound to it
	// run; they keep its last generation, and the object goes with the last of them.
	ReasonPodsStillEnforced = "PodsStillEnforced"
	// ReasonWritableRoot (WritableRootFilesystem=True): some pods have containers whose root
	// filesystem is writable.
	ReasonWritableRoot = "WritableRoot"
	// ReasonReadOnlyRoot (WritableRootFilesystem=False): every container of the policy's pods
	// has a read-only root filesystem.
	ReasonReadOnlyRoot = "ReadOnlyRoot"
)

// MaxFailingNodes bounds status.failingNodes so that a cluster-wide outage does not turn
// every policy's status into a list of every node.
const MaxFailingNodes = 32

// WorkloadPolicySpec is the desired allowlist of the pods that carry the policy label.
//
// +kubebuilder:validation:XValidation:rule="self.mode == 'Learn' || (has(self.rulesByContainer) && size(self.rulesByContainer) > 0)",message="mode Monitor and Protect need rules: list at least one container in rulesByContainer (use mode Learn to record a proposal first)"
// +kubebuilder:validation:XValidation:rule="self.mode == 'Learn' || !has(self.rulesByContainer) || self.rulesByContainer.all(c, has(self.rulesByContainer[c].executables) && size(self.rulesByContainer[c].executables) > 0)",message="in mode Monitor and Protect every container in rulesByContainer needs at least one executable: a container that may execute nothing cannot start"
type WorkloadPolicySpec struct {
	// Mode is Learn, Monitor or Protect.
	// +required
	Mode Mode `json:"mode"`

	// RulesByContainer maps container names to their allowlists. The key "*" applies to
	// every container without a key of its own; a container matching no key may execute
	// nothing. Required, with a non-empty list per container, in Monitor and Protect mode;
	// may be empty in Learn mode.
	// +optional
	RulesByContainer RulesByContainer `json:"rulesByContainer,omitempty"`

	// Argv says whether the command line of an exec (up to 512 bytes) is reported in the
	// node agent's logs, its event stream and the pod Events of violations, and what is
	// masked in it first. Command lines can carry secrets (--password=..., tokens in URLs).
	// Default: captured in full, nothing masked.
	// +optional
	Argv *ArgvCapture `json:"argv,omitempty"`
}

// ArgvCapture is the policy's treatment of command lines (issue 14.10).
type ArgvCapture struct {
	// Capture is Full (the default: the command line, with Redact applied) or None (only
	// the executable is reported).
	// +optional
	// +kubebuilder:validation:Enum=Full;None
	Capture ArgvCaptureMode `json:"capture,omitempty"`

	// Redact lists RE2 regular expressions (Go syntax); every match inside an argument is
	// replaced by "***" on the node, before the command line is logged or leaves it. A
	// capture group masks only itself: "--password=(\S+)" keeps the flag's name. The
	// API server refuses a pattern that does not compile; should one reach a node anyway,
	// the node reports no command line at all. These options never keep a policy from
	// being enforced: the policy's validation does not look at them.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=256
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self.all(p, type(''.matches(p)) == bool)",message="every pattern must be an RE2 regular expression"
	Redact []string `json:"redact,omitempty"`
}

// ArgvCaptureMode is what of a command line is reported.
type ArgvCaptureMode string

const (
	// ArgvCaptureFull reports the command line, Redact applied.
	ArgvCaptureFull ArgvCaptureMode = "Full"
	// ArgvCaptureNone reports no command line.
	ArgvCaptureNone ArgvCaptureMode = "None"
)

// ArgvRedaction is the text a redacted match becomes.
const ArgvRedaction = "***"

// WorkloadPolicyStatus says whether the policy is in force. Per-node details are kept
// only for failing nodes: listing every healthy node would rewrite every policy each
// time a node joins.
type WorkloadPolicyStatus struct {
	// ObservedGeneration is the generation the rest of the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Mode is the mode of ObservedGeneration, echoed for printing.
	// +optional
	Mode Mode `json:"mode,omitempty"`

	// Conditions are Ready, Degraded, and when they apply Weakened, Deleting and
	// WritableRootFilesystem.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// PodsInForce counts labelled pods whose node enforces ObservedGeneration.
	// +optional
	// +kubebuilder:validation:Minimum=0
	PodsInForce int32 `json:"podsInForce,omitempty"`

	// PodsTotal counts pods that carry the policy label.
	// +optional
	// +kubebuilder:validation:Minimum=0
	PodsTotal int32 `json:"podsTotal,omitempty"`

	// NodesInForce counts nodes that enforce ObservedGeneration for their labelled pods.
	// +optional
	// +kubebuilder:validation:Minimum=0
	NodesInForce int32 `json:"nodesInForce,omitempty"`

	// FailingNodesTotal counts every failing node, including those beyond the
	// MaxFailingNodes listed in FailingNodes.
	// +optional
	// +kubebuilder:validation:Minimum=0
	FailingNodesTotal int32 `json:"failingNodesTotal,omitempty"`

	// FailingNodes lists up to 32 nodes that failed to put the policy in force, and why.
	// Healthy nodes are never listed.
	// +optional
	// +listType=map
	// +listMapKey=node
	// +kubebuilder:validation:MaxItems=32
	FailingNodes []NodeFailure `json:"failingNodes,omitempty"`
}

// NodeFailure says why one node does not enforce the policy.
type NodeFailure struct {
	// Node is the node's name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Node string `json:"node"`

	// Reason is a short, human-readable explanation, such as "agent unreachable".
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	Reason string `json:"reason"`

	// LastTransitionTime is when the node started failing for this reason.
	// +required
	LastTransitionTime metav1.Time `json:"lastTransitionTime"`
}

// WorkloadPolicy is the executable allowlist of the pods that carry the label
// execgate.io/policy=<name> in its namespace.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=wp,categories=execgate
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="In-Force",type=integer,JSONPath=`.status.podsInForce`,description="Pods that run under the observed generation"
// +kubebuilder:printcolumn:name="Pods",type=integer,JSONPath=`.status.podsTotal`,description="Pods that carry the policy label"
// +kubebuilder:printcolumn:name="Nodes",type=integer,JSONPath=`.status.nodesInForce`,description="Nodes that enforce the observed generation"
// +kubebuilder:printcolumn:name="Failing",type=integer,JSONPath=`.status.failingNodesTotal`,priority=1,description="Nodes that failed to enforce the policy"
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="metadata.name must be at most 63 characters: pods name the policy in the label execgate.io/policy, and label values are limited to 63 characters"
type WorkloadPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec WorkloadPolicySpec `json:"spec"`
	// +optional
	Status WorkloadPolicyStatus `json:"status,omitempty"`
}

// WorkloadPolicyList is a list of WorkloadPolicy.
//
// +kubebuilder:object:root=true
type WorkloadPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []WorkloadPolicy `json:"items"`
}
