// Command execgate-agent is execgate's node agent: it enforces the pod
// policies pushed by the webhook (gRPC, mTLS) on this node's cgroups.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/execgate/execgate/nodeagent/agent"
	"github.com/execgate/execgate/nodeagent/enforcer"
	"github.com/execgate/execgate/nodeagent/nri"
)

func main() {
	var cfg agent.Config
	var cleanup bool
	flag.StringVar(&cfg.NodeName, "node-name", "", "name of this node (required)")
	flag.StringVar(&cfg.GRPCAddr, "grpc-addr", ":9443", "address of the agent gRPC API")
	flag.StringVar(&cfg.TLSCertFile, "tls-cert-file", "", "serving certificate (PEM)")
	flag.StringVar(&cfg.TLSKeyFile, "tls-key-file", "", "serving key (PEM)")
	flag.StringVar(&cfg.TLSRequestDir, "tls-request-dir", "", "instead of --tls-cert-file/--tls-key-file: request a serving certificate naming this node from the controller (CSR signer execgate.io/agent-serving) and keep it in this directory")
	flag.StringVar(&cfg.ClientCAFile, "client-ca-file", "", "CA bundle client certificates must chain to")
	flag.StringVar(&cfg.ClientName, "client-name", "execgate-controller", "identity (CN or SAN) a client certificate must carry")
	flag.BoolVar(&cfg.InsecureForTesting, "insecure-for-testing", false, "serve gRPC without TLS or client authentication: FOR TESTS ONLY")
	flag.StringVar(&cfg.MetricsAddr, "metrics-addr", ":9090", "address of /metrics (empty disables)")
	flag.BoolVar(&cfg.MetricsSecure, "metrics-secure", false, "serve /metrics over HTTPS, only to clients the API server authenticates and authorizes for GET /metrics")
	flag.StringVar(&cfg.HealthAddr, "health-addr", ":9091", "address of /healthz and /readyz (empty disables)")
	flag.StringVar(&cfg.BPFFS, "bpffs", "/sys/fs/bpf/execgate", "bpffs directory for execgate's pins")
	flag.StringVar(&cfg.CgroupRoot, "cgroup-root", "", "cgroup2 mount point (empty = discover)")
	flag.StringVar(&cfg.CgroupDriver, "cgroup-driver", "systemd", "kubelet cgroup driver: systemd or cgroupfs")
	flag.StringVar(&cfg.KubeletCgroupParent, "kubelet-cgroup-parent", "", "directory under the cgroup root holding the kubelet's kubepods tree")
	flag.StringVar(&cfg.StartupTaint, "startup-taint", agent.StartupTaintKey, "taint removed from this node once the agent enforces every pod bound to it (set it at registration: kubelet --register-with-taints=<key>=:NoSchedule); empty removes none")
	flag.StringVar(&cfg.AttachMode, "attach-mode", "auto", "exec hook: auto, lsm, fmod_ret, fanotify or exec_kill")
	flag.IntVar(&cfg.MaxPods, "max-pods", 256, "pods this node may enforce (sizes the kernel maps and the pending set)")
	flag.IntVar(&cfg.MaxEntries, "max-entries", enforcer.DefaultMaxExactEntries, "exact allowlist entries across all policies")
	flag.IntVar(&cfg.MaxPrefixEntries, "max-prefix-entries", enforcer.DefaultMaxPrefixEntries, "directory prefix entries across all policies")
	flag.IntVar(&cfg.NamespaceSharePercent, "namespace-share-percent", 100, "percent of each rule map one namespace's policies may hold (100: no bound; the chart sets 25)")
	flag.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig for the backstop watch (empty = in-cluster, or no backstop)")
	flag.DurationVar(&cfg.GCInterval, "gc-interval", 30*time.Second, "period of the sweep that drops dead cgroups and unused policies")
	flag.DurationVar(&cfg.NodeStatusInterval, "node-status-interval", 30*time.Second, "shortest time between two ExecgateNode status writes that change only counters (pod and policy changes are written within seconds)")
	flag.Func("runtime-executables", "comma-separated container runtimes whose re-exec of themselves in a container's cgroup is exempt: bare names (looked for in /usr/local/sbin, /usr/local/bin, /usr/sbin, /usr/bin, /sbin, /bin) or absolute host paths (default runc,crun)", listFlag(&cfg.RuntimeExecutables))
	flag.StringVar(&cfg.HostRoot, "host-root", "", "where the host's files are seen (empty = /proc/1/root when readable, which hostPID gives, else /)")
	flag.Func("sandbox-paths", "comma-separated executables a pod sandbox runs, allowed in every pod-level binding (default /pause)", listFlag(&cfg.SandboxPaths))
	flag.StringVar(&cfg.NRISocket, "nri-socket", nri.DefaultSocket, "the container runtime's NRI socket: bind each container by name before it starts (empty: names from pod status only)")
	flag.BoolVar(&cleanup, "cleanup", false, "remove every pin in --bpffs (stops enforcement) and exit")
	flag.Parse()

	log, err := zap.NewProduction()
	if err != nil {
		fmt.Fprintln(os.Stderr, "execgate-agent: logger:", err)
		os.Exit(1)
	}
	defer func() { _ = log.Sync() }()
	if cleanup {
		if err := enforcer.Cleanup(cfg.BPFFS); err != nil {
			log.Fatal("cleanup failed", zap.String("bpffs", cfg.BPFFS), zap.Error(err))
		}
		log.Warn("removed every execgate pin: enforcement stopped on this node", zap.String("bpffs", cfg.BPFFS))
		return
	}
	if cfg.InsecureForTesting {
		log.Warn("!!! --insecure-for-testing: the agent API has NO TLS and NO client authentication; anyone who can reach it controls enforcement !!!")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx, cfg, log); err != nil {
		log.Error("agent stopped", zap.Error(err))
		stop()
		_ = log.Sync()
		os.Exit(1)
	}
}

// listFlag sets *dst to a comma-separated list; an empty value is an empty
// list (none), not the default.
func listFlag(dst *[]string) func(string) error {
	return func(s string) error {
		*dst = []string{}
		for _, v := range strings.Split(s, ",") {
			if v = strings.TrimSpace(v); v != "" {
				*dst = append(*dst, v)
			}
		}
		return nil
	}
}
