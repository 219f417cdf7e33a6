package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/execgate/execgate/internal/testenv"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const (
	defaultStartTimeout = 60 * time.Second
	// startAttempts bounds retries when a component loses a port to another process
	// between freePorts and its bind.
	startAttempts = 3
)

// Options tune a cluster. The zero value is a working default.
type Options struct {
	// BinDir holds etcd, kube-apiserver and kube-scheduler; default BinDir().
	BinDir string
	// ExtraAPIServerArgs and ExtraSchedulerArgs are appended to the generated flags;
	// a flag given again overrides the generated value.
	ExtraAPIServerArgs []string
	ExtraSchedulerArgs []string
	// StartTimeout bounds how long each start attempt may take; default 60s.
	StartTimeout time.Duration
}

// Cluster is a running control plane. Its fields are read-only for callers.
type Cluster struct {
	// Dir is the private temporary directory holding PKI, etcd data, kubeconfigs
	// and <component>.log files. It is removed by Stop.
	Dir string
	// Kubeconfig is the path of a cluster-admin (system:masters) kubeconfig.
	Kubeconfig string
	// APIServerURL is https://127.0.0.1:<port>.
	APIServerURL string
	// RESTConfig and Client authenticate as cluster-admin.
	RESTConfig *rest.Config
	Client     kubernetes.Interface
	// CA signs every certificate of the cluster and is trusted for client auth.
	CA *CertificateAuthority

	procs   []*Process // in start order; stopped in reverse
	procsMu sync.Mutex
	// apiServerArgs are kept for RestartAPIServer.
	apiServerBin  string
	apiServerArgs []string
	stopOnce      sync.Once
	stopErr       error
	nodeSeq       atomic.Int64
}

// Start runs a cluster for the test and registers its Stop with t.Cleanup, so it is
// torn down even when the test fails or panics. It skips or fails t like RequireE2E
// when the binaries are missing, and fails t if the cluster cannot start.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.BinDir == "" {
		RequireE2E(t)
	} else if missing := missingBinaries(opts.BinDir); len(missing) > 0 {
		testenv.Need(t, RequireE2EEnv, fmt.Sprintf("binaries %s missing in %s; build them with `make tools`", strings.Join(missing, ", "), opts.BinDir))
	}
	c, err := New(context.Background(), opts)
	if err != nil {
		t.Fatalf("start e2e cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			c.logTails(t)
		}
		if err := c.Stop(); err != nil {
			t.Errorf("stop e2e cluster: %v", err)
		}
	})
	return c
}

// New starts a cluster. The caller must call Stop, also when ctx is cancelled later:
// ctx bounds only the start.
func New(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.BinDir == "" {
		dir, err := BinDir()
		if err != nil {
			return nil, err
		}
		opts.BinDir = dir
	}
	if missing := missingBinaries(opts.BinDir); len(missing) > 0 {
		return nil, fmt.Errorf("binaries %s missing in %s: run `make tools`", strings.Join(missing, ", "), opts.BinDir)
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = defaultStartTimeout
	}
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		var c *Cluster
		c, err = startOnce(ctx, opts)
		if err == nil {
			return c, nil
		}
		if !isPortConflict(err) {
			break
		}
	}
	return nil, err
}

// startOnce starts every component in a fresh directory, and cleans up after itself
// on failure.
func startOnce(ctx context.Context, opts Options) (_ *Cluster, err error) {
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	dir, err := makeClusterDir()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Stop())
		}
	}()
	pt, err := freePorts()
	if err != nil {
		return nil, err
	}
	p := paths{dir: dir}
	c.APIServerURL = loopbackURL("https", pt.apiServer)
	if err := c.writePKI(p); err != nil {
		return nil, err
	}
	if err := c.startEtcd(ctx, opts, p, pt); err != nil {
		return nil, err
	}
	if err := c.startAPIServer(ctx, opts, p, pt); err != nil {
		return nil, err
	}
	if err := c.startScheduler(ctx, opts, p, pt); err != nil {
		return nil, err
	}
	// No kube-controller-manager creates the default ServiceAccount, and the
	// ServiceAccount admission plugin rejects pods without it.
	if err := c.ensureDefaultServiceAccount(ctx, metav1.NamespaceDefault); err != nil {
		return nil, err
	}
	return c, nil
}

