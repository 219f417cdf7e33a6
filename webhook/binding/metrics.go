package binding

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/execgate/execgate/webhook/agents"
)

// Outcomes of admission requests that end before a push (bindings_total). Those of a
// push are agents.Outcome*; agents.OutcomeError also counts a failed lookup.
const (
	OutcomeNoPolicy       agents.Outcome = "no_policy"       // the labelled policy does not exist
	OutcomeNoLabel        agents.Outcome = "no_label"        // the pod carries no policy label
	OutcomeInvalidRequest agents.Outcome = "invalid_request" // the AdmissionRequest could not be understood
	// OutcomeDryRun is not in the original list: a dry-run request is answered without a
	// push (sideEffects NoneOnDryRun), and counting it as "no_label" would lie.
	OutcomeDryRun agents.Outcome = "dry_run"
	// OutcomeUnscheduled is not in the original list either: a pod created without
	// spec.nodeName reached /validate-pods (clusters older than 1.30 have no matchConditions);
	// its push happens at pods/binding.
	OutcomeUnscheduled agents.Outcome = "unscheduled"
)

// The metrics live in controller-runtime's registry, served on --metrics-addr. They are
// package-level because a registry accepts each name once per process. Labels are
// bounded by the outcomes and the policies in use.
var (
	bindingsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_bindings_total",
		Help: "Admission requests (pods/binding and pods) by outcome.",
	}, []string{"outcome"})
	webhookDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "execgate_controller_webhook_duration_seconds",
		Help:    "Time to answer one admission request, by webhook (binding, pods).",
		Buckets: agents.LatencyBuckets,
	}, []string{"webhook"})
	writableRootPodsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_writable_root_pods_total",
		Help: "Pods admitted under a Protect policy with a container whose root filesystem is writable (no securityContext.readOnlyRootFilesystem), by namespace and policy.",
	}, []string{"namespace", "policy"})
	// Capacity (issue 14.2).
	policyCapacityRefusalsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_policy_capacity_refusals_total",
		Help: "Admission pushes an agent refused because the pod's policy does not fit in the node's rule maps or the namespace's share (the agent holds the pod: deny-all under Protect), by namespace and policy.",
	}, []string{"namespace", "policy"})
)

func init() {
	metrics.Registry.MustRegister(bindingsTotal, webhookDuration, writableRootPodsTotal, policyCapacityRefusalsTotal)
}
