package policy

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Weakened and deleted policies, in controller-runtime's registry (served on
// --metrics-addr). Labels are bounded by the policies.
var (
	policyWeakenedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_policy_weakened_total",
		Help: "WorkloadPolicy mode lowered (from, to) while pods ran under it, by namespace and policy.",
	}, []string{"namespace", "policy", "from", "to"})
	policyDeletionsInUseTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_policy_deletions_in_use_total",
		Help: "WorkloadPolicies deleted while pods bound to them ran (they keep enforcing its last generation until deleted), by namespace and policy.",
	}, []string{"namespace", "policy"})
)

func init() {
	metrics.Registry.MustRegister(policyWeakenedTotal, policyDeletionsInUseTotal)
}