// writePKI creates the CA, serving certificates and service account keys.
func (c *Cluster) writePKI(p paths) error {
	if err := os.MkdirAll(p.pki(""), 0o700); err != nil {
		return fmt.Errorf("create pki directory: %w", err)
	}
	ca, err := newCertificateAuthority()
	if err != nil {
		return err
	}
	c.CA = ca
	caKey, err := encodeKey(ca.Key)
	if err != nil {
		return err
	}
	if err := writeKeyPair(KeyPair{CertPEM: ca.CertPEM, KeyPEM: caKey}, p.pki("ca.crt"), p.pki("ca.key")); err != nil {
		return err
	}
	serving, err := ca.IssueServingCert("127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
	if err != nil {
		return err
	}
	if err := writeKeyPair(serving, p.pki("apiserver.crt"), p.pki("apiserver.key")); err != nil {
		return err
	}
	scheduler, err := ca.IssueServingCert("127.0.0.1", "localhost")
	if err != nil {
		return err
	}
	if err := writeKeyPair(scheduler, p.pki("scheduler.crt"), p.pki("scheduler.key")); err != nil {
		return err
	}
	if err := writeFrontProxyPKI(p); err != nil {
		return err
	}
	sa, err := newServiceAccountKey()
	if err != nil {
		return err
	}
	return writeKeyPair(sa, p.pki("sa.pub"), p.pki("sa.key"))
}

// writeFrontProxyPKI creates the aggregation layer's request-header CA and the client
// certificate the API server proxies with. Besides making aggregated APIs possible,
// it gives components with delegated authentication (kube-scheduler, webhook servers)
// the requestheader CA they look up in kube-system/extension-apiserver-authentication.
// It is a separate CA because any certificate it signs can assert any user.
func writeFrontProxyPKI(p paths) error {
	ca, err := newCertificateAuthority()
	if err != nil {
		return fmt.Errorf("front proxy: %w", err)
	}
	if err := os.WriteFile(p.pki("front-proxy-ca.crt"), ca.CertPEM, 0o644); err != nil {
		return fmt.Errorf("write front proxy CA: %w", err)
	}
	client, err := ca.IssueClientCert(frontProxyClient)
	if err != nil {
		return fmt.Errorf("front proxy: %w", err)
	}
	return writeKeyPair(client, p.pki("front-proxy-client.crt"), p.pki("front-proxy-client.key"))
}

func (c *Cluster) startEtcd(ctx context.Context, opts Options, p paths, pt ports) error {
	proc, err := c.launch(opts.BinDir, "etcd", etcdArgs(p, pt))
	if err != nil {
		return err
	}
	probe := httpProbe(&http.Client{Timeout: 2 * time.Second}, loopbackURL("http", pt.etcdClient)+"/health")
	return waitReady(ctx, proc, probe)
}

func (c *Cluster) startAPIServer(ctx context.Context, opts Options, p paths, pt ports) error {
	if err := writeKubeconfig(p.adminKubeconfig(), c.APIServerURL, c.CA, adminIdentity); err != nil {
		return err
	}
	cfg, err := restConfigFromKubeconfig(p.adminKubeconfig())
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("create admin client: %w", err)
	}
	c.Kubeconfig, c.RESTConfig, c.Client = p.adminKubeconfig(), cfg, client
	c.apiServerBin, c.apiServerArgs = opts.BinDir, append(apiServerArgs(p, pt), opts.ExtraAPIServerArgs...)
	proc, err := c.launch(opts.BinDir, "kube-apiserver", c.apiServerArgs)
	if err != nil {
		return err
	}
	return waitReady(ctx, proc, apiServerReadyProbe(client))
}

// RestartAPIServer stops kube-apiserver (SIGTERM), keeps it down for down, and
// starts it again on the same port with the same flags and data, waiting until it
// is ready. Clients reconnect by themselves, as after a control-plane upgrade.
func (c *Cluster) RestartAPIServer(ctx context.Context, down time.Duration) error {
	c.procsMu.Lock()
	var old *Process
	idx := -1
	for i, p := range c.procs {
		if p.Name() == "kube-apiserver" || strings.HasPrefix(p.Name(), "kube-apiserver-") {
			old, idx = p, i
		}
	}
	c.procsMu.Unlock()
	if old == nil {
		return errors.New("restart kube-apiserver: not running")
	}
	if err := old.Stop(); err != nil {
		return fmt.Errorf("stop kube-apiserver: %w", err)
	}
	time.Sleep(down)
	proc, err := StartProcess(fmt.Sprintf("kube-apiserver-%d", time.Now().UnixNano()), filepath.Join(c.apiServerBin, "kube-apiserver"), c.Dir, c.apiServerArgs)
	if err != nil {
		return err
	}
	c.procsMu.Lock()
	c.procs[idx] = proc
	c.procsMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, defaultStartTimeout)
	defer cancel()
	return waitReady(ctx, proc, apiServerReadyProbe(c.Client))
}

func (c *Cluster) startScheduler(ctx context.Context, opts Options, p paths, pt ports) error {
	if err := writeKubeconfig(p.schedulerKubeconfig(), c.APIServerURL, c.CA, schedulerIdentity); err != nil {
		return err
	}
	proc, err := c.launch(opts.BinDir, "kube-scheduler", append(schedulerArgs(p, pt), opts.ExtraSchedulerArgs...))
	if err != nil {
		return err
	}
	// /readyz includes the scheduler's informer sync, so pods created after this are
	// seen and scheduled.
	return waitReady(ctx, proc, httpProbe(tlsClient(c.CA), loopbackURL("https", pt.scheduler)+"/readyz"))
}

func (c *Cluster) launch(binDir, name string, args []string) (*Process, error) {
	proc, err := StartProcess(name, filepath.Join(binDir, name), c.Dir, args)
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, proc)
	return proc, nil
}

// isPortConflict reports whether a start failed because a port was taken meanwhile.
func isPortConflict(err error) bool {
	return strings.Contains(err.Error(), "address already in use")
}

// CreateNamespace creates namespace name with the "default" ServiceAccount that
// kube-controller-manager would normally add; pods cannot be created without it.
func (c *Cluster) CreateNamespace(ctx context.Context, name string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return c.ensureDefaultServiceAccount(ctx, name)
}

func (c *Cluster) ensureDefaultServiceAccount(ctx context.Context, namespace string) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: namespace}}
	_, err := c.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create default service account in %s: %w", namespace, err)
	}
	return nil
}

// Stop kills every component (scheduler, API server, etcd, in that order) and removes
// Dir. It is safe to call more than once; later calls return the first result.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		var errs []error
		for i := len(c.procs) - 1; i >= 0; i-- {
			errs = append(errs, c.procs[i].Stop())
		}
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove cluster directory: %w", err))
		}
		c.stopErr = errors.Join(errs...)
	})
	return c.stopErr
}

// logTails writes the end of each component's log to t, for failed tests.
func (c *Cluster) logTails(t testing.TB) {
	t.Helper()
	for _, p := range c.procs {
		t.Logf("--- %s log tail ---\n%s", p.Name(), p.LogTail(30))
	}
}
