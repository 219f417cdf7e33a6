package agents_test

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
	"github.com/execgate/execgate/webhook/agents"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
)

// serveWithCert is fleet.Serve with a chosen serving certificate: what an attacker
// holding some certificate of the agent CA can put on the wire.
func serveWithCert(t *testing.T, f *webhooktest.Fleet, node string, kp *testpki.KeyPair, backend server.Backend) string {
	t.Helper()
	certFile, keyFile := kp.WriteFiles(t, t.TempDir(), "agent")
	srv, err := server.New(server.Config{
		NodeName: node, CertFile: certFile, KeyFile: keyFile,
		ClientCAFile: f.Dir + "/ca.crt", AllowedClientIdentities: []string{"execgate-webhook"},
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
	fleet := webhooktest.NewFleet(t)
	legit := fleet.Start(t, "node-a", 0)
	other := fleet.Start(t, "node-b", 0)

	stolenB := webhooktest.NewRecordingBackend()
	withNodeBCert := serveWithCert(t, fleet, "node-a", fleet.CA.ServerCert(t, "node-b"), stolenB)
	dualUse := webhooktest.NewRecordingBackend()
	withDualUseCert := serveWithCert(t, fleet, "node-a", fleet.CA.Issue(t, testpki.CertOptions{
		CommonName: "node-a", DNSNames: []string{"node-a", "localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		Server: true, Client: true,
	}), dualUse)

	tests := []struct {
		name    string
		address string
		backend *webhooktest.RecordingBackend // the agent that answers at address
		want    agents.Outcome
	}{
		{"node-a's own agent", fleet.Endpoints["node-a"], legit, agents.OutcomePushed},
		{"node-b's agent answers for node-a", fleet.Endpoints["node-b"], other, agents.OutcomeError},
		{"impostor with node-b's certificate", withNodeBCert, stolenB, agents.OutcomeError},
		{"impostor with a client+server certificate naming node-a", withDualUseCert, dualUse, agents.OutcomeError},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool, err := agents.NewAgentPool(fleet.Dialer, agents.NewStaticAgentDirectory(map[string]string{"node-a": tc.address}), 4, zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			pusher := &agents.Pusher{Agents: pool, Timeout: 5 * time.Second}
			pod := webhooktest.Pod(fmt.Sprintf("pod-%d", i), fmt.Sprintf("uid-%d", i), "web", "node-a")
			req, err := agents.CompilePodPolicy(pod, "node-a", webhooktest.Policy("web", 1), "req")
			if err != nil {
				t.Fatal(err)
			}
			before := len(tc.backend.AppliedCalls())
			outcome, err := pusher.Push(context.Background(), "node-a", req)
			if outcome != tc.want {
				t.Fatalf("Push to node-a via %s = %s (%v), want %s", tc.address, outcome, err, tc.want)
			}
			reached := len(tc.backend.AppliedCalls()) - before
			if tc.want == agents.OutcomePushed && reached != 1 {
				t.Fatalf("node-a's agent received %d pushes, want 1", reached)
			}
			if tc.want != agents.OutcomePushed && reached != 0 {
				t.Fatalf("an agent that is not node-a's received %d pushes meant for node-a", reached)
			}
		})
	}
}
