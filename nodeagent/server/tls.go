package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"slices"
	"strings"

	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"

	"github.com/execgate/execgate/internal/tlsfiles"
)

// errIdentityRefused is returned from VerifyConnection when a client's
// certificate chains to the CA but names nobody in Config.AllowedClientIdentities.
var errIdentityRefused = errors.New("client certificate identity is not allowed")

// errServerUsage is returned from VerifyConnection when a client's certificate
// may also serve. Agents' serving certificates are server-only and name their
// node: refusing dual-use leaves keeps a key taken from one node (or a node
// named like the controller) from ever pushing to another node's agent.
var errServerUsage = errors.New("client certificate is also valid for server authentication; the controller's client certificate must carry client usage only")

// serverTLSConfig builds a config whose every handshake uses the latest
// certificate and CA bundle from src.
func serverTLSConfig(src *tlsfiles.Source, allowed []string) *tls.Config {
	verifyIdentity := func(cs tls.ConnectionState) error {
		if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
			return errIdentityRefused // unreachable with RequireAndVerifyClientCert
		}
		if !clientOnly(cs.VerifiedChains[0][0]) {
			return errServerUsage
		}
		if len(allowed) == 0 {
			return nil
		}
		if id := matchIdentity(cs.VerifiedChains[0][0], allowed); id == "" {
			return errIdentityRefused
		}
		return nil
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := src.Current()
			return &tls.Config{
				MinVersion:       tls.VersionTLS13,
				Certificates:     []tls.Certificate{*m.Certificate},
				ClientAuth:       tls.RequireAndVerifyClientCert,
				ClientCAs:        m.CAs,
				VerifyConnection: verifyIdentity,
			}, nil
		},
	}
}

// clientOnly reports whether leaf may authenticate a client and nothing else:
// its extended key usages are exactly client auth (no server auth, no "any",
// and not empty, which Go and most verifiers read as "any").
func clientOnly(leaf *x509.Certificate) bool {
	return len(leaf.UnknownExtKeyUsage) == 0 && slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
}

// matchIdentity returns the first of the leaf's names (CN, DNS SANs, URI
// SANs) that is in allowed, or "".
func matchIdentity(leaf *x509.Certificate, allowed []string) string {
	names := make([]string, 0, 1+len(leaf.DNSNames)+len(leaf.URIs))
	names = append(names, leaf.Subject.CommonName)
	names = append(names, leaf.DNSNames...)
	for _, u := range leaf.URIs {
		names = append(names, u.String())
	}
	for _, n := range names {
		if n != "" && slices.Contains(allowed, n) {
			return n
		}
	}
	return ""
}

// handshakeFailureReason classifies a failed server handshake for the
// refused-clients metric.
func handshakeFailureReason(err error) string {
	var (
		certErr   *tls.CertificateVerificationError
		unknownCA x509.UnknownAuthorityError
		invalid   x509.CertificateInvalidError
		alert     tls.AlertError
		netErr    net.Error
		notTLS    tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &notTLS):
		// A plaintext client (a webhook dialling without TLS) or a port scanner.
		return "not_tls"
	case strings.Contains(err.Error(), "unsupported versions"):
		// crypto/tls has no error type for it; the server requires TLS 1.3.
		return "protocol_version"
	case errors.Is(err, errIdentityRefused):
		return "identity_refused"
	case errors.Is(err, errServerUsage):
		return "server_usage"
	case errors.As(err, &unknownCA):
		return "unknown_authority"
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "expired"
	case errors.As(err, &certErr):
		return "bad_certificate"
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		return "no_client_cert"
	case errors.As(err, &alert):
		return "peer_alert"
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.As(err, &netErr):
		// Probes that connect and hang up, timeouts, resets.
		return "eof"
	}
	return "other"
}

// observedCreds counts and logs failed server handshakes, which gRPC itself
// only logs at a verbose level.
type observedCreds struct {
	credentials.TransportCredentials
	onFailure func(remote net.Addr, err error)
}

func (c observedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		c.onFailure(raw.RemoteAddr(), err)
	}
	return conn, info, err
}

func (c observedCreds) Clone() credentials.TransportCredentials {
	return observedCreds{TransportCredentials: c.TransportCredentials.Clone(), onFailure: c.onFailure}
}

// clientIdentity names the verified client of a connection, for logs.
func clientIdentity(info credentials.AuthInfo) zap.Field {
	tlsInfo, ok := info.(credentials.TLSInfo)
	if !ok || len(tlsInfo.State.VerifiedChains) == 0 || len(tlsInfo.State.VerifiedChains[0]) == 0 {
		return zap.Skip()
	}
	return zap.String("client", tlsInfo.State.VerifiedChains[0][0].Subject.CommonName)
}
