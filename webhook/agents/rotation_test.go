package agents_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/execgate/execgate/internal/testpki"
	"github.com/execgate/execgate/nodeagent/agentclient"
	"github.com/execgate/execgate/nodeagent/server"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/webhook/agents"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
)

// rotationFleet is a controller client and two agents whose certificate and CA bundle
// files are rewritten in place, as a rotated Secret volume is, and re-read on every
// handshake.
type rotationFleet struct {
	dir      string
	nodes    []string
	backends map[string]*webhooktest.RecordingBackend
	addrs    map[string]string
	dialer   *agentclient.Dialer
}

func writeBundle(t *testing.T, path string, cas ...*testpki.CA) {
	t.Helper()
	var b bytes.Buffer
	for _, ca := range cas {
		b.Write(ca.CertPEM)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// issue writes every leaf from ca: the controller's client certificate and each agent's
// serving certificate for its node.
func (f *rotationFleet) issue(t *testing.T, ca *testpki.CA) {
	t.Helper()
	ca.ClientCert(t, "execgate-webhook").WriteFiles(t, f.dir, "controller")
	for _, n := range f.nodes {
		ca.ServerCert(t, n).WriteFiles(t, f.dir, "agent-"+n)
	}
}

// trust sets both sides' CA bundles.
func (f *rotationFleet) trust(t *testing.T, cas ...*testpki.CA) {
	t.Helper()
	writeBundle(t, filepath.Join(f.dir, "controller-ca.crt"), cas...)
	writeBundle(t, filepath.Join(f.dir, "agent-ca.crt"), cas...)
}

func newRotationFleet(t *testing.T, ca *testpki.CA, nodes ...string) *rotationFleet {
	t.Helper()
	f := &rotationFleet{dir: t.TempDir(), nodes: nodes, backends: map[string]*webhooktest.RecordingBackend{}, addrs: map[string]string{}}
	f.issue(t, ca)
	f.trust(t, ca)
	for _, n := range nodes {
		b := webhooktest.NewRecordingBackend()
		srv, err := server.New(server.Config{
			NodeName: n, CertFile: filepath.Join(f.dir, "agent-"+n+".crt"), KeyFile: filepath.Join(f.dir, "agent-"+n+".key"),
			ClientCAFile: filepath.Join(f.dir, "agent-ca.crt"), AllowedClientIdentities: []string{"execgate-webhook"},
			ReloadInterval: -1, ShutdownGracePeriod: time.Second,
		}, b, zaptest.NewLogger(t).Named(n), nil)
		if err != nil {
			t.Fatalf("agent server: %v", err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); _ = srv.Serve(ctx, lis) }()
		t.Cleanup(func() { cancel(); wg.Wait() })
		f.backends[n], f.addrs[n] = b, lis.Addr().String()
	}
	d, err := agentclient.NewDialer(agentclient.Config{
		CertFile: filepath.Join(f.dir, "controller.crt"), KeyFile: filepath.Join(f.dir, "controller.key"),
		CAFile: filepath.Join(f.dir, "controller-ca.crt"), ReloadInterval: -1,
	})
	if err != nil {
		t.Fatalf("NewDialer: %v", err)
	}
	f.dialer = d
	return f
}

// pushLoad pushes a fresh pod to every node, round after round, redialling each node
// every round (a new handshake, as after a controller restart or an agent move), until
// stop is closed. It counts every outcome.
type pushLoad struct {
	mu       sync.Mutex
	outcomes map[agents.Outcome]int
	errs     []error
	pushes   atomic.Int64
}

func (l *pushLoad) run(t *testing.T, f *rotationFleet, stop <-chan struct{}) {
	pool, err := agents.NewAgentPool(f.dialer, agents.NewStaticAgentDirectory(f.addrs), 8, zaptest.NewLogger(t))
	if err != nil {
		t.Error(err)
		return
	}
	defer pool.Close()
	pusher := &agents.Pusher{Agents: pool, Timeout: 2 * time.Second}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		for _, n := range f.nodes {
			pool.Forget(n)
			uid := fmt.Sprintf("uid-%s-%d", n, i)
			req, err := agents.CompilePodPolicy(webhooktest.Pod("pod-"+uid, uid, "web", n), n, webhooktest.Policy("web", 1), uid)
			if err != nil {
				t.Error(err)
				return
			}
			outcome, err := pusher.Push(context.Background(), n, req)
			l.pushes.Add(1)
			l.mu.Lock()
			if l.outcomes == nil {
				l.outcomes = map[agents.Outcome]int{}
			}
			l.outcomes[outcome]++
			if err != nil && len(l.errs) < 5 {
				l.errs = append(l.errs, err)
			}
			l.mu.Unlock()
		}
	}
}

// waitPushes blocks until n more pushes were made (each step of the rotation is seen by
// real handshakes before the next one).
func (l *pushLoad) waitPushes(t *testing.T, n int64) {
	t.Helper()
	target := l.pushes.Load() + n
	deadline := time.Now().Add(20 * time.Second)
	for l.pushes.Load() < target {
		if time.Now().After(deadline) {
			t.Fatalf("push load stalled at %d pushes", l.pushes.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// unauthenticatedPushes tries to push to node's agent as an attacker would: with no
// client certificate, and with the given certificates (e.g. one of a retired CA). It
// returns how many reached the backend.
func unauthenticatedPushes(t *testing.T, f *rotationFleet, node string, certs ...*testpki.KeyPair) int {
	t.Helper()
	attempts := []*testpki.KeyPair{nil}
	attempts = append(attempts, certs...)
	for i, kp := range attempts {
		cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13} // the attacker trusts anything
		if kp != nil {
			cert := kp.TLSCertificate(t)
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
		}
		conn, err := grpc.NewClient(f.addrs[node], grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		uid := fmt.Sprintf("attacker-%d-%d", time.Now().UnixNano(), i)
		req, err := agents.CompilePodPolicy(webhooktest.Pod("evil", uid, "web", node), node, webhooktest.Policy("web", 1), uid)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err = agentv1.NewAgentServiceClient(conn).ApplyPodPolicy(ctx, req)
		cancel()
		_ = conn.Close()
		if err == nil {
			t.Errorf("attacker push %d (certificate %v) accepted by %s", i, kp != nil, node)
		}
	}
	reached := 0
	for _, p := range f.backends[node].AppliedCalls() {
		if strings.HasPrefix(p.Pod.UID, "attacker-") {
			reached++
		}
	}
	return reached
}

// TestRotationCAWhileBindingsFlow rotates the agent mTLS CA the way the chart does
// (docs/threat-model.md, item 6): 1. both sides trust old+new, 2. every leaf is reissued
// from the new CA, 3. the old CA is dropped. Pushes flow to two nodes the whole time,
// each over a fresh handshake, and none may fail (a failed push is a fail-open binding);
// before, during and after, pushes without a client certificate or with one of the
// retired CA reach no agent. The control row replaces the CA without the overlap and
// shows that the load does notice a fail-open spike.
func TestRotationCAWhileBindingsFlow(t *testing.T) {
	t.Run("overlapping bundles: no failed push", func(t *testing.T) {
		oldCA, newCA := testpki.NewCA(t, "agent CA 1"), testpki.NewCA(t, "agent CA 2")
		f := newRotationFleet(t, oldCA, "node-a", "node-b")
		oldClient := oldCA.ClientCert(t, "execgate-webhook")
		strangerCA := testpki.NewCA(t, "someone else's CA")
		stranger := strangerCA.ClientCert(t, "execgate-webhook")

		load := &pushLoad{}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { defer close(done); load.run(t, f, stop) }()
		load.waitPushes(t, 20)
		if n := unauthenticatedPushes(t, f, "node-a", stranger); n != 0 {
			t.Errorf("before rotation: %d unauthenticated pushes reached node-a", n)
		}

		f.trust(t, oldCA, newCA)
		load.waitPushes(t, 20)
		f.issue(t, newCA)
		load.waitPushes(t, 20)
		if n := unauthenticatedPushes(t, f, "node-b", stranger); n != 0 {
			t.Errorf("during rotation: %d unauthenticated pushes reached node-b", n)
		}
		f.trust(t, newCA)
		load.waitPushes(t, 20)
		if n := unauthenticatedPushes(t, f, "node-a", stranger, oldClient); n != 0 {
			t.Errorf("after rotation: %d pushes without a certificate, or with the retired CA's, reached node-a", n)
		}
		close(stop)
		<-done

		load.mu.Lock()
		defer load.mu.Unlock()
		t.Logf("outcomes during rotation: %v", load.outcomes)
		if bad := load.pushes.Load() - int64(load.outcomes[agents.OutcomePushed]); bad != 0 {
			t.Fatalf("%d of %d pushes did not reach their agent during the rotation (%v), first errors: %v",
				bad, load.pushes.Load(), load.outcomes, load.errs)
		}
	})

	t.Run("control: new CA without overlap fails pushes", func(t *testing.T) {
		oldCA, newCA := testpki.NewCA(t, "agent CA 1"), testpki.NewCA(t, "agent CA 2")
		f := newRotationFleet(t, oldCA, "node-a")
		load := &pushLoad{}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { defer close(done); load.run(t, f, stop) }()
		load.waitPushes(t, 10)
		// Agents get the new CA and leaf before the controller has either.
		writeBundle(t, filepath.Join(f.dir, "agent-ca.crt"), newCA)
		newCA.ServerCert(t, "node-a").WriteFiles(t, f.dir, "agent-node-a")
		load.waitPushes(t, 10)
		close(stop)
		<-done
		load.mu.Lock()
		defer load.mu.Unlock()
		if load.outcomes[agents.OutcomeError] == 0 {
			t.Fatalf("rotation without overlap failed no push (%v): the load would not see a fail-open spike", load.outcomes)
		}
	})
}
