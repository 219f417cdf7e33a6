// Package framework runs execgate end to end on one machine: a real control plane
// (test/e2e/cluster), the chart's manifests applied to it (CRDs, RBAC, the
// ValidatingWebhookConfiguration with its clientConfig pointed at the local
// controller), the real execgate-controller and one real execgate-agent per simulated
// node as processes, and a kubelet simulator per node (test/e2e/kubeletsim) that
// creates pod and container cgroups in the node's own cgroup subtree.
//
// Components authenticate to the API server as the chart's ServiceAccounts (client
// certificates carrying their user names), so the chart's RBAC is what they run with.
// The controller reaches each agent through a Link the tests can slow down or cut.
//
// It is used by the e2e tests and by `make demo`; it must not be imported by product
// code.
package framework

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/nodeagent/agentclient"
	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/enforcer"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/test/e2e/cluster"
	"github.com/execgate/execgate/test/e2e/kubeletsim"
)

const (
	// Namespace is where the chart is installed.
	Namespace = "execgate-system"
	// Release is the Helm release name; the chart's names derive from it.
	Release              = "execgate"
	controllerClientName = "execgate-controller"
)

// Options tune an Env. The zero value is one node with the chart's defaults.
type Options struct {
	Nodes int
	// PushTimeout is the controller's --push-timeout (chart value controller.pushTimeout).
	PushTimeout time.Duration
	// AttachMode is the agents' --attach-mode (default auto).
	AttachMode string
	// GCInterval is the agents' --gc-interval (default 5s, short for tests).
	GCInterval time.Duration
	// PodStartDelay and SandboxDelay tune the kubelet simulators (0 = their defaults).
	PodStartDelay, SandboxDelay time.Duration
	// LeaderElection runs the controller with --leader-elect (the chart's default),
	// its Lease in the chart's namespace; StartStandbyController adds a replica.
	LeaderElection bool
	// NodeNetworks runs each node's agent in a network namespace of its own,
	// reached over a veth pair, so that Node.SetNetworkDown is a real partition.
	NodeNetworks bool
	// NoKubelets runs no kubelet simulators (Node.Kubelet stays nil): bound pods stay
	// Pending and start no process, so a benchmark can offer thousands of them.
	NoKubelets bool
	// AgentArgs are appended to every agent's generated flags; a flag given again
	// overrides the generated value (e.g. --max-pods for thousands of pods).
	AgentArgs []string
	// Logger receives the framework's and the simulators' messages (default: none).
	Logger *zap.Logger
	// Cluster is passed to cluster.New.
	Cluster cluster.Options
	// ChartDir is the chart to install; default the checkout's deploy/helm/execgate,
	// or $EXECGATE_E2E_CHART.
	ChartDir string
}

// Env is a running installation. Fields are read-only for callers.
type Env struct {
	Cluster *cluster.Cluster
	// Client reads and writes every kind, execgate's included, as cluster-admin.
	Client client.Client
	// Dir holds binaries, certificates and component logs (inside Cluster.Dir).
	Dir   string
	Nodes []*Node
	// Manifests are the chart's rendered objects as applied.
	Manifests []*unstructured.Unstructured

	opts        Options
	log         *zap.Logger
	repoRoot    string
	cgroupDir   string // parent of every node's subtree
	pinPrefix   string
	dialer      *agentclient.Dialer
	webhookPort int
	ctrlArgs    []string

	mu         sync.Mutex
	controller *cluster.Process

	simCancel context.CancelFunc
	simWG     sync.WaitGroup
	stopOnce  sync.Once
	stopErr   error
}

// Node is one simulated node: its cgroup subtree, agent process, link and kubelet.
type Node struct {
	Name string
	// Layout is where the kubelet simulator creates this node's pod cgroups.
	Layout  cgroups.Layout
	PinDir  string
	Link    *Link
	Kubelet *kubeletsim.Simulator
	// MetricsURL is the agent's /metrics.
	MetricsURL string

	cgroupRoot string
	grpcAddr   string
	healthAddr string
	args       []string
	net        *nodeNetwork // Options.NodeNetworks
	env        *Env

	mu    sync.Mutex
	agent *cluster.Process
	gen   int
}

