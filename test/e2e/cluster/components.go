package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"
)

// serviceClusterIPRange is only an allocation range for Service ClusterIPs: no
// kube-proxy runs, so nothing ever routes to it.
const serviceClusterIPRange = "10.0.0.0/24"

// frontProxyClient is the CN of the aggregation layer's proxy client certificate.
const frontProxyClient = "front-proxy-client"

// ports are the loopback ports one cluster listens on.
type ports struct {
	etcdClient, etcdPeer, apiServer, scheduler int
}

// freePorts asks the kernel for distinct free loopback ports. They are released before
// the components bind them, so another process can race us; Start retries on that.
func freePorts() (ports, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	nums := make([]int, 4)
	for i := range nums {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return ports{}, fmt.Errorf("find free loopback port: %w", err)
		}
		ls = append(ls, l)
		nums[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports{etcdClient: nums[0], etcdPeer: nums[1], apiServer: nums[2], scheduler: nums[3]}, nil
}

func loopbackURL(scheme string, port int) string {
	return scheme + "://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// paths are the files a cluster writes under its directory.
type paths struct {
	dir string
}

func (p paths) pki(name string) string { return filepath.Join(p.dir, "pki", name) }
func (p paths) etcdData() string       { return filepath.Join(p.dir, "etcd-data") }
func (p paths) adminKubeconfig() string {
	return filepath.Join(p.dir, "admin.kubeconfig")
}
func (p paths) schedulerKubeconfig() string {
	return filepath.Join(p.dir, "kube-scheduler.kubeconfig")
}

func etcdArgs(p paths, pt ports) []string {
	client, peer := loopbackURL("http", pt.etcdClient), loopbackURL("http", pt.etcdPeer)
	return []string{
		"--name=e2e",
		"--data-dir=" + p.etcdData(),
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=e2e=" + peer,
		"--initial-cluster-state=new",
		// Data lives for one test; durability only costs time.
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	}
}

func apiServerArgs(p paths, pt ports) []string {
	return []string{
		"--etcd-servers=" + loopbackURL("http", pt.etcdClient),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(pt.apiServer),
		"--tls-cert-file=" + p.pki("apiserver.crt"),
		"--tls-private-key-file=" + p.pki("apiserver.key"),
		"--cert-dir=" + p.pki("apiserver-generated"),
		"--client-ca-file=" + p.pki("ca.crt"),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction,ServiceAccount,MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.pki("sa.pub"),
		"--service-account-signing-key-file=" + p.pki("sa.key"),
		"--service-cluster-ip-range=" + serviceClusterIPRange,
		"--requestheader-client-ca-file=" + p.pki("front-proxy-ca.crt"),
		"--requestheader-allowed-names=" + frontProxyClient,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p.pki("front-proxy-client.crt"),
		"--proxy-client-key-file=" + p.pki("front-proxy-client.key"),
		// The only address is loopback, which the endpoints reconciler refuses to
		// publish for the kubernetes Service; nothing in-cluster dials it anyway.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--profiling=false",
	}
}

func schedulerArgs(p paths, pt ports) []string {
	kubeconfig := p.schedulerKubeconfig()
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(pt.scheduler),
		"--tls-cert-file=" + p.pki("scheduler.crt"),
		"--tls-private-key-file=" + p.pki("scheduler.key"),
	}
}

// pollInterval is how often readiness is probed while a component starts.
const pollInterval = 100 * time.Millisecond

// waitReady calls probe until it succeeds, proc exits, or ctx ends.
func waitReady(ctx context.Context, proc *Process, probe func(context.Context) error) error {
	var last error
	for {
		if err := proc.ExitedErr(); err != nil {
			return err
		}
		if last = probe(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last probe: %v); log tail:\n%s", proc.Name(), ctx.Err(), last, proc.LogTail(20))
		case <-time.After(pollInterval):
		}
	}
}

// httpProbe returns a probe that GETs url and wants 200.
func httpProbe(client *http.Client, url string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
		}
		return nil
	}
}

// tlsClient trusts only the cluster CA.
func tlsClient(ca *CertificateAuthority) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
}

// apiServerReadyProbe asks /readyz as cluster-admin, which also proves that client
// certificate authentication and RBAC work.
func apiServerReadyProbe(client kubernetes.Interface) func(context.Context) error {
	return func(ctx context.Context) error {
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Raw()
		if err != nil {
			return fmt.Errorf("GET /readyz: %w: %s", err, body)
		}
		return nil
	}
}
