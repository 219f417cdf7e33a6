package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/enforcer"
	"github.com/execgate/execgate/nodeagent/server"
)

// Config is the agent binary's configuration (one field per flag).
type Config struct {
	NodeName           string
	GRPCAddr           string
	TLSCertFile        string
	TLSKeyFile         string
	ClientCAFile       string
	ClientName         string
	InsecureForTesting bool
	MetricsAddr        string
	// MetricsSecure serves /metrics over HTTPS to authenticated, authorized clients only
	// (MetricsServerOptions.Secure); it needs the API server (--kubeconfig or in-cluster).
	MetricsSecure       bool
	HealthAddr          string
	BPFFS               string
	CgroupRoot          string // cgroup2 mount; "" = discover
	CgroupDriver        string
	KubeletCgroupParent string // subtree of the cgroup root holding the kubelet's kubepods
	AttachMode          string
	MaxPods             int
	MaxEntries          int
	Kubeconfig          string
	GCInterval          time.Duration
	NodeStatusInterval  time.Duration // counters in the ExecgateNode status: at most this often; 0 = 30s
}

func (c *Config) validate() error {
	var problems []string
	if c.NodeName == "" {
		problems = append(problems, "--node-name is required")
	}
	if !c.InsecureForTesting && (c.TLSCertFile == "" || c.TLSKeyFile == "" || c.ClientCAFile == "") {
		problems = append(problems, "--tls-cert-file, --tls-key-file and --client-ca-file are required (or --insecure-for-testing, for tests only)")
	}
	if c.MaxPods <= 0 || c.MaxEntries <= 0 {
		problems = append(problems, "--max-pods and --max-entries must be positive")
	}
	if c.GCInterval <= 0 {
		problems = append(problems, "--gc-interval must be positive")
	}
	if c.NodeStatusInterval < 0 {
		problems = append(problems, "--node-status-interval must not be negative")
	}
	if len(problems) > 0 {
		return fmt.Errorf("invalid flags: %s", strings.Join(problems, "; "))
	}
	return nil
}

// containersPerPod sizes the binding map: one pod cgroup plus its containers.
const containersPerPod = 8

// Run runs the agent daemon until ctx ends.
func Run(ctx context.Context, cfg Config, log *zap.Logger) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	base := log // New and the server add the node field themselves
	log = log.With(zap.String("node", cfg.NodeName))
	attach, err := enforcer.ParseAttachMode(cfg.AttachMode)
	if err != nil {
		return fmt.Errorf("--attach-mode: %w", err)
	}
	root, err := cgroups.ResolveRoot(cfg.CgroupRoot)
	if err != nil {
		return fmt.Errorf("--cgroup-root: %w", err)
	}
	layout, err := cgroups.NewLayout(filepath.Join(root, cfg.KubeletCgroupParent), cgroups.Driver(cfg.CgroupDriver), "")
	if err != nil {
		return fmt.Errorf("--cgroup-driver/--kubelet-cgroup-parent: %w", err)
	}
	if err := enforcer.EnsureBPFFS(cfg.BPFFS); err != nil {
		return fmt.Errorf("--bpffs: %w", err)
	}
	enf, err := enforcer.New(enforcer.Config{
		PinDir: cfg.BPFFS, Attach: attach, Logger: log.Named("enforcer"),
		MaxBindings: uint32(cfg.MaxPods * (1 + containersPerPod)), MaxExactEntries: uint32(cfg.MaxEntries),
	})
	if err != nil {
		return fmt.Errorf("load enforcer: %w", err)
	}
	defer enf.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	backstop, err := backstopClients(cfg.Kubeconfig, log)
	if err != nil {
		return err
	}
	a, err := New(Options{NodeName: cfg.NodeName, Enforcer: enf, Layout: layout, MaxPending: cfg.MaxPods,
		GCInterval: cfg.GCInterval, Backstop: backstop, Logger: base, Registry: reg})
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{
		ListenAddress: cfg.GRPCAddr, NodeName: cfg.NodeName, Insecure: cfg.InsecureForTesting,
		CertFile: cfg.TLSCertFile, KeyFile: cfg.TLSKeyFile, ClientCAFile: cfg.ClientCAFile,
		AllowedClientIdentities: nonEmpty(cfg.ClientName),
	}, a, base.Named("grpc"), reg)
	if err != nil {
		return err
	}

	var restCfg *rest.Config
	if backstop != nil {
		restCfg = backstop.Config
	}
	metrics, err := NewMetricsServer(MetricsServerOptions{Registry: reg, Secure: cfg.MetricsSecure, RESTConfig: restCfg, Logger: log})
	if err != nil {
		return fmt.Errorf("--metrics-secure: %w", err)
	}
	healthMux := http.NewServeMux()
	healthMux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	healthMux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			http.Error(w, "agent not ready: initial cgroup scan not done", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})

	var nodeStatus *NodeStatusWriter // what this node enforces, for kubectl execgate
	if backstop != nil {
		nodeStatus, err = NewNodeStatusWriter(NodeStatusOptions{NodeName: cfg.NodeName, Source: a, Ready: a.Ready,
			Kube: backstop.Kube, Dynamic: backstop.Dynamic, Interval: cfg.NodeStatusInterval, Logger: base})
		if err != nil {
			return err
		}
	}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.Run(ctx) })
	if nodeStatus != nil {
		g.Go(func() error { return nodeStatus.Run(ctx) })
	}
	g.Go(func() error { return srv.ListenAndServe(ctx) })
	g.Go(func() error { return metrics.ListenAndServe(ctx, cfg.MetricsAddr) })
	g.Go(func() error { return serveHTTP(ctx, cfg.HealthAddr, healthMux) })
	return g.Wait()
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

// backstopClients returns API clients from kubeconfig, or in-cluster; nil
// (no backstop) when neither is available.
func backstopClients(kubeconfig string, log *zap.Logger) (*Backstop, error) {
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
		if errors.Is(err, rest.ErrNotInCluster) {
			log.Warn("no --kubeconfig and not running in a cluster: backstop watch disabled; only pushed policies are enforced")
			return nil, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	rc.UserAgent = "execgate-agent"
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	return &Backstop{Kube: kube, Dynamic: dyn, Config: rc}, nil
}

// serveHTTP serves h on addr until ctx ends; an empty addr disables it.
func serveHTTP(ctx context.Context, addr string, h http.Handler) error {
	if addr == "" {
		return nil
	}
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(sctx)
	})
	defer stop()
	if err := s.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve http on %s: %w", addr, err)
	}
	return nil
}