// Start brings everything up; on error nothing is left running. The caller must call
// Stop.
func Start(ctx context.Context, opts Options) (_ *Env, err error) {
	if opts.Nodes <= 0 {
		opts.Nodes = 1
	}
	if opts.PushTimeout == 0 {
		opts.PushTimeout = 250 * time.Millisecond
	}
	if opts.AttachMode == "" {
		opts.AttachMode = "auto"
	}
	if opts.GCInterval == 0 {
		opts.GCInterval = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the e2e environment needs root (BPF, cgroups)")
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		return nil, err
	}
	c, err := cluster.New(ctx, opts.Cluster)
	if err != nil {
		return nil, err
	}
	e := &Env{Cluster: c, Dir: filepath.Join(c.Dir, "execgate"), opts: opts, log: opts.Logger, repoRoot: root}
	defer func() {
		if err != nil {
			_ = e.Stop()
		}
	}()
	if err := os.MkdirAll(e.Dir, 0o755); err != nil {
		return nil, err
	}
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"build execgate binaries", e.build},
		{"create clients", e.clients},
		{"write certificates", e.writePKI},
		{"install the chart (without its webhook)", e.installChart},
		{"create nodes", e.createNodes},
		{"start agents", e.startAgents},
		{"start controller", e.startController},
		{"register the webhook", e.registerWebhook},
		{"start kubelet simulators", e.startKubelets},
	}
	for _, s := range steps {
		start := time.Now()
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		e.log.Debug("e2e step done", zap.String("step", s.name), zap.Duration("took", time.Since(start)))
	}
	return e, nil
}

func (e *Env) bin(name string) string { return filepath.Join(e.Dir, "bin", name) }

// build compiles the agent and the controller from this checkout.
func (e *Env) build(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(e.Dir, "bin")+"/",
		"./cmd/execgate-agent", "./cmd/execgate-controller")
	cmd.Dir = e.repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, out)
	}
	return nil
}

// quietRuntime silences controller-runtime's complaint that its logger was never
// set: the harness's clients log nothing worth reading.
var quietRuntime sync.Once

func (e *Env) clients(context.Context) error {
	quietRuntime.Do(func() { ctrllog.SetLogger(logr.Discard()) })
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	cl, err := client.New(e.Cluster.RESTConfig, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	e.Client = cl
	return nil
}

// writePKI issues the controller's client certificate for agents and the
// webhook's serving certificate from the cluster CA; each agent's serving
// certificate, which names its node as the chart's issuer does, is issued in
// startAgents.
func (e *Env) writePKI(context.Context) error {
	ca := e.Cluster.CA
	files := map[string]func() (cluster.KeyPair, error){
		"controller-client": func() (cluster.KeyPair, error) { return ca.IssueClientCert(controllerClientName) },
		"webhook":           func() (cluster.KeyPair, error) { return ca.IssueServingCert("127.0.0.1", "localhost") },
	}
	for name, issue := range files {
		if err := e.writeKeyPair(name, issue); err != nil {
			return err
		}
	}
	if err := os.WriteFile(e.pki("ca.crt"), ca.CertPEM, 0o644); err != nil {
		return err
	}
	d, err := agentclient.NewDialer(agentclient.Config{CAFile: e.pki("ca.crt"),
		CertFile: e.pki("controller-client/tls.crt"), KeyFile: e.pki("controller-client/tls.key")})
	if err != nil {
		return err
	}
	e.dialer = d
	return nil
}

// writeKeyPair writes pki/name/tls.crt and tls.key.
func (e *Env) writeKeyPair(name string, issue func() (cluster.KeyPair, error)) error {
	pair, err := issue()
	if err != nil {
		return err
	}
	dir := filepath.Join(e.Dir, "pki", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), pair.CertPEM, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "tls.key"), pair.KeyPEM, 0o600)
}

