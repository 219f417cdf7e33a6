package agents

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Outcome of one push (pushes_total), and of one admission request (bindings_total,
// webhook/binding adds the outcomes of requests that never reach a push).
type Outcome string

const (
	OutcomePushed  Outcome = "pushed"   // the agent applied a new generation
	OutcomeNoop    Outcome = "noop"     // the agent already had this (or a newer) generation
	OutcomeTimeout Outcome = "timeout"  // the push did not finish within --push-timeout
	OutcomeError   Outcome = "error"    // the push or a lookup failed
	OutcomeNoAgent Outcome = "no_agent" // no agent is known for the node
)

// LatencyBuckets are the buckets of the controller's latency histograms: pushes here,
// admission answers in webhook/binding.
var LatencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}

// The metrics live in controller-runtime's registry, served on --metrics-addr. They are
// package-level because a registry accepts each name once per process.
var (
	pushesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_pushes_total",
		Help: "ApplyPodPolicy calls to node agents by outcome (webhook and reconciler).",
	}, []string{"outcome"})
	pushDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "execgate_controller_push_duration_seconds",
		Help:    "Duration of ApplyPodPolicy calls to node agents.",
		Buckets: LatencyBuckets,
	})
	// agentEventStreams: agentstream.go. The dropped events are counted in eventorigin.go.
	agentEventStreams = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "execgate_controller_agent_event_streams",
		Help: "WatchEvents streams open to node agents (one per agent while it is reachable).",
	})
)

func init() {
	metrics.Registry.MustRegister(pushesTotal, pushDuration, agentEventStreams)
}
