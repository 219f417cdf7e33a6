// Package agentclient dials node agents' AgentService over mutual TLS. It is
// what the webhook imports to talk to agents (with the generated API in
// proto/execgate/agent/v1); it must never import the agent's server.
//
// It owns the client side of the transport: the client certificate and the
// CA bundle are read from files and re-read when they rotate, so one Dialer
// serves a long-lived pool of connections to every node; and the check of the
// agent's identity: DialNode accepts only a serving certificate that names the
// node being dialled (DNS SAN = node name) and is for server use only, so the
// key of one node's agent cannot answer for another node.
package agentclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/execgate/execgate/internal/tlsfiles"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// Config configures a Dialer.
type Config struct {
	// CertFile and KeyFile are the client certificate presented to agents;
	// CAFile is the bundle the agents' serving certificates must chain to.
	CertFile string
	KeyFile  string
	CAFile   string
	// ServerName is the name Dial (not DialNode, which wants the node's
	// name) requires in the agent's certificate. Empty means the host part
	// of each address.
	ServerName string
	// ReloadInterval bounds how often the files are checked for rotation.
	// Default 5s; negative means on every handshake.
	ReloadInterval time.Duration
	// Insecure dials without TLS. FOR TESTS ONLY.
	Insecure bool
	// Logger receives certificate reload messages. Default: discard.
	Logger *zap.Logger
}

// Dialer opens connections to agents, sharing one set of TLS files.
type Dialer struct {
	creds credentials.TransportCredentials
	// tls is nil when Insecure.
	tls *reloadingCreds
}

// NewDialer loads the TLS files (unless Insecure). It fails if they cannot
// be read, so a misconfigured webhook stops at start.
func NewDialer(cfg Config) (*Dialer, error) {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Insecure {
		cfg.Logger.Warn("!!! agent client dials WITHOUT TLS: for tests only !!!")
		return &Dialer{creds: insecure.NewCredentials()}, nil
	}
	interval := cfg.ReloadInterval
	switch {
	case interval == 0:
		interval = 5 * time.Second
	case interval < 0:
		interval = 0
	}
	src, err := tlsfiles.Load(tlsfiles.Files{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, CAFile: cfg.CAFile},
		tlsfiles.Options{MinInterval: interval, Logger: cfg.Logger.Named("tls")})
	if err != nil {
		return nil, fmt.Errorf("agent client: load TLS files: %w", err)
	}
	creds := &reloadingCreds{src: src, serverName: cfg.ServerName}
	return &Dialer{creds: creds, tls: creds}, nil
}

// Client is a connection to one agent. Safe for concurrent use.
type Client struct {
	agentv1.AgentServiceClient
	conn *grpc.ClientConn
}

// Dial returns a client for the agent at address ("host:port"). Like
// grpc.NewClient it does not connect yet: the first call does, and fails
// with Unavailable if the agent cannot be reached or refuses the client.
// Callers set per-call deadlines (the webhook must fail open quickly).
func (d *Dialer) Dial(address string, opts ...grpc.DialOption) (*Client, error) {
	authority := ""
	if d.tls != nil {
		authority = d.tls.serverName
	}
	return d.dial(address, d.creds, authority, opts)
}

// DialNode is Dial for the agent of node: every handshake of the connection
// requires the agent's certificate to carry node as a DNS SAN (Config.ServerName
// is ignored), so a connection that reaches another node's agent, or a node
// presenting a certificate issued for another node, fails with Unavailable.
func (d *Dialer) DialNode(node, address string, opts ...grpc.DialOption) (*Client, error) {
	if node == "" {
		return nil, errors.New("agent client: node name is required")
	}
	creds := d.creds
	if d.tls != nil {
		c := *d.tls
		c.serverName = node
		creds = &c
	}
	return d.dial(address, creds, node, opts)
}

// dial connects with creds; a non-empty authority is the channel's (the
// :authority of every call), the name the agent's certificate is verified
// against as well (the TLS config's ServerName).
func (d *Dialer) dial(address string, creds credentials.TransportCredentials, authority string, opts []grpc.DialOption) (*Client, error) {
	if address == "" {
		return nil, errors.New("agent client: address is required")
	}
	all := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if authority != "" {
		all = append(all, grpc.WithAuthority(authority))
	}
	all = append(all,
		// Agents' server permits pings every 10s; detect dead nodes in ~40s.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}))
	all = append(all, opts...)
	conn, err := grpc.NewClient(address, all...)
	if err != nil {
		return nil, fmt.Errorf("agent client: dial %s: %w", address, err)
	}
	return &Client{AgentServiceClient: agentv1.NewAgentServiceClient(conn), conn: conn}, nil
}

// Dial is NewDialer(cfg) then Dial(address), for a one-off connection.
func Dial(address string, cfg Config, opts ...grpc.DialOption) (*Client, error) {
	d, err := NewDialer(cfg)
	if err != nil {
		return nil, err
	}
	return d.Dial(address, opts...)
}

// Conn exposes the underlying connection (state, channelz).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection.
func (c *Client) Close() error {
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("agent client: close: %w", err)
	}
	return nil
}

// reloadingCreds builds the TLS client config from the latest files on each
// handshake; grpc's own TLS credentials freeze the CA pool at creation.
type reloadingCreds struct {
	src        *tlsfiles.Source
	serverName string
}

func (c *reloadingCreds) config() *tls.Config {
	m := c.src.Current()
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    m.CAs,
		// Always present our certificate, even when the agent lists other
		// CAs as acceptable (mid-rotation): its refusal then names the cause.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return m.Certificate, nil
		},
		ServerName:       c.serverName,
		VerifyConnection: verifyServerOnly,
	}
}

// errClientUsage: the agent's certificate could also authenticate a client.
var errClientUsage = errors.New("agent certificate is also valid for client authentication; agents' serving certificates must carry server usage only")

// verifyServerOnly refuses an agent certificate whose extended key usages are
// not exactly server auth. A dual-use leaf (the chart's old shared one) could
// be replayed as a client against other agents.
func verifyServerOnly(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("agent presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	if len(leaf.UnknownExtKeyUsage) != 0 || !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		return errClientUsage
	}
	return nil
}

func (c *reloadingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return credentials.NewTLS(c.config()).ClientHandshake(ctx, authority, raw)
}

func (c *reloadingCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("agent client credentials cannot serve")
}

// Info names the protocol; the authority is the dialer's (grpc.WithAuthority)
// and the name verified is the TLS config's ServerName.
func (c *reloadingCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (c *reloadingCreds) Clone() credentials.TransportCredentials {
	clone := *c
	return &clone
}

// OverrideServerName is deprecated in grpc and unused by it.
func (c *reloadingCreds) OverrideServerName(name string) error {
	c.serverName = name
	return nil
}
