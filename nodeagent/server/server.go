package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/execgate/execgate/internal/tlsfiles"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// Backend is what the server needs from the agent. It receives only
// validated requests. Errors should wrap podpolicy.ErrLimitExceeded,
// ErrConflict or ErrNotReady when they are one of those; a backend may also
// return a gRPC status error, which is passed through as is.
type Backend interface {
	// ApplyPodPolicy enforces p.Policy on p.Pod, atomically replacing what
	// the pod had. A version not newer than the one loaded for the pod is a
	// no-op: applied=false and the loaded version.
	ApplyPodPolicy(ctx context.Context, p *podpolicy.PodPolicy) (applied bool, loadedVersion uint64, err error)
	// RemovePod unbinds the pod; removed=false if it was unknown.
	RemovePod(ctx context.Context, podUID string) (removed bool, err error)
	// RemovePolicy unloads a policy no pod uses (ErrConflict otherwise).
	RemovePolicy(ctx context.Context, ref podpolicy.PolicyRef) (removed bool, err error)
	// Status reports the agent's state.
	Status(ctx context.Context) (*agentv1.AgentStatus, error)
	// Subscribe returns a channel of events matching filter (the server
	// filters again, so a backend may ignore it) and a function that ends
	// the subscription. The backend closes the channel after cancel is
	// called or when it stops; it must never block on a slow subscriber
	// (drop and count in AgentStatus.events_dropped instead).
	Subscribe(ctx context.Context, filter podpolicy.EventFilter) (events <-chan *agentv1.ExecEvent, cancel func())
}

// Config configures a Server.
type Config struct {
	// ListenAddress is used by ListenAndServe, e.g. ":9443".
	ListenAddress string
	// NodeName is this agent's node. Requests for pods bound to another node
	// fail with FailedPrecondition. Required.
	NodeName string

	// CertFile and KeyFile are the serving certificate; ClientCAFile is the
	// bundle client certificates must chain to. All three are re-read when
	// they change on disk (checked at most every ReloadInterval, on handshake).
	CertFile     string
	KeyFile      string
	ClientCAFile string
	// AllowedClientIdentities, if not empty, restricts clients to those whose
	// certificate's CN, a DNS SAN or a URI SAN equals one of these.
	AllowedClientIdentities []string
	// ReloadInterval bounds how often the TLS files are checked. Default 5s;
	// negative means on every handshake.
	ReloadInterval time.Duration

	// Insecure serves plaintext gRPC without client authentication.
	// FOR TESTS ONLY: anyone who can reach the port can rewrite policies.
	Insecure bool

	// MaxRecvMsgBytes bounds one request. Default 16 MiB.
	MaxRecvMsgBytes int
	// ShutdownGracePeriod is how long Serve waits for in-flight calls when
	// its context ends. Default 5s.
	ShutdownGracePeriod time.Duration
}

const (
	defaultReloadInterval   = 5 * time.Second
	defaultMaxRecvMsgBytes  = 16 << 20
	defaultShutdownGrace    = 5 * time.Second
	handshakeTimeout        = 10 * time.Second
	minClientKeepaliveEvery = 10 * time.Second
)

// Server serves AgentService. Create it with New, run it with Serve or
// ListenAndServe (once).
type Server struct {
	cfg      Config
	log      *zap.Logger
	metrics  *metrics
	grpc     *grpc.Server
	stopping chan struct{} // closed when Serve's context ends: WatchEvents streams return
	served   atomic.Bool
}

