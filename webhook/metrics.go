package webhook

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Outcome of one admission request (bindings_total) or one push (pushes_total).
type Outcome string

const (
	OutcomePushed         Outcome = "pushed"          // the agent applied a new generation
	OutcomeNoop           Outcome = "noop"            // the agent already had this (or a newer) generation
	OutcomeTimeout        Outcome = "timeout"         // the push did not finish within --push-timeout
	OutcomeError          Outcome = "error"           // the push or a lookup failed
	OutcomeNoAgent        Outcome = "no_agent"        // no agent is known for the node
	OutcomeNoPolicy       Outcome = "no_policy"       // the labelled policy does not exist
	OutcomeNoLabel        Outcome = "no_label"        // the pod carries no policy label
	OutcomeInvalidRequest Outcome = "invalid_request" // the AdmissionRequest could not be understood
	// OutcomeDryRun is not in the original list: a dry-run request is answered without a
	// push (sideEffects NoneOnDryRun), and counting it as "no_label" would lie.
	OutcomeDryRun Outcome = "dry_run"
	// OutcomeUnscheduled is not in the original list either: a pod created without
	// spec.nodeName reached /validate-pods (clusters older than 1.30 have no matchConditions);
	// its push happens at pods/binding.
	OutcomeUnscheduled Outcome = "unscheduled"
)

// The metrics live in controller-runtime's registry, served on --metrics-addr. They are
// package-level because a registry accepts each name once per process.
var (
	bindingsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_bindings_total",
		Help: "Admission requests (pods/binding and pods) by outcome.",
	}, []string{"outcome"})
	pushesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_pushes_total",
		Help: "ApplyPodPolicy calls to node agents by outcome (webhook and reconciler).",
	}, []string{"outcome"})
	pushDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "execgate_controller_push_duration_seconds",
		Help:    "Duration of ApplyPodPolicy calls to node agents.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	})
	webhookDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "execgate_controller_webhook_duration_seconds",
		Help:    "Time to answer one admission request, by webhook (binding, pods).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"webhook"})
)

// Agent event streams and violations (agentstream.go, violations.go). Violation labels
// are bounded by the policies in use: never pod, container or path.
var (
	agentEventStreams = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "execgate_controller_agent_event_streams",
		Help: "WatchEvents streams open to node agents (one per agent while it is reachable).",
	})
	violationsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_violations_total",
		Help: "Monitor (reported) and Protect (denied) violations received from node agents, by namespace, policy and action.",
	}, []string{"namespace", "policy", "action"})
	violationEventWrites = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_violation_event_writes_total",
		Help: "Kubernetes Event writes for violations, by result (created, updated, failed; evicted: a series dropped from memory with violations not yet written).",
	}, []string{"result"})
)

// Weakened and deleted policies (reconciler.go). Labels are bounded by the policies.
var (
	policyWeakenedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_policy_weakened_total",
		Help: "WorkloadPolicy mode lowered (from, to) while pods ran under it, by namespace and policy.",
	}, []string{"namespace", "policy", "from", "to"})
	policyDeletionsInUseTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_policy_deletions_in_use_total",
		Help: "WorkloadPolicies deleted while pods bound to them ran (they keep enforcing its last generation until deleted), by namespace and policy.",
	}, []string{"namespace", "policy"})
	writableRootPodsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_writable_root_pods_total",
		Help: "Pods admitted under a Protect policy with a container whose root filesystem is writable (no securityContext.readOnlyRootFilesystem), by namespace and policy.",
	}, []string{"namespace", "policy"})
)

// Capacity (issue 14.2). Labels are bounded by the policies.
var policyCapacityRefusalsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "execgate_controller_policy_capacity_refusals_total",
	Help: "Admission pushes an agent refused because the pod's policy does not fit in the node's rule maps or the namespace's share (the agent holds the pod: deny-all under Protect), by namespace and policy.",
}, []string{"namespace", "policy"})

func init() {
	metrics.Registry.MustRegister(policyCapacityRefusalsTotal)
	metrics.Registry.MustRegister(policyWeakenedTotal, policyDeletionsInUseTotal, writableRootPodsTotal)
	metrics.Registry.MustRegister(bindingsTotal, pushesTotal, pushDuration, webhookDuration)
	metrics.Registry.MustRegister(agentEventStreams, violationsTotal, violationEventWrites)
}
