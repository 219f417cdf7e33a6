package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/go-logr/zapr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"k8s.io/client-go/rest"
	certutil "k8s.io/client-go/util/cert"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
)

// MetricsServerOptions configures the agent's /metrics endpoint.
type MetricsServerOptions struct {
	Registry prometheus.Gatherer
	// Secure serves HTTPS, and /metrics only to clients whose bearer token the API server
	// authenticates (TokenReview) and authorizes for GET /metrics (SubjectAccessReview):
	// controller-runtime's metrics filter, as the controller's metrics server uses. The
	// metrics name tenants' namespaces, pods and policies (issue 14.10). The certificate
	// is self-signed, made at start, as controller-runtime's.
	Secure bool
	// RESTConfig reaches the API server that reviews the tokens; required when Secure.
	RESTConfig *rest.Config
	Logger     *zap.Logger
}

// MetricsServer serves the agent's registry at /metrics.
type MetricsServer struct {
	handler http.Handler
	tls     *tls.Config // nil: plain HTTP
}

// NewMetricsServer builds the handler (and, when secure, its filter and certificate): a
// misconfiguration stops the agent at start instead of at the first scrape.
func NewMetricsServer(o MetricsServerOptions) (*MetricsServer, error) {
	s := &MetricsServer{handler: promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{})}
	if !o.Secure {
		return s, nil
	}
	if o.RESTConfig == nil {
		return nil, errors.New("secure metrics need an API server to review tokens (--kubeconfig or in-cluster)")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	httpClient, err := rest.HTTPClientFor(o.RESTConfig)
	if err != nil {
		return nil, fmt.Errorf("secure metrics: API client: %w", err)
	}
	filter, err := filters.WithAuthenticationAndAuthorization(o.RESTConfig, httpClient)
	if err != nil {
		return nil, fmt.Errorf("secure metrics: authn/authz filter: %w", err)
	}
	if s.handler, err = filter(zapr.NewLogger(o.Logger.Named("metrics-auth")), s.handler); err != nil {
		return nil, fmt.Errorf("secure metrics: authn/authz filter: %w", err)
	}
	certPEM, keyPEM, err := certutil.GenerateSelfSignedCertKeyWithFixtures("localhost", []net.IP{{127, 0, 0, 1}}, nil, "")
	if err != nil {
		return nil, fmt.Errorf("secure metrics: self-signed certificate: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("secure metrics: self-signed certificate: %w", err)
	}
	s.tls = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
	return s, nil
}

// ListenAndServe serves on addr until ctx ends; an empty addr disables the endpoint.
func (s *MetricsServer) ListenAndServe(ctx context.Context, addr string) error {
	if addr == "" {
		return nil
	}
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	return s.Serve(ctx, lis)
}

// Serve serves on lis until ctx ends, and closes it.
func (s *MetricsServer) Serve(ctx context.Context, lis net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", s.handler)
	if s.tls != nil {
		lis = tls.NewListener(lis, s.tls)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	defer stop()
	if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: serve on %s: %w", lis.Addr(), err)
	}
	return nil
}
