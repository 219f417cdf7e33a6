package server

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names, exported so that dashboards and tests refer to one spelling.
const (
	MetricRequests          = "execgate_agent_grpc_requests_total"
	MetricApplyDuration     = "execgate_agent_grpc_apply_duration_seconds"
	MetricHandshakeFailures = "execgate_agent_grpc_tls_handshake_failures_total"
	MetricTLSReloads        = "execgate_agent_grpc_tls_reloads_total"
	MetricCertNotAfter      = "execgate_agent_grpc_tls_serving_cert_not_after_timestamp_seconds"
	MetricEventWatchers     = "execgate_agent_grpc_event_watchers"
)

type metrics struct {
	requests          *prometheus.CounterVec   // method, code
	applyDuration     *prometheus.HistogramVec // code
	handshakeFailures *prometheus.CounterVec   // reason
	tlsReloads        *prometheus.CounterVec   // result
	certNotAfter      prometheus.Gauge
	eventWatchers     prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricRequests,
			Help: "gRPC requests handled by the agent, by method and status code.",
		}, []string{"method", "code"}),
		applyDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: MetricApplyDuration,
			Help: "Time to validate and apply one ApplyPodPolicy request, by status code.",
			// The webhook fails open after a short timeout: resolution matters below 1 s.
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"code"}),
		handshakeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricHandshakeFailures,
			Help: "TLS handshakes refused or failed, by reason (not_tls, protocol_version, no_client_cert, unknown_authority, expired, bad_certificate, identity_refused, server_usage, peer_alert, eof, other).",
		}, []string{"reason"}),
		tlsReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricTLSReloads,
			Help: "Reloads of the server certificate, key and client CA bundle after they changed on disk, by result.",
		}, []string{"result"}),
		certNotAfter: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricCertNotAfter,
			Help: "Expiry (Unix time) of the serving certificate currently in use.",
		}),
		eventWatchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricEventWatchers,
			Help: "WatchEvents streams currently open.",
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.applyDuration, m.handshakeFailures, m.tlsReloads, m.certNotAfter, m.eventWatchers} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}
