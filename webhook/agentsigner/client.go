package agentsigner

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/execgate/execgate/internal/atomicfile"
)

// ClientCertIssuer keeps the controller's own client certificate for agents in
// Dir (tls.crt, tls.key), signed by the agent CA with client usage only.
// Helm's genSignedCert cannot make a single-usage leaf, and agents refuse
// client certificates that may also serve, so the chart's own issuer has the
// controller mint it. Every replica runs one (no leader election).
type ClientCertIssuer struct {
	CACertFile, CAKeyFile string
	CommonName            string
	Dir                   string
	Lifetime              time.Duration // default 7 days; renewed after half of it
	Log                   *zap.Logger
}

// CertFile is the client certificate's path, which the agent Dialer reads.
func (c *ClientCertIssuer) CertFile() string { return filepath.Join(c.Dir, "tls.crt") }

// KeyFile is the client key's path, which the agent Dialer reads.
func (c *ClientCertIssuer) KeyFile() string { return filepath.Join(c.Dir, "tls.key") }

func (c *ClientCertIssuer) lifetime() time.Duration {
	if c.Lifetime > 0 {
		return c.Lifetime
	}
	return 7 * 24 * time.Hour
}

// Issue writes a fresh certificate and key.
func (c *ClientCertIssuer) Issue() error {
	s := Signer{CACertFile: c.CACertFile, CAKeyFile: c.CAKeyFile}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	certPEM, err := s.sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: c.CommonName},
		DNSNames:    []string{c.CommonName},
		PublicKey:   key.Public(),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, c.lifetime())
	if err != nil {
		return fmt.Errorf("sign the controller's client certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key: %w", err)
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", c.Dir, err)
	}
	// Key first: a handshake that reads the new key with the old certificate fails
	// to parse and keeps the previous pair (tlsfiles).
	if err := writeFile(c.KeyFile(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})); err != nil {
		return err
	}
	return writeFile(c.CertFile(), certPEM)
}

// Start implements manager.Runnable: it renews the certificate until ctx ends.
func (c *ClientCertIssuer) Start(ctx context.Context) error {
	t := time.NewTicker(c.lifetime() / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := c.Issue(); err != nil && c.Log != nil {
				c.Log.Warn("controller client certificate not renewed", zap.Error(err))
			}
		}
	}
}

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (c *ClientCertIssuer) NeedLeaderElection() bool { return false }

func writeFile(path string, data []byte) error { return atomicfile.Write(path, data, 0o600) }