func (e *Env) pki(rel string) string { return filepath.Join(e.Dir, "pki", rel) }

// installChart renders the chart and applies everything but the webhook
// configuration, which needs the controller's address (registerWebhook).
func (e *Env) installChart(ctx context.Context) error {
	if err := e.Cluster.CreateNamespace(ctx, Namespace); err != nil {
		return err
	}
	binDir := e.opts.Cluster.BinDir
	if binDir == "" {
		d, err := cluster.BinDir()
		if err != nil {
			return err
		}
		binDir = d
	}
	chart := e.opts.ChartDir
	if chart == "" {
		chart = os.Getenv("EXECGATE_E2E_CHART")
	}
	if chart == "" {
		chart = ChartDir(e.repoRoot)
	}
	out, err := RenderChart(ctx, filepath.Join(binDir, "helm"), chart, Release, Namespace,
		"controller.pushTimeout="+e.opts.PushTimeout.String())
	if err != nil {
		return err
	}
	objs, err := DecodeManifests(out)
	if err != nil {
		return err
	}
	e.Manifests = objs
	var rest []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() != "ValidatingWebhookConfiguration" {
			rest = append(rest, o)
		}
	}
	ap, err := NewApplier(e.Cluster.RESTConfig)
	if err != nil {
		return err
	}
	return ap.Apply(ctx, rest)
}

// serviceAccountUser is the API user of the chart's ServiceAccount for component
// (controller or agent), found by its label in the rendered manifests.
func (e *Env) serviceAccountUser(component string) (string, error) {
	for _, o := range e.Manifests {
		if o.GetKind() == "ServiceAccount" && o.GetLabels()["app.kubernetes.io/component"] == component {
			return "system:serviceaccount:" + o.GetNamespace() + ":" + o.GetName(), nil
		}
	}
	return "", fmt.Errorf("the chart renders no ServiceAccount labelled app.kubernetes.io/component=%s", component)
}

func (e *Env) kubeconfigFor(component string) (string, error) {
	user, err := e.serviceAccountUser(component)
	if err != nil {
		return "", err
	}
	return e.Cluster.KubeconfigFor(cluster.Identity{User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + Namespace}},
		"execgate/"+component+".kubeconfig")
}

// agentKubeconfig is the agent's identity on node: its ServiceAccount with the node name
// that the kubelet's pod-bound token carries in a cluster, which the chart's
// agent-node admission policy checks its writes against.
func (e *Env) agentKubeconfig(node string) (string, error) {
	user, err := e.serviceAccountUser("agent")
	if err != nil {
		return "", err
	}
	return e.Cluster.KubeconfigFor(cluster.Identity{User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + Namespace, "system:authenticated"},
		Extra: map[string][]string{"authentication.kubernetes.io/node-name": {node}}}, "execgate/agent-"+node+".kubeconfig")
}

func (e *Env) createNodes(ctx context.Context) error {
	nodes, err := e.Cluster.CreateNodes(ctx, e.opts.Nodes)
	if err != nil {
		return err
	}
	cgRoot, err := cgroups.ResolveRoot("")
	if err != nil {
		return err
	}
	base := "execgate-e2e-" + filepath.Base(e.Cluster.Dir)
	e.cgroupDir = filepath.Join(cgRoot, base)
	e.pinPrefix = "/sys/fs/bpf/" + strings.ReplaceAll(base, ".", "-")
	for i, n := range nodes {
		rel := filepath.Join(base, n.Name)
		if err := os.MkdirAll(filepath.Join(cgRoot, rel), 0o755); err != nil {
			return fmt.Errorf("create cgroup subtree of %s: %w", n.Name, err)
		}
		layout, err := cgroups.NewLayout(filepath.Join(cgRoot, rel), cgroups.DriverSystemd, "")
		if err != nil {
			return err
		}
		e.Nodes = append(e.Nodes, &Node{Name: n.Name, Layout: layout, PinDir: e.pinPrefix + "-" + strconv.Itoa(i),
			cgroupRoot: rel, env: e})
	}
	return nil
}

