// Package webhooktest holds what the controller's rooms share in their tests: real agent
// gRPC servers over recording backends (Fleet), exec event sources, fixtures (a scheme, a
// pod, a policy) and readers of the served metrics and recorded Events. It is imported by
// _test.go files only, and imports nothing of the controller but webhook/agents.
package webhooktest

import (
	"context"
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
	"github.com/execgate/execgate/webhook/agents"
)

// RecordingBackend is the fake behind a real agent gRPC server: it records what reached
// the node and answers like the agent (a version not newer than the loaded one is a no-op).
type RecordingBackend struct {
	Delay time.Duration // ApplyPodPolicy waits this long (or until the call is cancelled)

	mu             sync.Mutex
	applied        []*podpolicy.PodPolicy
	loaded         map[string]uint64 // pod uid -> version
	removedPods    []string
	removedPolicys []podpolicy.PolicyRef
}

// NewRecordingBackend is a backend that has loaded nothing.
func NewRecordingBackend() *RecordingBackend {
	return &RecordingBackend{loaded: map[string]uint64{}}
}

// ApplyPodPolicy records p and loads it unless the pod holds that version or a newer one.
func (b *RecordingBackend) ApplyPodPolicy(ctx context.Context, p *podpolicy.PodPolicy) (bool, uint64, error) {
	if b.Delay > 0 {
		select {
		case <-time.After(b.Delay):
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

// RemovePod records the removal and forgets the pod.
func (b *RecordingBackend) RemovePod(_ context.Context, uid string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.removedPods = append(b.removedPods, uid)
	_, ok := b.loaded[uid]
	delete(b.loaded, uid)
	return ok, nil
}

// RemovePolicy records the removal.
func (b *RecordingBackend) RemovePolicy(_ context.Context, ref podpolicy.PolicyRef) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.removedPolicys = append(b.removedPolicys, ref)
	return true, nil
}

// Status is an empty status.
func (b *RecordingBackend) Status(context.Context) (*agentv1.AgentStatus, error) {
	return &agentv1.AgentStatus{}, nil
}

// Subscribe returns a stream that never carries an event.
func (b *RecordingBackend) Subscribe(ctx context.Context, _ podpolicy.EventFilter) (<-chan *agentv1.ExecEvent, func()) {
	ch := make(chan *agentv1.ExecEvent)
	var once sync.Once
	return ch, func() { once.Do(func() { close(ch) }) }
}

// AppliedCalls lists every ApplyPodPolicy call, in order.
func (b *RecordingBackend) AppliedCalls() []*podpolicy.PodPolicy {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*podpolicy.PodPolicy(nil), b.applied...)
}

// Removals lists the RemovePod and RemovePolicy calls, in order.
func (b *RecordingBackend) Removals() (pods []string, policies []podpolicy.PolicyRef) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.removedPods...), append([]podpolicy.PolicyRef(nil), b.removedPolicys...)
}

// Fleet is a set of real agent gRPC servers (mTLS, one per node) sharing a test CA,
// and the client-side Dialer that reaches them.
type Fleet struct {
	CA        *testpki.CA
	Dir       string // holds ca.crt and the client certificate
	Endpoints map[string]string
	Backends  map[string]*RecordingBackend
	Dialer    *agentclient.Dialer
}

// NewFleet is a fleet with no node yet, its CA and the Dialer's client certificate.
func NewFleet(t *testing.T) *Fleet {
	t.Helper()
	dir := t.TempDir()
	f := &Fleet{CA: testpki.NewCA(t, "execgate webhook test CA"), Dir: dir, Endpoints: map[string]string{}, Backends: map[string]*RecordingBackend{}}
	caFile := f.CA.WriteFile(t, filepath.Join(dir, "ca.crt"))
	certFile, keyFile := f.CA.ClientCert(t, "execgate-webhook").WriteFiles(t, dir, "webhook-client")
	d, err := agentclient.NewDialer(agentclient.Config{CertFile: certFile, KeyFile: keyFile, CAFile: caFile, ServerName: "localhost"})
	if err != nil {
		t.Fatalf("NewDialer: %v", err)
	}
	f.Dialer = d
	return f
}

// Serve runs a real agent gRPC server (mTLS, the fleet's CA, a serving certificate
// naming node as the chart's issuer does) for node on addr ("127.0.0.1:0" for any port)
// over backend, until the returned stop is called.
func (f *Fleet) Serve(t *testing.T, node, addr string, backend server.Backend) (string, func()) {
	t.Helper()
	certFile, keyFile := f.CA.ServerCert(t, node).WriteFiles(t, t.TempDir(), "agent")
	srv, err := server.New(server.Config{
		NodeName: node, CertFile: certFile, KeyFile: keyFile,
		ClientCAFile:            filepath.Join(f.Dir, "ca.crt"),
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

// Start runs an agent for node and returns its backend.
func (f *Fleet) Start(t *testing.T, node string, delay time.Duration) *RecordingBackend {
	t.Helper()
	b := NewRecordingBackend()
	b.Delay = delay
	f.Endpoints[node], _ = f.Serve(t, node, "127.0.0.1:0", b)
	f.Backends[node] = b
	return b
}

// Pool returns a connection pool over the static endpoints (plus extra ones).
func (f *Fleet) Pool(t *testing.T, extra map[string]string) *agents.AgentPool {
	t.Helper()
	eps := map[string]string{}
	for k, v := range f.Endpoints {
		eps[k] = v
	}
	for k, v := range extra {
		eps[k] = v
	}
	p, err := agents.NewAgentPool(f.Dialer, agents.NewStaticAgentDirectory(eps), 8, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("NewAgentPool: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}