// New checks cfg, loads the TLS files (unless Insecure) and registers the
// server's metrics with reg (a fresh registry if nil).
func New(cfg Config, backend Backend, log *zap.Logger, reg prometheus.Registerer) (*Server, error) {
	if backend == nil {
		return nil, errors.New("agent server: backend is required")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("agent server: node name is required")
	}
	if log == nil {
		log = zap.NewNop()
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if cfg.ReloadInterval == 0 {
		cfg.ReloadInterval = defaultReloadInterval
	} else if cfg.ReloadInterval < 0 {
		cfg.ReloadInterval = 0
	}
	if cfg.MaxRecvMsgBytes <= 0 {
		cfg.MaxRecvMsgBytes = defaultMaxRecvMsgBytes
	}
	if cfg.ShutdownGracePeriod <= 0 {
		cfg.ShutdownGracePeriod = defaultShutdownGrace
	}
	log = log.With(zap.String("node", cfg.NodeName))
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("agent server: %w", err)
	}

	var creds credentials.TransportCredentials
	if cfg.Insecure {
		log.Warn("!!! agent gRPC server runs WITHOUT TLS or client authentication: anyone who can reach it can change enforcement. For tests only. !!!")
		creds = insecure.NewCredentials()
	} else {
		src, err := tlsfiles.Load(tlsfiles.Files{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, CAFile: cfg.ClientCAFile},
			tlsfiles.Options{
				MinInterval: cfg.ReloadInterval,
				Logger:      log.Named("tls"),
				OnReload: func(mat *tlsfiles.Material, err error) {
					if err != nil {
						m.tlsReloads.WithLabelValues("failure").Inc()
						return
					}
					m.tlsReloads.WithLabelValues("success").Inc()
					m.certNotAfter.Set(float64(mat.Leaf.NotAfter.Unix()))
				},
			})
		if err != nil {
			return nil, fmt.Errorf("agent server: load TLS files: %w", err)
		}
		creds = observedCreds{
			TransportCredentials: credentials.NewTLS(serverTLSConfig(src, cfg.AllowedClientIdentities)),
			onFailure: func(remote net.Addr, err error) {
				reason := handshakeFailureReason(err)
				m.handshakeFailures.WithLabelValues(reason).Inc()
				fields := []zap.Field{zap.Stringer("remote", remote), zap.String("reason", reason), zap.Error(err)}
				if reason == "eof" {
					// TCP probes and scanners hang up mid-handshake: count, don't shout.
					log.Debug("TLS handshake abandoned", fields...)
					return
				}
				log.Warn("TLS handshake refused", fields...)
			},
		}
	}

	s := &Server{cfg: cfg, log: log, metrics: m, stopping: make(chan struct{})}
	s.grpc = grpc.NewServer(
		grpc.Creds(creds),
		grpc.ConnectionTimeout(handshakeTimeout),
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: minClientKeepaliveEvery, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(s.unaryObserve),
		grpc.ChainStreamInterceptor(s.streamObserve),
	)
	agentv1.RegisterAgentServiceServer(s.grpc, &service{backend: backend, nodeName: cfg.NodeName, log: log, metrics: m, stopping: s.stopping})
	return s, nil
}

// ListenAndServe listens on Config.ListenAddress and calls Serve.
func (s *Server) ListenAndServe(ctx context.Context) error {
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", s.cfg.ListenAddress)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.ListenAddress, err)
	}
	return s.Serve(ctx, lis)
}

// Serve serves on lis until ctx ends, then stops gracefully: new calls are
// refused, event streams end, in-flight calls get ShutdownGracePeriod to
// finish. It returns nil after a shutdown caused by ctx, and closes lis.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	if !s.served.CompareAndSwap(false, true) {
		_ = lis.Close()
		return errors.New("agent server: Serve called twice")
	}
	s.log.Info("agent gRPC server listening", zap.Stringer("address", lis.Addr()), zap.Bool("insecure", s.cfg.Insecure))
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(lis) }()

	select {
	case err := <-errc:
		close(s.stopping)
		s.grpc.Stop()
		return fmt.Errorf("serve agent gRPC on %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	close(s.stopping)
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	grace := time.NewTimer(s.cfg.ShutdownGracePeriod)
	defer grace.Stop()
	select {
	case <-stopped:
	case <-grace.C:
		s.log.Warn("agent gRPC server: in-flight calls did not finish in time; closing them", zap.Duration("grace", s.cfg.ShutdownGracePeriod))
		s.grpc.Stop()
		<-stopped
	}
	if err := <-errc; err != nil { // Serve returns nil after (Graceful)Stop
		s.log.Warn("agent gRPC server ended with an error", zap.Error(err))
	}
	s.log.Info("agent gRPC server stopped")
	return nil
}
