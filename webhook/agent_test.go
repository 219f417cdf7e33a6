package webhook

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/execgate/execgate/internal/testpki"
	"github.com/execgate/execgate/nodeagent/agentclient"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	"github.com/execgate/execgate/nodeagent/server"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// recordingBackend is the fake behind a real agent gRPC server: it records what reached
// the node and answers like the agent (a version not newer than the loaded one is a no-op).
type recordingBackend struct {
	delay time.Duration // ApplyPodPolicy waits this long (or until the call is cancelled)

	mu             sync.Mutex
	applied        []*podpolicy.PodPolicy
	loaded         map[string]uint64 // pod uid -> version
	removedPods    []string
	removedPolicys []podpolicy.PolicyRef
}

func newRecordingBackend() *recordingBackend {
	return &recordingBackend{loaded: map[string]uint64{}}
}

func (b *recordingBackend) ApplyPodPolicy(ctx context.Context, p *podpolicy.PodPolicy) (bool, uint64, error) {
	if b.delay > 0 {
		select {
		case <-time.After(b.delay):
		case <-ctx.Done():
			return false, 0, ctx.Err()
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.applied = append(b.applied, p)
	if v := b.loaded[p.Pod.UID]; v >= p.Policy.Version {
		return false, v, nil
	}
	b.loaded[p.Pod.UID] = p.Policy.Version
	return true, p.Policy.Version, nil
}

func (b *recordingBackend) RemovePod(_ context.Context, uid string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.removedPods = append(b.removedPods, uid)
	_, ok := b.loaded[uid]
	delete(b.loaded, uid)
	return ok, nil
}

func (b *recordingBackend) RemovePolicy(_ context.Context, ref podpolicy.PolicyRef) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.removedPolicys = append(b.removedPolicys, ref)
	return true, nil
}

func (b *recordingBackend) Status(context.Context) (*agentv1.AgentStatus, error) {
	return &agentv1.AgentStatus{}, nil
}

func (b *recordingBackend) Subscribe(ctx context.Context, _ podpolicy.EventFilter) (<-chan *agentv1.ExecEvent, func()) {
	ch := make(chan *agentv1.ExecEvent)
	var once sync.Once
	return ch, func() { once.Do(func() { close(ch) }) }
}

func (b *recordingBackend) appliedCalls() []*podpolicy.PodPolicy {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*podpolicy.PodPolicy(nil), b.applied...)
}

func (b *recordingBackend) removals() (pods []string, policies []podpolicy.PolicyRef) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.removedPods...), append([]podpolicy.PolicyRef(nil), b.removedPolicys...)
}

// agentFleet is a set of real agent gRPC servers (mTLS, one per node) sharing a test CA,
// and the client-side Dialer that reaches them.
type agentFleet struct {
	ca        *testpki.CA
	dir       string
	endpoints map[string]string
	backends  map[string]*recordingBackend
	dialer    *agentclient.Dialer
}

func newAgentFleet(t *testing.T) *agentFleet {
	t.Helper()
	dir := t.TempDir()
	f := &agentFleet{ca: testpki.NewCA(t, "execgate webhook test CA"), dir: dir, endpoints: map[string]string{}, backends: map[string]*recordingBackend{}}
	caFile := f.ca.WriteFile(t, filepath.Join(dir, "ca.crt"))
	certFile, keyFile := f.ca.ClientCert(t, "execgate-webhook").WriteFiles(t, dir, "webhook-client")
	d, err := agentclient.NewDialer(agentclient.Config{CertFile: certFile, KeyFile: keyFile, CAFile: caFile, ServerName: "localhost"})
	if err != nil {
		t.Fatalf("NewDialer: %v", err)
	}
	f.dialer = d
	return f
}

// serve runs a real agent gRPC server (mTLS, the fleet's CA, a serving certificate
// naming node as the chart's issuer does) for node on addr ("127.0.0.1:0" for any port)
// over backend, until the returned stop is called.
func (f *agentFleet) serve(t *testing.T, node, addr string, backend server.Backend) (string, func()) {
	t.Helper()
	certFile, keyFile := f.ca.ServerCert(t, node).WriteFiles(t, t.TempDir(), "agent")
	srv, err := server.New(server.Config{
		NodeName: node, CertFile: certFile, KeyFile: keyFile,
		ClientCAFile:            filepath.Join(f.dir, "ca.crt"),
		AllowedClientIdentities: []string{"execgate-webhook"},
		ShutdownGracePeriod:     time.Second,
	}, backend, zaptest.NewLogger(t).Named(node), nil)
	if err != nil {
		t.Fatalf("agent server: %v", err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent %s: Serve: %v", node, err)
			}
		})
	}
	t.Cleanup(stop)
	return lis.Addr().String(), stop
}

// start runs an agent for node and returns its backend.
func (f *agentFleet) start(t *testing.T, node string, delay time.Duration) *recordingBackend {
	t.Helper()
	b := newRecordingBackend()
	b.delay = delay
	f.endpoints[node], _ = f.serve(t, node, "127.0.0.1:0", b)
	f.backends[node] = b
	return b
}

// pool returns a connection pool over the static endpoints (plus extra ones).
func (f *agentFleet) pool(t *testing.T, extra map[string]string) *AgentPool {
	t.Helper()
	eps := map[string]string{}
	for k, v := range f.endpoints {
		eps[k] = v
	}
	for k, v := range extra {
		eps[k] = v
	}
	p, err := NewAgentPool(f.dialer, NewStaticAgentDirectory(eps), 8, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("NewAgentPool: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// staticClients is an AgentClients with fixed clients; a node it lacks has no agent.
type staticClients map[string]agentv1.AgentServiceClient

func (s staticClients) Client(node string) (agentv1.AgentServiceClient, error) {
	if c, ok := s[node]; ok {
		return c, nil
	}
	return nil, fmt.Errorf("node %q: %w", node, ErrNoAgent)
}
