// Command execgate-controller runs execgate's admission webhooks (pods/binding, pods) and
// the WorkloadPolicy reconciler. Everything but flag parsing lives in package webhook
// (webhook.Run wires its subpackages).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/execgate/execgate/nodeagent/agentcert"
	"github.com/execgate/execgate/webhook"
	"github.com/execgate/execgate/webhook/binding"
)

func main() {
	var cfg webhook.Config
	fs := flag.NewFlagSet("execgate-controller", flag.ExitOnError)
	fs.DurationVar(&cfg.PushTimeout, "push-timeout", 250*time.Millisecond, "deadline of one push to an agent; the webhook answers (allowed) when it expires")
	fs.DurationVar(&cfg.LookupTimeout, "lookup-timeout", binding.DefaultLookupTimeout, "deadline of the API read of a pod the cache does not have yet")
	fs.DurationVar(&cfg.AnswerWithin, "answer-within", 1500*time.Millisecond, "bound of one whole admission decision (lookup, agent handshake, push); below the webhook's timeoutSeconds (0: none)")
	fs.IntVar(&cfg.WebhookPort, "webhook-port", 9443, "port of the admission webhook server")
	fs.StringVar(&cfg.WebhookCert, "webhook-cert-dir", "", "directory holding the webhook's tls.crt and tls.key")
	fs.StringVar(&cfg.AgentCAFile, "agent-ca-file", "", "CA bundle the agents' serving certificates chain to")
	fs.StringVar(&cfg.AgentCertFile, "agent-client-cert-file", "", "client certificate presented to agents")
	fs.StringVar(&cfg.AgentKeyFile, "agent-client-key-file", "", "key of --agent-client-cert-file")
	fs.StringVar(&cfg.AgentSignerCertFile, "agent-signer-cert-file", "", "agent CA certificate: sign agents' per-node serving certificates (CSR signer "+agentcert.SignerName+")")
	fs.StringVar(&cfg.AgentSignerKeyFile, "agent-signer-key-file", "", "key of --agent-signer-cert-file")
	fs.StringVar(&cfg.AgentClientDir, "agent-client-dir", "", "directory where the controller mints its client certificate when --agent-client-cert-file is empty")
	fs.StringVar(&cfg.AgentServiceAccount, "agent-service-account", "", "namespace/name of the agents' service account, the only requester whose certificates are signed")
	fs.StringVar(&cfg.AgentCABundleConfigMap, "agent-ca-bundle-configmap", "", "namespace/name of the ConfigMap to publish the agent CA bundle in (then --agent-ca-file is written, not read)")
	fs.IntVar(&cfg.AgentPort, "agent-port", 9443, "agents' gRPC port")
	fs.StringVar(&cfg.AgentNS, "agent-namespace", "", "namespace of the agent pods")
	fs.StringVar(&cfg.AgentSelector, "agent-selector", "", "label selector of the agent pods")
	fs.StringVar(&cfg.AgentEndpoints, "agent-endpoints", "", "static node=host:port,... list replacing agent discovery (tests)")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", ":8080", "address of the Prometheus metrics endpoint (0 disables)")
	fs.BoolVar(&cfg.MetricsSecure, "metrics-secure", false, "serve /metrics over HTTPS, only to clients the API server authenticates and authorizes for GET /metrics")
	fs.StringVar(&cfg.HealthAddr, "health-addr", ":8081", "address of /healthz and /readyz")
	fs.BoolVar(&cfg.LeaderElect, "leader-elect", false, "elect a leader to run the reconcilers (the webhook runs on every replica)")
	fs.StringVar(&cfg.LeaderElectNS, "leader-election-namespace", "", "namespace of the leader election Lease (default: the pod's own)")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file; default in-cluster config or $KUBECONFIG")
	_ = fs.Parse(os.Args[1:]) // ExitOnError

	log, err := zap.NewProduction()
	if err != nil {
		fmt.Fprintf(os.Stderr, "execgate-controller: create logger: %v\n", err)
		os.Exit(1)
	}
	defer func() { _ = log.Sync() }()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := webhook.Run(ctx, cfg, log); err != nil {
		log.Error("execgate-controller stopped", zap.Error(err))
		stop()
		_ = log.Sync()
		os.Exit(1)
	}
}