func (e *Env) startAgents(ctx context.Context) error {
	for _, n := range e.Nodes {
		kubeconfig, err := e.agentKubeconfig(n.Name)
		if err != nil {
			return err
		}
		ports, err := freePorts(3)
		if err != nil {
			return err
		}
		host := "127.0.0.1"
		if e.opts.NodeNetworks {
			if n.net, err = newNodeNetwork(e.Cluster.RESTConfig.Host); err != nil {
				return fmt.Errorf("network of %s: %w", n.Name, err)
			}
			host = n.net.agentAddr
		}
		// SAN = node name, server usage only: the controller's DialNode checks both.
		if err := e.writeKeyPair("agent-"+n.Name, func() (cluster.KeyPair, error) { return e.Cluster.CA.IssueServingCert(n.Name) }); err != nil {
			return fmt.Errorf("serving certificate of %s: %w", n.Name, err)
		}
		n.grpcAddr = host + ":" + strconv.Itoa(ports[0])
		n.MetricsURL = "http://" + host + ":" + strconv.Itoa(ports[1]) + "/metrics"
		n.healthAddr = host + ":" + strconv.Itoa(ports[2])
		n.args = []string{
			"--node-name=" + n.Name, "--grpc-addr=" + n.grpcAddr,
			"--tls-cert-file=" + e.pki("agent-"+n.Name+"/tls.crt"), "--tls-key-file=" + e.pki("agent-"+n.Name+"/tls.key"),
			"--client-ca-file=" + e.pki("ca.crt"), "--client-name=" + controllerClientName,
			"--metrics-addr=" + host + ":" + strconv.Itoa(ports[1]), "--health-addr=" + n.healthAddr,
			"--bpffs=" + n.PinDir, "--cgroup-driver=systemd", "--kubelet-cgroup-parent=" + n.cgroupRoot,
			"--attach-mode=" + e.opts.AttachMode, "--kubeconfig=" + kubeconfig,
			"--gc-interval=" + e.opts.GCInterval.String(),
		}
		n.args = append(n.args, e.opts.AgentArgs...)
		if n.Link, err = newLink(n.grpcAddr); err != nil {
			return err
		}
		if err := n.StartAgent(ctx); err != nil {
			return err
		}
	}
	return nil
}

// SetNetworkDown cuts (true) or restores (false) the node's network link with
// `ip link set`: the kernel drops what crosses it, nobody is told. Only for an
// Env started with Options.NodeNetworks.
func (n *Node) SetNetworkDown(down bool) error {
	if n.net == nil {
		return errors.New("node has no network of its own: start the Env with NodeNetworks")
	}
	return n.net.setDown(down)
}

// StartAgent starts the node's agent (again) and waits until it is ready.
func (n *Node) StartAgent(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.agent != nil && n.agent.ExitedErr() == nil {
		return fmt.Errorf("agent of %s already running", n.Name)
	}
	n.gen++
	bin, args := n.env.bin("execgate-agent"), n.args
	if n.net != nil {
		bin, args = n.net.command(bin, args)
	}
	p, err := cluster.StartProcess(fmt.Sprintf("agent-%s-%d", n.Name, n.gen), bin, n.env.Dir, args)
	if err != nil {
		return err
	}
	n.agent = p
	return waitHTTP(ctx, p, "http://"+n.healthAddr+"/readyz", nil)
}

// StopAgent stops the agent gracefully (SIGTERM). Its pins stay: enforcement goes on.
func (n *Node) StopAgent() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.agent == nil {
		return nil
	}
	return n.agent.Stop()
}

