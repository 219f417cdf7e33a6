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

	"github.com/execgate/execgate/nodeagent/agentcert"
	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/enforcer"
	"github.com/execgate/execgate/nodeagent/nri"
	"github.com/execgate/execgate/nodeagent/server"
)

// Config is the agent binary's configuration (one field per flag).
type Config struct {
	NodeName    string
	GRPCAddr    string
	TLSCertFile string
	TLSKeyFile  string
	// TLSRequestDir, instead of TLSCertFile/TLSKeyFile: request a serving
	// certificate naming this node from the controller (agentcert) and keep it here.
	TLSRequestDir      string
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
	MaxPrefixEntries    int
	// NamespaceSharePercent bounds one namespace's part of each rule map (1-100; 100: none).
	NamespaceSharePercent int
	Kubeconfig            string
	GCInterval            time.Duration
	NodeStatusInterval    time.Duration // counters in the ExecgateNode status: at most this often; 0 = 30s
	// StartupTaint is removed from this Node once the agent enforces every pod bound to
	// it (StartupTaintRemover); "" removes none.
	StartupTaint string
	// RuntimeExecutables are the container runtimes (bare names or host
	// paths) whose re-exec of themselves is exempt; HostRoot is where the
	// host's files are seen ("" = /proc/1/root when readable, else /).
	// nil: DefaultRuntimeExecutables, empty: none.
	RuntimeExecutables []string
	HostRoot           string
	// SandboxPaths are what a pod sandbox runs (the pause entrypoint),
	// allowed in every pod-level binding. nil: the defaults, empty: none.
	SandboxPaths []string
	// NRISocket is the runtime's NRI socket: the agent registers as a plugin
	// and binds each container by name before it starts ("" = no NRI).
	NRISocket string
}

