package server

import (
	"crypto/tls"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/execgate/execgate/internal/testpki"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// TestRefusedTransports: clients that do not speak mutual TLS 1.3 at all are refused
// before any request is read, counted under their own reason, and never reach the backend.
func TestRefusedTransports(t *testing.T) {
	env := startServer(t, nil)
	client := env.ca.ClientCert(t, "execgate-webhook").TLSCertificate(t)
	tests := []struct {
		name   string
		dial   func(t *testing.T) error
		reason string
	}{
		{"plaintext gRPC client", func(t *testing.T) error {
			conn, err := grpc.NewClient(env.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_, err = agentv1.NewAgentServiceClient(conn).ApplyPodPolicy(callCtx(t), applyReq("pod-1", 1))
			return err
		}, "not_tls"},
		{"TLS 1.2 client with a valid certificate", func(t *testing.T) error {
			conn, err := tls.Dial("tcp", env.addr, &tls.Config{
				RootCAs: env.ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{client},
				MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2"},
			})
			if err == nil {
				conn.Close()
			}
			return err
		}, "protocol_version"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := env.metric(t, MetricHandshakeFailures, map[string]string{"reason": tc.reason})
			calls := env.backend.calls.Load()
			err := tc.dial(t)
			if err == nil {
				t.Fatal("connection accepted")
			}
			if c := status.Code(err); strings.HasPrefix(tc.name, "plaintext") && c != codes.Unavailable {
				t.Fatalf("plaintext call: %v, want Unavailable", err)
			}
			eventually(t, MetricHandshakeFailures+`{reason="`+tc.reason+`"}`, func() bool {
				return env.metric(t, MetricHandshakeFailures, map[string]string{"reason": tc.reason}) > before
			})
			if env.backend.calls.Load() != calls {
				t.Error("backend was called for a refused client")
			}
		})
	}
	if n := env.metric(t, MetricRequests, nil); n != 0 {
		t.Errorf("%s = %v after refused handshakes only, want 0", MetricRequests, n)
	}
}

// TestNoTLSWithoutInsecure: a server configured without TLS material never listens in
// plaintext by accident; only Config.Insecure (the agent's --insecure-for-testing, which
// the Helm chart refuses) turns TLS off.
func TestNoTLSWithoutInsecure(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "ca")
	caFile := ca.WriteFile(t, filepath.Join(dir, "ca.crt"))
	certFile, keyFile := ca.ServerCert(t).WriteFiles(t, dir, "server")
	for name, cfg := range map[string]Config{
		"no TLS files at all": {NodeName: testNode},
		"no key":              {NodeName: testNode, CertFile: certFile, ClientCAFile: caFile},
		"no certificate":      {NodeName: testNode, KeyFile: keyFile, ClientCAFile: caFile},
		"no client CA":        {NodeName: testNode, CertFile: certFile, KeyFile: keyFile},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := New(cfg, newFakeBackend(), nil, nil); err == nil {
				t.Fatal("New accepted a config without TLS material and without Insecure")
			}
		})
	}

	// The TLS server's port answers a plaintext client with a TLS alert, never with gRPC.
	env := startServer(t, nil)
	conn, err := net.DialTimeout("tcp", env.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, _ := conn.Read(buf)
	if n > 0 && buf[0] != 0x15 { // a TLS record of type alert, or nothing
		t.Fatalf("plaintext HTTP/2 preface answered with %q", buf[:n])
	}
}

// TestNodeIdentityAgentCertCannotPush: agents' serving certificates name their node and
// carry server usage only; a client must carry client usage only. Before issue 14 the
// chart's leaves had both usages (Sprig's genSignedCert), so the key of any node's agent,
// or of a node named like the controller ("execgate-webhook" here), was a valid client
// of every other agent. Each row chains to the agent CA and names an allowed identity,
// and is refused under reason server_usage without reaching the backend; on the old code
// both rows were accepted (ApplyPodPolicy reached the backend).
func TestNodeIdentityAgentCertCannotPush(t *testing.T) {
	env := startServer(t, nil)
	tests := []struct {
		name string
		cert *testpki.KeyPair
	}{
		{"client and server usage", env.ca.Issue(t, testpki.CertOptions{
			CommonName: "execgate-webhook", DNSNames: []string{"execgate-webhook"}, Server: true, Client: true,
		})},
		{"no extended key usage (any)", env.ca.Issue(t, testpki.CertOptions{CommonName: "execgate-webhook"})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := env.metric(t, MetricHandshakeFailures, map[string]string{"reason": "server_usage"})
			calls := env.backend.calls.Load()
			_, err := env.client(t, tc.cert).ApplyPodPolicy(callCtx(t), applyReq("pod-1", 1))
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("ApplyPodPolicy with a %s certificate = %v, want Unavailable (refused handshake)", tc.name, err)
			}
			if env.backend.calls.Load() != calls {
				t.Fatal("backend was called for a refused client")
			}
			eventually(t, MetricHandshakeFailures+`{reason="server_usage"}`, func() bool {
				return env.metric(t, MetricHandshakeFailures, map[string]string{"reason": "server_usage"}) > before
			})
		})
	}
	if _, err := env.goodClient(t).GetStatus(callCtx(t), &agentv1.GetStatusRequest{}); err != nil {
		t.Fatalf("client-only certificate refused: %v", err)
	}
}
