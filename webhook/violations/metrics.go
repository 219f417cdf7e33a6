package violations

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Violations, in controller-runtime's registry (served on --metrics-addr). Labels are
// bounded by the policies in use: never pod, container or path.
var (
	violationsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_violations_total",
		Help: "Monitor (reported) and Protect (denied) violations received from node agents, by namespace, policy and action.",
	}, []string{"namespace", "policy", "action"})
	violationEventWrites = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_violation_event_writes_total",
		Help: "Kubernetes Event writes for violations, by result (created, updated, failed; evicted: a series dropped from memory with violations not yet written).",
	}, []string{"result"})
)

func init() {
	metrics.Registry.MustRegister(violationsTotal, violationEventWrites)
}
