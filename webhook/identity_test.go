package webhook

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/execgate/execgate/internal/testpki"
	"github.com/execgate/execgate/nodeagent/server"
)

// serveWithCert is fleet.serve with a chosen serving certificate: what an attacker
// holding some certificate of the agent CA can put on the wire.
func (f *agentFleet) serveWithCert(t *testing.T, node string, kp *testpki.KeyPair, backend server.Backend) string {
	t.Helper()
	certFile, keyFile := kp.WriteFiles(t, t.TempDir(), "agent")
	srv, err := server.New(server.Config{
		NodeName: node, CertFile: certFile, KeyFile: keyFile,
		ClientCAFile: f.caFile(), AllowedClientIdentities: []string{"execgate-webhook"},
		ShutdownGracePeriod: time.Second,
	}, backend, zaptest.NewLogger(t).Named(node), nil)
	if err != nil {
		t.Fatalf("agent server: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = srv.Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return lis.Addr().String()
}

func (f *agentFleet) caFile() string { return f.dir + "/ca.crt" }

// TestNodeIdentityPushReachesOnlyThatNodesAgent: with one serving key for every agent
// (the chart before issue 14), whoever held it on one node could answer the controller's
// pushes for any other node (traffic redirected to it, or its agent listed at the other
// node's address) and report "applied" while the real node enforced nothing. Now a push
// to node-a succeeds only if the answering agent's certificate names node-a and is a
// server-only certificate; every impostor is refused at the handshake and its backend
// never sees the policy. On the old code (shared name "localhost", any usage) both
// impostors were pushed ("pushed"); node-b's own agent was already refused by its
// node-name check on the request.
func TestNodeIdentityPushReachesOnlyThatNodesAgent(t *testing.T) {
	fleet := newAgentFleet(t)
	legit := fleet.start(t, "node-a", 0)
	other := fleet.start(t, "node-b", 0)

	stolenB := newRecordingBackend()
	withNodeBCert := fleet.serveWithCert(t, "node-a", fleet.ca.ServerCert(t, "node-b"), stolenB)
	dualUse := newRecordingBackend()
	withDualUseCert := fleet.serveWithCert(t, "node-a", fleet.ca.Issue(t, testpki.CertOptions{
		CommonName: "node-a", DNSNames: []string{"node-a", "localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		Server: true, Client: true,
	}), dualUse)

	tests := []struct {
		name    string
		address string
		backend *recordingBackend // the agent that answers at address
		want    Outcome
	}{
		{"node-a's own agent", fleet.endpoints["node-a"], legit, OutcomePushed},
		{"node-b's agent answers for node-a", fleet.endpoints["node-b"], other, OutcomeError},
		{"impostor with node-b's certificate", withNodeBCert, stolenB, OutcomeError},
		{"impostor with a client+server certificate naming node-a", withDualUseCert, dualUse, OutcomeError},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool, err := NewAgentPool(fleet.dialer, NewStaticAgentDirectory(map[string]string{"node-a": tc.address}), 4, zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			pusher := &Pusher{Agents: pool, Timeout: 5 * time.Second}
			pod := testPod(fmt.Sprintf("pod-%d", i), fmt.Sprintf("uid-%d", i), "web", "node-a")
			req, err := CompilePodPolicy(pod, "node-a", testPolicy("web", 1), "req")
			if err != nil {
				t.Fatal(err)
			}
			before := len(tc.backend.appliedCalls())
			outcome, err := pusher.Push(context.Background(), "node-a", req)
			if outcome != tc.want {
				t.Fatalf("Push to node-a via %s = %s (%v), want %s", tc.address, outcome, err, tc.want)
			}
			reached := len(tc.backend.appliedCalls()) - before
			if tc.want == OutcomePushed && reached != 1 {
				t.Fatalf("node-a's agent received %d pushes, want 1", reached)
			}
			if tc.want != OutcomePushed && reached != 0 {
				t.Fatalf("an agent that is not node-a's received %d pushes meant for node-a", reached)
			}
		})
	}
}
