package webhook

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/internal/version"
	"github.com/execgate/execgate/nodeagent/agentclient"
	"github.com/execgate/execgate/webhook/agents"
	"github.com/execgate/execgate/webhook/agentsigner"
	"github.com/execgate/execgate/webhook/binding"
	"github.com/execgate/execgate/webhook/learn"
	"github.com/execgate/execgate/webhook/policy"
	"github.com/execgate/execgate/webhook/violations"
)

// Config is the controller's configuration, one field per command-line flag.
type Config struct {
	PushTimeout   time.Duration
	LookupTimeout time.Duration // API read of a pod the cache does not have yet
	// AnswerWithin bounds a whole admission decision (binding.Admitter.AnswerWithin).
	AnswerWithin  time.Duration
	WebhookPort   int
	WebhookCert   string // directory with tls.crt and tls.key
	AgentCAFile   string
	AgentCertFile string
	AgentKeyFile  string
	// AgentSignerCertFile and AgentSignerKeyFile are the agent CA: with them the
	// controller signs agents' per-node serving certificates (agentsigner) and,
	// when AgentCertFile is empty, mints its own client certificate in AgentClientDir.
	AgentSignerCertFile string
	AgentSignerKeyFile  string
	AgentClientDir      string
	// AgentServiceAccount ("namespace/name") is the only requester whose CSRs are signed.
	AgentServiceAccount string
	// AgentCABundleConfigMap ("namespace/name"), with the signer files: publish the
	// agent trust bundle there (agents mount it) and use it as AgentCAFile, which is
	// then written by the controller.
	AgentCABundleConfigMap string
	AgentPort              int
	AgentNS                string
	AgentSelector          string
	// AgentEndpoints, when set ("node=host:port,..."), replaces agent discovery.
	AgentEndpoints string
	MetricsAddr    string
	// MetricsSecure serves /metrics over HTTPS to authenticated, authorized clients only.
	MetricsSecure bool
	HealthAddr    string
	LeaderElect   bool
	// LeaderElectNS holds the leader election Lease; empty: the pod's own
	// namespace (in cluster only).
	LeaderElectNS string
	Kubeconfig    string // empty: in-cluster, or $KUBECONFIG
}

// validate checks the flags and returns the static endpoints or the agent selector.
func (c *Config) validate() (static map[string]string, selector labels.Selector, err error) {
	var errs []error
	if c.PushTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--push-timeout must be positive, got %s", c.PushTimeout))
	}
	if c.LookupTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--lookup-timeout must be positive, got %s", c.LookupTimeout))
	}
	if c.AnswerWithin < 0 {
		errs = append(errs, fmt.Errorf("--answer-within must not be negative, got %s", c.AnswerWithin))
	}
	if c.WebhookPort < 1 || c.WebhookPort > 65535 {
		errs = append(errs, fmt.Errorf("--webhook-port %d is not a port", c.WebhookPort))
	}
	signer := c.AgentSignerCertFile != "" || c.AgentSignerKeyFile != ""
	switch {
	case c.AgentCAFile == "":
		errs = append(errs, errors.New("--agent-ca-file is required: agents accept only mTLS"))
	case (c.AgentCertFile == "") != (c.AgentKeyFile == ""):
		errs = append(errs, errors.New("--agent-client-cert-file and --agent-client-key-file go together"))
	case c.AgentCertFile == "" && (!signer || c.AgentClientDir == ""):
		errs = append(errs, errors.New("give --agent-client-cert-file and --agent-client-key-file, or the agent CA (--agent-signer-cert-file, --agent-signer-key-file) and --agent-client-dir to mint one"))
	}
	if c.AgentCABundleConfigMap != "" {
		if ns, name, ok := strings.Cut(c.AgentCABundleConfigMap, "/"); !ok || ns == "" || name == "" || !signer {
			errs = append(errs, fmt.Errorf("--agent-ca-bundle-configmap %q: want namespace/name, with --agent-signer-cert-file", c.AgentCABundleConfigMap))
		}
	}
	if signer {
		if c.AgentSignerCertFile == "" || c.AgentSignerKeyFile == "" {
			errs = append(errs, errors.New("--agent-signer-cert-file and --agent-signer-key-file go together"))
		}
		if ns, name, ok := strings.Cut(c.AgentServiceAccount, "/"); !ok || ns == "" || name == "" {
			errs = append(errs, fmt.Errorf("--agent-service-account %q: want namespace/name of the agents' service account (the only requester whose certificates are signed)", c.AgentServiceAccount))
		}
	}
	if c.AgentEndpoints != "" {
		if static, err = agents.ParseStaticEndpoints(c.AgentEndpoints); err != nil {
			errs = append(errs, fmt.Errorf("--agent-endpoints: %w", err))
		}
	} else {
		if c.AgentNS == "" || c.AgentSelector == "" {
			errs = append(errs, errors.New("--agent-namespace and --agent-selector are required unless --agent-endpoints is set"))
		}
		if selector, err = labels.Parse(c.AgentSelector); err != nil {
			errs = append(errs, fmt.Errorf("--agent-selector: %w", err))
		}
		if c.AgentPort < 1 || c.AgentPort > 65535 {
			errs = append(errs, fmt.Errorf("--agent-port %d is not a port", c.AgentPort))
		}
	}
	return static, selector, errors.Join(errs...)
}

