package agentclient_test

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/execgate/execgate/internal/testpki"
	"github.com/execgate/execgate/nodeagent/agentclient"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// echoAgent answers GetStatus with the client certificate's CN as node name.
type echoAgent struct {
	agentv1.UnimplementedAgentServiceServer
}

func (echoAgent) GetStatus(ctx context.Context, _ *agentv1.GetStatusRequest) (*agentv1.AgentStatus, error) {
	p, _ := peer.FromContext(ctx)
	info := p.AuthInfo.(credentials.TLSInfo)
	return &agentv1.AgentStatus{NodeName: info.State.PeerCertificates[0].Subject.CommonName}, nil
}

func startAgent(t *testing.T, ca *testpki.CA) string {
	t.Helper()
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{ca.ServerCert(t, "agent.execgate.svc").TLSCertificate(t)},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.Pool(),
	})))
	agentv1.RegisterAgentServiceServer(srv, echoAgent{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func getStatus(t *testing.T, c *agentclient.Client) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.GetStatus(ctx, &agentv1.GetStatusRequest{})
	return st.GetNodeName(), err
}

func TestDialerPresentsRotatedClientCertificate(t *testing.T) {
	ca := testpki.NewCA(t, "ca")
	addr := startAgent(t, ca)
	dir := t.TempDir()
	certFile, keyFile := ca.ClientCert(t, "webhook-1").WriteFiles(t, dir, "client")
	d, err := agentclient.NewDialer(agentclient.Config{
		CertFile: certFile, KeyFile: keyFile, CAFile: ca.WriteFile(t, filepath.Join(dir, "ca.crt")),
		ServerName: "agent.execgate.svc", ReloadInterval: -1,
	})
	if err != nil {
		t.Fatalf("NewDialer: %v", err)
	}
	dial := func() *agentclient.Client {
		c, err := d.Dial(addr)
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	if cn, err := getStatus(t, dial()); err != nil || cn != "webhook-1" {
		t.Fatalf("GetStatus = %q, %v; want webhook-1", cn, err)
	}
	ca.ClientCert(t, "webhook-2").WriteFiles(t, dir, "client")
	if cn, err := getStatus(t, dial()); err != nil || cn != "webhook-2" {
		t.Fatalf("after rotation GetStatus = %q, %v; want webhook-2", cn, err)
	}
}

func TestDialerVerifiesAgentName(t *testing.T) {
	ca := testpki.NewCA(t, "ca")
	addr := startAgent(t, ca)
	dir := t.TempDir()
	certFile, keyFile := ca.ClientCert(t, "webhook").WriteFiles(t, dir, "client")
	c, err := agentclient.Dial(addr, agentclient.Config{
		CertFile: certFile, KeyFile: keyFile, CAFile: ca.WriteFile(t, filepath.Join(dir, "ca.crt")),
		ServerName: "impostor.example",
	})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	if _, err := getStatus(t, c); status.Code(err) != codes.Unavailable {
		t.Fatalf("GetStatus against a certificate for another name: %v, want Unavailable", err)
	}
}

func TestNewDialerNeedsFiles(t *testing.T) {
	if _, err := agentclient.NewDialer(agentclient.Config{}); err == nil {
		t.Fatal("NewDialer without files succeeded")
	}
	if _, err := agentclient.NewDialer(agentclient.Config{Insecure: true}); err != nil {
		t.Fatalf("insecure NewDialer: %v", err)
	}
}