// KillAgent kills the agent with SIGKILL, as a crash or OOM kill would.
func (n *Node) KillAgent() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.agent != nil {
		n.agent.Kill()
	}
}

// AgentPID is the process id of the running agent, 0 if none runs.
func (n *Node) AgentPID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.agent == nil || n.agent.ExitedErr() != nil {
		return 0
	}
	return n.agent.PID()
}

// AgentLog returns the last lines of the current agent's log.
func (n *Node) AgentLog(lines int) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.agent == nil {
		return ""
	}
	return n.agent.LogTail(lines)
}

// Status calls the agent's GetStatus directly (not through the link), with mTLS.
func (n *Node) Status(ctx context.Context) (*agentv1.AgentStatus, error) {
	c, err := n.env.dialer.DialNode(n.Name, n.grpcAddr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return c.GetStatus(ctx, &agentv1.GetStatusRequest{})
}

// WaitPodEnforced polls the agent until it enforces the pod named name (its pod
// cgroup bound) and returns the pod's status, or fails after timeout.
func (n *Node) WaitPodEnforced(ctx context.Context, name string, timeout time.Duration) (*agentv1.PodStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		st, err := n.Status(ctx)
		if err == nil {
			for _, p := range st.GetPods() {
				if p.GetName() == name && p.GetState() == agentv1.PodState_POD_STATE_ENFORCED {
					return p, nil
				}
			}
			err = errors.New("not enforced yet")
		}
		if ctx.Err() == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("pod %s enforced on %s: %w (last: %v)", name, n.Name, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WatchEvents subscribes to the agent's exec events matching filter. The
// subscription is in place when it returns; stop ends it and closes the channel.
func (n *Node) WatchEvents(ctx context.Context, filter *agentv1.EventFilter) (_ <-chan *agentv1.ExecEvent, stop func(), err error) {
	c, err := n.AgentClient()
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	stop = func() { cancel(); c.Close() }
	stream, err := c.WatchEvents(ctx, &agentv1.WatchEventsRequest{Filter: filter})
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("watch events on %s: %w", n.Name, err)
	}
	// The server registers the subscription while handling the call; a status
	// round trip on the same connection orders the caller's next exec after it.
	if _, err := c.GetStatus(ctx, &agentv1.GetStatusRequest{}); err != nil {
		stop()
		return nil, nil, err
	}
	ch := make(chan *agentv1.ExecEvent, 64)
	go func() {
		defer close(ch)
		for {
			ev, err := stream.Recv()
			if err != nil {
				return
			}
			ch <- ev
		}
	}()
	return ch, stop, nil
}

// IsDenial tells execgate's denial of an exec from other failures: EPERM from
// execve (lsm, fmod_ret, fanotify attach modes), or SIGKILL at exec (exec_kill,
// and fanotify while no agent runs).
func IsDenial(err error) bool {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
	}
	return errors.Is(err, syscall.EPERM)
}

// AgentClient dials the node's agent directly with the controller's identity.
func (n *Node) AgentClient() (*agentclient.Client, error) {
	return n.env.dialer.DialNode(n.Name, n.grpcAddr)
}

func (e *Env) startController(ctx context.Context) error {
	kubeconfig, err := e.kubeconfigFor("controller")
	if err != nil {
		return err
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	e.webhookPort = ports[0]
	var endpoints []string
	for _, n := range e.Nodes {
		endpoints = append(endpoints, n.Name+"="+n.Link.Addr())
	}
	e.ctrlArgs = []string{
		"--kubeconfig=" + kubeconfig, "--push-timeout=" + e.opts.PushTimeout.String(),
		"--webhook-port=" + strconv.Itoa(ports[0]), "--webhook-cert-dir=" + e.pki("webhook"),
		"--agent-ca-file=" + e.pki("ca.crt"), "--agent-client-cert-file=" + e.pki("controller-client/tls.crt"),
		"--agent-client-key-file=" + e.pki("controller-client/tls.key"),
		"--agent-endpoints=" + strings.Join(endpoints, ","),
		"--metrics-addr=127.0.0.1:" + strconv.Itoa(ports[1]), "--health-addr=127.0.0.1:" + strconv.Itoa(ports[2]),
	}
	if e.opts.LeaderElection {
		e.ctrlArgs = append(e.ctrlArgs, "--leader-elect", "--leader-election-namespace="+Namespace)
	}
	return e.StartController(ctx)
}

// StartStandbyController starts one more controller replica, as a second pod of
// the chart's Deployment would run: same identity and flags, its own ports. Its
// webhook serves from the start; it runs the reconcilers once it leads. The
// caller stops it.
func (e *Env) StartStandbyController(ctx context.Context) (*cluster.Process, error) {
	if !e.opts.LeaderElection {
		return nil, errors.New("a standby needs an Env started with LeaderElection")
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	var args []string
	for _, a := range e.ctrlArgs {
		switch {
		case strings.HasPrefix(a, "--webhook-port="), strings.HasPrefix(a, "--metrics-addr="), strings.HasPrefix(a, "--health-addr="):
		default:
			args = append(args, a)
		}
	}
	args = append(args, "--webhook-port="+strconv.Itoa(ports[0]),
		"--metrics-addr=127.0.0.1:"+strconv.Itoa(ports[1]), "--health-addr=127.0.0.1:"+strconv.Itoa(ports[2]))
	p, err := cluster.StartProcess("controller-standby-"+strconv.FormatInt(time.Now().UnixNano(), 36), e.bin("execgate-controller"), e.Dir, args)
	if err != nil {
		return nil, err
	}
	tlsClient := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // readiness probe of a local test server
	if err := waitHTTP(ctx, p, "https://127.0.0.1:"+strconv.Itoa(ports[0])+"/healthz-of-webhook-port", tlsClient); err != nil {
		_ = p.Stop()
		return nil, err
	}
	return p, nil
}

// StartController starts the controller (again) and waits until its webhook serves.
func (e *Env) StartController(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.controller != nil && e.controller.ExitedErr() == nil {
		return errors.New("controller already running")
	}
	p, err := cluster.StartProcess("controller-"+strconv.FormatInt(time.Now().UnixNano(), 36), e.bin("execgate-controller"), e.Dir, e.ctrlArgs)
	if err != nil {
		return err
	}
	e.controller = p
	tlsClient := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // readiness probe of a local test server
	return waitHTTP(ctx, p, "https://127.0.0.1:"+strconv.Itoa(e.webhookPort)+"/healthz-of-webhook-port", tlsClient)
}

// StopController stops the controller (SIGTERM).
func (e *Env) StopController() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.controller == nil {
		return nil
	}
	return e.controller.Stop()
}

// ControllerLog returns the last lines of the controller's log.
func (e *Env) ControllerLog(lines int) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.controller == nil {
		return ""
	}
	return e.controller.LogTail(lines)
}

// registerWebhook applies the chart's ValidatingWebhookConfiguration with each
// webhook's clientConfig pointing at the local controller (the API server cannot
// reach a Service without a cluster network) and trusting the cluster CA.
func (e *Env) registerWebhook(ctx context.Context) error {
	var vwcs []*unstructured.Unstructured
	for _, o := range e.Manifests {
		if o.GetKind() != "ValidatingWebhookConfiguration" {
			continue
		}
		o = o.DeepCopy()
		hooks, _, err := unstructured.NestedSlice(o.Object, "webhooks")
		if err != nil || len(hooks) == 0 {
			return fmt.Errorf("webhook configuration %s has no webhooks", o.GetName())
		}
		for i, h := range hooks {
			m := h.(map[string]any)
			path, _, _ := unstructured.NestedString(m, "clientConfig", "service", "path")
			if path == "" {
				return fmt.Errorf("webhook %v has no clientConfig.service.path", m["name"])
			}
			m["clientConfig"] = map[string]any{
				"url":      "https://127.0.0.1:" + strconv.Itoa(e.webhookPort) + path,
				"caBundle": base64.StdEncoding.EncodeToString(e.Cluster.CA.CertPEM),
			}
			hooks[i] = m
		}
		if err := unstructured.SetNestedSlice(o.Object, hooks, "webhooks"); err != nil {
			return err
		}
		vwcs = append(vwcs, o)
	}
	if len(vwcs) != 1 {
		return fmt.Errorf("the chart renders %d ValidatingWebhookConfigurations, want 1", len(vwcs))
	}
	ap, err := NewApplier(e.Cluster.RESTConfig)
	if err != nil {
		return err
	}
	return ap.Apply(ctx, vwcs)
}

func (e *Env) startKubelets(context.Context) error {
	if e.opts.NoKubelets {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.simCancel = cancel
	for _, n := range e.Nodes {
		sim, err := kubeletsim.New(kubeletsim.Config{Client: e.Cluster.Client, NodeName: n.Name, Layout: n.Layout,
			PodStartDelay: e.opts.PodStartDelay, SandboxDelay: e.opts.SandboxDelay, Logger: e.log.Named("kubelet")})
		if err != nil {
			return err
		}
		n.Kubelet = sim
		e.simWG.Add(1)
		go func() {
			defer e.simWG.Done()
			_ = sim.Run(ctx)
		}()
	}
	return nil
}

// Stop tears everything down: kubelets (their processes and cgroups), controller,
// agents, their pins, the node cgroup subtrees, and the control plane.
func (e *Env) Stop() error {
	e.stopOnce.Do(func() {
		var errs []error
		if e.simCancel != nil {
			e.simCancel()
			e.simWG.Wait()
		}
		errs = append(errs, e.StopController())
		for _, n := range e.Nodes {
			errs = append(errs, n.StopAgent())
			if n.Link != nil {
				errs = append(errs, n.Link.Close())
			}
			if n.net != nil {
				errs = append(errs, n.net.close())
			}
			if n.PinDir != "" {
				if err := enforcer.Cleanup(n.PinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
					errs = append(errs, err)
				}
			}
		}
		if e.cgroupDir != "" {
			testenv.RemoveCgroup(e.cgroupDir)
		}
		errs = append(errs, e.Cluster.Stop())
		e.stopErr = errors.Join(errs...)
	})
	return e.stopErr
}

// waitHTTP polls url until it answers (any status below 500 for TLS endpoints
// whose path does not exist; 200 otherwise) or the process exits.
func waitHTTP(ctx context.Context, p *cluster.Process, url string, c *http.Client) error {
	if c == nil {
		c = &http.Client{Timeout: 2 * time.Second}
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var last error
	for {
		if err := p.ExitedErr(); err != nil {
			return err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || (strings.HasPrefix(url, "https://") && resp.StatusCode < 500) {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s: %v; log tail:\n%s", p.Name(), url, last, p.LogTail(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// UpdatePolicy reads the WorkloadPolicy key, applies change to it and writes it back,
// retrying on conflict: the controller writes the policy's status at any time, so a bare
// Get then Update races it. It returns the policy as written (its new generation).
func (e *Env) UpdatePolicy(ctx context.Context, key client.ObjectKey, change func(*v1alpha1.WorkloadPolicy)) (*v1alpha1.WorkloadPolicy, error) {
	var wp v1alpha1.WorkloadPolicy
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := e.Client.Get(ctx, key, &wp); err != nil {
			return err
		}
		change(&wp)
		return e.Client.Update(ctx, &wp)
	})
	if err != nil {
		return nil, fmt.Errorf("update WorkloadPolicy %s: %w", key, err)
	}
	return &wp, nil
}
