package agentsigner

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/internal/testpki"
	"github.com/execgate/execgate/nodeagent/agentcert"
	"github.com/execgate/execgate/nodeagent/agentclient"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	"github.com/execgate/execgate/nodeagent/server"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/test/e2e/cluster"
)

const agentUser = "system:serviceaccount:execgate-system:execgate-agent"

// signerEnv is a real API server, two nodes, the agent CA on disk and the signer
// reconciling every CSR of its signer until the test ends.
type signerEnv struct {
	c       *cluster.Cluster
	cl      client.Client
	nodes   []string
	caFile  string
	keyFile string
	ca      *testpki.CA
}

func startSigner(t *testing.T) *signerEnv {
	t.Helper()
	c := cluster.Start(t, cluster.Options{})
	ctx := context.Background()
	nodes, err := c.CreateNodes(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	env := &signerEnv{c: c, ca: testpki.NewCA(t, "execgate agent CA")}
	for _, n := range nodes {
		env.nodes = append(env.nodes, n.Name)
	}
	dir := t.TempDir()
	env.caFile = env.ca.WriteFile(t, filepath.Join(dir, "ca.crt"))
	keyDER, err := x509.MarshalPKCS8PrivateKey(env.ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "ca.key")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	// What the chart grants the agents: create and read CSRs, nothing else here.
	rbac := c.Client.RbacV1()
	if _, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "agent-csr"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"certificatesigningrequests"}, Verbs: []string{"create", "get"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "agent-csr"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "agent-csr"},
		Subjects: []rbacv1.Subject{{Kind: "Group", Name: "system:serviceaccounts"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(c.RESTConfig, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	env.cl, env.keyFile = cl, keyFile
	s := &Signer{Client: cl, AgentUsername: agentUser, CACertFile: env.caFile, CAKeyFile: keyFile, Log: zaptest.NewLogger(t)}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for runCtx.Err() == nil {
			var list certificatesv1.CertificateSigningRequestList
			if err := cl.List(runCtx, &list); err == nil {
				for _, csr := range list.Items {
					if _, err := s.Reconcile(runCtx, ctrl.Request{NamespacedName: types.NamespacedName{Name: csr.Name}}); err != nil && runCtx.Err() == nil {
						t.Logf("reconcile %s: %v", csr.Name, err)
					}
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return env
}

// as returns a client that the API server authenticates as user with the given user
// extra, as it does for a pod-bound service account token (impersonation stands in for
// the token: the CSR records the same username and extra).
func (env *signerEnv) as(t *testing.T, user string, extra map[string][]string) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(env.c.RESTConfig)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:serviceaccounts", "system:authenticated"}, Extra: extra}
	k, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// statusOnly is the smallest agent backend: GetStatus answers, nothing else is called.
type statusOnly struct{}

func (statusOnly) ApplyPodPolicy(context.Context, *podpolicy.PodPolicy) (bool, uint64, error) {
	return false, 0, errors.New("not used")
}
func (statusOnly) RemovePod(context.Context, string) (bool, error) { return false, nil }
func (statusOnly) RemovePolicy(context.Context, podpolicy.PolicyRef) (bool, error) {
	return false, nil
}
func (statusOnly) Status(context.Context) (*agentv1.AgentStatus, error) {
	return &agentv1.AgentStatus{}, nil
}
func (statusOnly) Subscribe(context.Context, podpolicy.EventFilter) (<-chan *agentv1.ExecEvent, func()) {
	ch := make(chan *agentv1.ExecEvent)
	return ch, func() {}
}

// checkChain serves the agent API with the certificate r obtained, trusting the CA bundle
// the controller publishes, and dials it as the controller does (minted client
// certificate, DialNode): it answers for node and is refused when dialled as other.
func (env *signerEnv) checkChain(t *testing.T, ctx context.Context, r *agentcert.Requester, node, other string) {
	t.Helper()
	dir := t.TempDir()
	iss := &ClientCertIssuer{CACertFile: env.caFile, CAKeyFile: env.keyFile, CommonName: "execgate-controller", Dir: filepath.Join(dir, "client")}
	if err := iss.Issue(); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "bundle", "ca.crt")
	if err := (&BundlePublisher{Client: env.cl, Reader: env.cl, Namespace: metav1.NamespaceDefault, Name: "execgate-agent-ca-bundle",
		CACertFile: env.caFile, LocalFile: bundle}).Sync(ctx); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{NodeName: node, CertFile: r.CertFile(), KeyFile: r.KeyFile(), ClientCAFile: bundle,
		AllowedClientIdentities: []string{"execgate-controller"}, ShutdownGracePeriod: time.Second}, statusOnly{}, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, lis) }()
	defer func() { stop(); <-served }()
	d, err := agentclient.NewDialer(agentclient.Config{CertFile: iss.CertFile(), KeyFile: iss.KeyFile(), CAFile: bundle})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dialAs string
		ok     bool
	}{{node, true}, {other, false}} {
		c, err := d.DialNode(tc.dialAs, lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = c.GetStatus(cctx, &agentv1.GetStatusRequest{})
		cancel()
		_ = c.Close()
		if (err == nil) != tc.ok {
			t.Errorf("GetStatus dialling %s's agent as %s: %v, want success %v", node, tc.dialAs, err, tc.ok)
		}
	}
}

// podToken creates the agents' service account and an agent pod bound to node, and
// returns a client authenticated by a token bound to that pod, as the kubelet mounts it:
// the API server itself then records the node in the CSR's user extra.
func (env *signerEnv) podToken(t *testing.T, ctx context.Context, node string) kubernetes.Interface {
	t.Helper()
	const ns, sa = "execgate-system", "execgate-agent"
	if err := env.c.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	core := env.c.Client.CoreV1()
	if _, err := core.ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := core.Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "agent-" + node},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node,
			Containers: []corev1.Container{{Name: "agent", Image: "execgate"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := core.ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for pod %s: %v", pod.Name, err)
	}
	cfg := rest.AnonymousClientConfig(env.c.RESTConfig)
	cfg.BearerToken = tr.Status.Token
	k, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func onNode(node string) map[string][]string {
	return map[string][]string{agentcert.NodeNameExtra: {node}}
}

// TestNodeIdentityAgentGetsCertificateForItsNodeOnly runs the agent's requester against
// a real API server and the signer. The agent on a node gets a server-only certificate
// naming exactly that node and chaining to the agent CA. Every request that would let
// one node's key answer for another is denied with a reason: a node asking for another
// node's name, a token bound to no node, another service account, client usage, an
// extra SAN, a node that does not exist. (New code: before issue 14 every agent simply
// shared one key, which TestNodeIdentityPushReachesOnlyThatNodesAgent reproduces.)
func TestNodeIdentityAgentGetsCertificateForItsNodeOnly(t *testing.T) {
	env := startSigner(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodeA, nodeB := env.nodes[0], env.nodes[1]

	t.Run("agent of a node", func(t *testing.T) {
		r := &agentcert.Requester{Client: env.as(t, agentUser, onNode(nodeA)), NodeName: nodeA, Dir: t.TempDir(),
			Timeout: 30 * time.Second, Log: zaptest.NewLogger(t)}
		if err := r.Ensure(ctx); err != nil {
			t.Fatalf("Ensure: %v", err)
		}
		data, err := os.ReadFile(r.CertFile())
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(data)
		leaf, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(leaf.DNSNames, []string{nodeA}) || len(leaf.IPAddresses) > 0 || len(leaf.URIs) > 0 {
			t.Errorf("certificate names DNS %v IPs %v URIs %v, want only %s", leaf.DNSNames, leaf.IPAddresses, leaf.URIs, nodeA)
		}
		if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
			t.Errorf("extended key usages %v, want server auth only", leaf.ExtKeyUsage)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: env.ca.Pool(), DNSName: nodeA}); err != nil {
			t.Errorf("certificate does not verify for %s against the agent CA: %v", nodeA, err)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: env.ca.Pool(), DNSName: nodeB}); err == nil {
			t.Errorf("certificate of %s verifies for %s", nodeA, nodeB)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: env.ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
			t.Error("agent certificate verifies as a client certificate")
		}
		env.checkChain(t, ctx, r, nodeA, nodeB)
	})

	t.Run("agent of a node, with a real pod-bound token", func(t *testing.T) {
		k := env.podToken(t, ctx, nodeB)
		r := &agentcert.Requester{Client: k, NodeName: nodeB, Dir: t.TempDir(), Timeout: 30 * time.Second, Log: zaptest.NewLogger(t)}
		if err := r.Ensure(ctx); err != nil {
			t.Fatalf("Ensure with the token of an agent pod on %s: %v", nodeB, err)
		}
		// The same token asking for the other node's name.
		other := &agentcert.Requester{Client: k, NodeName: nodeA, Dir: t.TempDir(), Timeout: 30 * time.Second, Log: zaptest.NewLogger(t)}
		if err := other.Ensure(ctx); err == nil || !strings.Contains(err.Error(), "Denied") {
			t.Fatalf("Ensure for %s with the token of a pod on %s = %v, want Denied", nodeA, nodeB, err)
		}
	})

	t.Run("agent asks for another node's name", func(t *testing.T) {
		r := &agentcert.Requester{Client: env.as(t, agentUser, onNode(nodeA)), NodeName: nodeB, Dir: t.TempDir(),
			Timeout: 30 * time.Second, Log: zaptest.NewLogger(t)}
		err := r.Ensure(ctx)
		if err == nil || !strings.Contains(err.Error(), "Denied") {
			t.Fatalf("Ensure for %s from a pod on %s = %v, want Denied", nodeB, nodeA, err)
		}
		if _, statErr := os.Stat(r.CertFile()); statErr == nil {
			t.Fatal("a certificate was written for another node")
		}
	})

	serverUsages := agentcert.Usages
	tests := []struct {
		name   string
		user   string
		extra  map[string][]string
		dns    []string
		ips    []net.IP
		usages []certificatesv1.KeyUsage
		reason string // substring of the denial message
	}{
		{"token bound to no node", agentUser, nil, []string{nodeA}, nil, serverUsages, "not bound to a pod on a node"},
		{"another service account", "system:serviceaccount:tenant:default", onNode(nodeA), []string{nodeA}, nil, serverUsages, "not by the agents' service account"},
		{"client usage", agentUser, onNode(nodeA), []string{nodeA}, nil,
			[]certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth, certificatesv1.UsageClientAuth}, "usages"},
		{"extra SAN", agentUser, onNode(nodeA), []string{nodeA, "execgate-controller"}, nil, serverUsages, "may name only"},
		{"IP SAN", agentUser, onNode(nodeA), []string{nodeA}, []net.IP{net.IPv4(10, 0, 0, 1)}, serverUsages, "may name only"},
		{"node that does not exist", agentUser, onNode("ghost"), []string{"ghost"}, nil, serverUsages, "does not exist"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
				Subject: pkix.Name{CommonName: tc.dns[0]}, DNSNames: tc.dns, IPAddresses: tc.ips}, key)
			if err != nil {
				t.Fatal(err)
			}
			csrs := env.as(t, tc.user, tc.extra).CertificatesV1().CertificateSigningRequests()
			csr, err := csrs.Create(ctx, &certificatesv1.CertificateSigningRequest{
				ObjectMeta: metav1.ObjectMeta{GenerateName: "attack-"},
				Spec: certificatesv1.CertificateSigningRequestSpec{Request: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
					SignerName: agentcert.SignerName, Usages: tc.usages},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("create CSR: %v", err)
			}
			deadline := time.Now().Add(30 * time.Second)
			for {
				got, err := env.c.Client.CertificatesV1().CertificateSigningRequests().Get(ctx, csr.Name, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if len(got.Status.Certificate) > 0 {
					t.Fatalf("signed: %s", tc.name)
				}
				if i := slices.IndexFunc(got.Status.Conditions, func(c certificatesv1.CertificateSigningRequestCondition) bool {
					return c.Type == certificatesv1.CertificateDenied
				}); i >= 0 {
					if msg := got.Status.Conditions[i].Message; !strings.Contains(msg, tc.reason) {
						t.Fatalf("denied with %q, want a message containing %q", msg, tc.reason)
					}
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("not decided within 30s: %+v", got.Status)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// TestRotationBundlePublishedAndOverlaps: the controller publishes the agent CA bundle to
// a real API server and to its own file; when the CA file is replaced, the new CA goes
// first and the old one stays next to it; an entry removed by hand is not brought back.
func TestRotationBundlePublishedAndOverlaps(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.CreateNamespace(ctx, "execgate-system"); err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(c.RESTConfig, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca1, ca2 := testpki.NewCA(t, "ca-1"), testpki.NewCA(t, "ca-2")
	caFile := ca1.WriteFile(t, filepath.Join(dir, "tls.crt"))
	p := &BundlePublisher{Client: cl, Reader: cl, Namespace: "execgate-system", Name: "execgate-agent-ca-bundle",
		CACertFile: caFile, LocalFile: filepath.Join(dir, "run", "agent-ca", "ca.crt")}
	published := func() (cm, local []string) {
		t.Helper()
		got, err := c.Client.CoreV1().ConfigMaps("execgate-system").Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(p.LocalFile)
		if err != nil {
			t.Fatal(err)
		}
		return subjects(t, []byte(got.Data[BundleKey])), subjects(t, data)
	}
	check := func(step string, want ...string) {
		t.Helper()
		if err := p.Sync(ctx); err != nil {
			t.Fatalf("%s: Sync: %v", step, err)
		}
		cm, local := published()
		if !slices.Equal(cm, want) || !slices.Equal(local, want) {
			t.Fatalf("%s: ConfigMap holds %v, local file %v, want %v", step, cm, local, want)
		}
	}
	check("first publication", "ca-1")
	ca2.WriteFile(t, caFile)
	check("CA replaced", "ca-2", "ca-1")
	check("again", "ca-2", "ca-1")
	cm, err := c.Client.CoreV1().ConfigMaps("execgate-system").Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[BundleKey] = string(ca2.CertPEM)
	if _, err := c.Client.CoreV1().ConfigMaps("execgate-system").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	check("old CA retired by hand", "ca-2")
}