// ControllerClientName is the identity of the client certificate the controller mints
// for itself; agents allow it with --client-name (the chart's execgate.controller.clientName).
const ControllerClientName = "execgate-controller"

// LeaderElectionID names the Lease the replicas elect their leader with.
const LeaderElectionID = "execgate-controller.execgate.io"

// Run starts the manager and blocks until ctx ends. The webhooks and agent discovery run
// on every replica; the policy reconciler only on the leader.
func Run(ctx context.Context, cfg Config, log *zap.Logger) error {
	static, selector, err := cfg.validate()
	if err != nil {
		return err
	}
	ctrl.SetLogger(zapr.NewLogger(log.Named("runtime")))
	restCfg, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return fmt.Errorf("scheme: %w", err)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return fmt.Errorf("scheme: %w", err)
	}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 MetricsOptions(cfg.MetricsAddr, cfg.MetricsSecure),
		HealthProbeBindAddress:  cfg.HealthAddr,
		LeaderElection:          cfg.LeaderElect,
		LeaderElectionID:        LeaderElectionID,
		LeaderElectionNamespace: cfg.LeaderElectNS,
		// The process exits when the manager stops (cmd/execgate-controller), so
		// handing the Lease back at once is safe: a standby leads within seconds
		// instead of waiting out the lease.
		LeaderElectionReleaseOnCancel: true,
		// Every pod is cached (bindings look pods up); managed fields are dead weight.
		Cache:         cache.Options{DefaultTransform: cache.TransformStripManagedFields()},
		WebhookServer: crwebhook.NewServer(crwebhook.Options{Port: cfg.WebhookPort, CertDir: cfg.WebhookCert}),
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}

	directory := agents.NewStaticAgentDirectory(static)
	if static == nil {
		directory = agents.NewAgentDirectory(cfg.AgentNS, selector, cfg.AgentPort, log.Named("discovery"))
	}
	if cfg.AgentCABundleConfigMap != "" {
		ns, name, _ := strings.Cut(cfg.AgentCABundleConfigMap, "/")
		bundle := &agentsigner.BundlePublisher{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Namespace: ns, Name: name,
			CACertFile: cfg.AgentSignerCertFile, LocalFile: cfg.AgentCAFile, Log: log.Named("agent-ca-bundle")}
		if err := bundle.Sync(ctx); err != nil {
			return fmt.Errorf("publish the agent CA bundle: %w", err)
		}
		if err := mgr.Add(bundle); err != nil {
			return fmt.Errorf("agent CA bundle: %w", err)
		}
	}
	clientCert, clientKey := cfg.AgentCertFile, cfg.AgentKeyFile
	if clientCert == "" {
		issuer := &agentsigner.ClientCertIssuer{CACertFile: cfg.AgentSignerCertFile, CAKeyFile: cfg.AgentSignerKeyFile,
			CommonName: ControllerClientName, Dir: cfg.AgentClientDir, Log: log.Named("client-cert")}
		if err := issuer.Issue(); err != nil {
			return err
		}
		if err := mgr.Add(issuer); err != nil {
			return fmt.Errorf("client certificate renewal: %w", err)
		}
		clientCert, clientKey = issuer.CertFile(), issuer.KeyFile()
	}
	if cfg.AgentSignerCertFile != "" {
		ns, name, _ := strings.Cut(cfg.AgentServiceAccount, "/")
		signer := &agentsigner.Signer{Client: mgr.GetClient(), NodeReader: mgr.GetAPIReader(),
			AgentUsername: "system:serviceaccount:" + ns + ":" + name,
			CACertFile:    cfg.AgentSignerCertFile, CAKeyFile: cfg.AgentSignerKeyFile,
			Recorder: mgr.GetEventRecorder("execgate-controller"), Log: log.Named("agent-signer")}
		if err := signer.SetupWithManager(mgr); err != nil {
			return err
		}
	}
	dialer, err := agentclient.NewDialer(agentclient.Config{
		// No shared server name: the pool dials each agent with DialNode, which wants
		// the node's own name in its certificate.
		CAFile: cfg.AgentCAFile, CertFile: clientCert, KeyFile: clientKey,
		Logger: log.Named("agent-tls"),
	})
	if err != nil {
		return err
	}
	pool, err := agents.NewAgentPool(dialer, directory, agents.DefaultPoolSize, log.Named("pool"))
	if err != nil {
		return err
	}
	defer pool.Close()
	if static == nil {
		// Registered after NewAgentPool wired directory.onChange: the informer's goroutine
		// must never see it change.
		informer, err := mgr.GetCache().GetInformer(ctx, &corev1.Pod{})
		if err != nil {
			return fmt.Errorf("pod informer: %w", err)
		}
		if _, err := informer.AddEventHandler(directory); err != nil {
			return fmt.Errorf("watch agent pods: %w", err)
		}
	}

	admitter := &binding.Admitter{
		Cache: mgr.GetClient(), APIReader: mgr.GetAPIReader(), LookupTimeout: cfg.LookupTimeout,
		AnswerWithin: cfg.AnswerWithin,
		Pusher:       &agents.Pusher{Agents: pool, Timeout: cfg.PushTimeout},
		Recorder:     mgr.GetEventRecorder("execgate-controller"),
		Log:          log.Named("admission"),
	}
	recoverPanic := true
	server := mgr.GetWebhookServer()
	server.Register(binding.BindingPath, &crwebhook.Admission{Handler: &binding.BindingHandler{Admitter: admitter}, RecoverPanic: &recoverPanic})
	server.Register(binding.PodsPath, &crwebhook.Admission{Handler: &binding.PodHandler{Admitter: admitter}, RecoverPanic: &recoverPanic})

	reconciler := &policy.PolicyReconciler{Client: mgr.GetClient(), Agents: pool, PushTimeout: cfg.PushTimeout * 4,
		Recorder: mgr.GetEventRecorder("execgate-controller"), Log: log.Named("reconciler")}
	if err := reconciler.SetupWithManager(mgr); err != nil {
		return err
	}
	// Leader only: one WatchEvents stream per agent; violations become aggregated pod
	// Events, Learn events merge into one WorkloadPolicyProposal per workload.
	violationEvents := &violations.ViolationEvents{Client: mgr.GetClient(), Log: log.Named("violations")}
	learner := &learn.ProposalLearner{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Log: log.Named("learn")}
	agentEvents := &agents.AgentEventStream{Nodes: directory, Agents: pool, Origin: &agents.EventOrigin{Reader: mgr.GetClient()},
		Sinks: []agents.ExecEventSink{violationEvents, learner}, Log: log.Named("agent-events")}
	if err := errors.Join(mgr.Add(violationEvents), mgr.Add(learner), mgr.Add(agentEvents)); err != nil {
		return fmt.Errorf("agent event stream: %w", err)
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("webhook", server.StartedChecker()); err != nil {
		return fmt.Errorf("ready check: %w", err)
	}
	log.Info("starting controller manager", zap.String("version", version.Version), zap.String("revision", version.Revision()), zap.Duration("pushTimeout", cfg.PushTimeout), zap.Duration("lookupTimeout", cfg.LookupTimeout), zap.Duration("answerWithin", cfg.AnswerWithin), zap.Bool("staticAgents", static != nil), zap.Bool("leaderElect", cfg.LeaderElect))
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	return nil
}

// MetricsOptions is the controller's metrics server. Secure serves HTTPS (controller-runtime's
// self-signed certificate) and /metrics only to clients whose bearer token the API server
// authenticates (TokenReview) and authorizes for GET /metrics (SubjectAccessReview): the
// metrics name tenants' namespaces and policies (issue 14.10).
func MetricsOptions(addr string, secure bool) metricsserver.Options {
	o := metricsserver.Options{BindAddress: addr}
	if secure {
		o.SecureServing = true
		o.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	return o
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
		}
		return c, nil
	}
	c, err := ctrl.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("find the API server (in-cluster or $KUBECONFIG): %w", err)
	}
	return c, nil
}