func (c *Config) validate() error {
	var problems []string
	if c.NodeName == "" {
		problems = append(problems, "--node-name is required")
	}
	files := c.TLSCertFile != "" && c.TLSKeyFile != ""
	if !c.InsecureForTesting && (files == (c.TLSRequestDir != "") || c.ClientCAFile == "") {
		problems = append(problems, "--client-ca-file and either --tls-request-dir or both --tls-cert-file and --tls-key-file are required (or --insecure-for-testing, for tests only)")
	}
	if c.MaxPods <= 0 || c.MaxEntries <= 0 || c.MaxPrefixEntries <= 0 {
		problems = append(problems, "--max-pods, --max-entries and --max-prefix-entries must be positive")
	}
	if c.NamespaceSharePercent < 1 || c.NamespaceSharePercent > 100 {
		problems = append(problems, "--namespace-share-percent must be 1-100 (100: no per-namespace bound)")
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
	if cfg.RuntimeExecutables == nil {
		cfg.RuntimeExecutables = DefaultRuntimeExecutables
	}
	if cfg.SandboxPaths == nil {
		cfg.SandboxPaths = DefaultSandboxPaths
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
		MaxPrefixEntries: uint32(cfg.MaxPrefixEntries), NamespaceSharePercent: uint32(cfg.NamespaceSharePercent),
		SandboxPaths: cfg.SandboxPaths,
	})
	if err != nil {
		return fmt.Errorf("load enforcer: %w", err)
	}
	defer enf.Close()
	hostRoot := cfg.HostRoot
	if hostRoot == "" {
		hostRoot = HostRoot(log)
	}
	runtimes := &RuntimeFiles{Enforcer: enf, Root: hostRoot, Names: cfg.RuntimeExecutables, Log: log.Named("runtime")}
	if err := runtimes.Sync(); err != nil {
		// Before any pod is served: a runtime that cannot be named would fail every container start.
		return fmt.Errorf("--runtime-executables: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	backstop, err := backstopClients(cfg.Kubeconfig, log)
	if err != nil {
		return err
	}
	var plugin *nri.Plugin // set below when NRI is on; read only after New
	a, err := New(Options{NodeName: cfg.NodeName, Enforcer: enf, Layout: layout, MaxPending: cfg.MaxPods,
		GCInterval: cfg.GCInterval, Backstop: backstop, Logger: base, Registry: reg,
		NRIConnected: func() bool { return plugin != nil && plugin.Connected() }})
	if err != nil {
		return err
	}
	newServer := func() (*server.Server, error) {
		return server.New(server.Config{
			ListenAddress: cfg.GRPCAddr, NodeName: cfg.NodeName, Insecure: cfg.InsecureForTesting,
			CertFile: cfg.TLSCertFile, KeyFile: cfg.TLSKeyFile, ClientCAFile: cfg.ClientCAFile,
			AllowedClientIdentities: nonEmpty(cfg.ClientName),
		}, a, base.Named("grpc"), reg)
	}
	// With fixed files the server is built now (bad files stop the agent at once). With a
	// requested certificate it starts once the controller has signed one: enforcement and
	// the backstop run meanwhile, so a controller outage never stops an agent from starting.
	var srv *server.Server
	var requester *agentcert.Requester
	if cfg.TLSRequestDir != "" && !cfg.InsecureForTesting {
		if backstop == nil {
			return errors.New("--tls-request-dir needs API access (--kubeconfig or in-cluster) to request the serving certificate")
		}
		requester = &agentcert.Requester{Client: backstop.Kube, NodeName: cfg.NodeName, Dir: cfg.TLSRequestDir, Log: log.Named("cert")}
		cfg.TLSCertFile, cfg.TLSKeyFile = requester.CertFile(), requester.KeyFile()
	} else if srv, err = newServer(); err != nil {
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
	g.Go(func() error { runtimes.Run(ctx, cfg.GCInterval); return nil })
	if cfg.NRISocket != "" {
		plugin = &nri.Plugin{Socket: cfg.NRISocket, Backend: a, Log: log.Named("nri")}
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "execgate_agent_nri_connected",
			Help: "1 while the container runtime's NRI connection is up (containers bound by name before they start), 0 while names come from pod status.",
		}, func() float64 {
			if plugin.Connected() {
				return 1
			}
			return 0
		}))
		g.Go(func() error {
			// After the agent adopted the kernel's state: Synchronize binds what runs.
			for !a.Ready() {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(50 * time.Millisecond):
				}
			}
			plugin.Run(ctx)
			return nil
		})
	}
	if nodeStatus != nil {
		g.Go(func() error { return nodeStatus.Run(ctx) })
	}
	g.Go(func() error {
		if requester != nil {
			if err := ensureCertificate(ctx, requester, log); err != nil || ctx.Err() != nil {
				return err
			}
			s, err := newServer()
			if err != nil {
				return err
			}
			srv = s
		}
		return srv.ListenAndServe(ctx)
	})
	if requester != nil {
		g.Go(func() error { return requester.Run(ctx) })
	}
	if backstop != nil && cfg.StartupTaint != "" {
		r := &StartupTaintRemover{Kube: backstop.Kube, NodeName: cfg.NodeName, Key: cfg.StartupTaint,
			Ready: a.EnforcingAll, Log: log.Named("startup-taint")}
		g.Go(func() error { return r.Run(ctx) })
	}
	g.Go(func() error { return metrics.ListenAndServe(ctx, cfg.MetricsAddr) })
	g.Go(func() error { return serveHTTP(ctx, cfg.HealthAddr, healthMux) })
	return g.Wait()
}

// ensureCertificate retries until the controller signed a serving certificate for this
// node or ctx ends.
func ensureCertificate(ctx context.Context, r *agentcert.Requester, log *zap.Logger) error {
	for {
		err := r.Ensure(ctx)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		log.Warn("no serving certificate for this node yet; the gRPC API stays closed, enforcement continues", zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(10 * time.Second):
		}
	}
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
