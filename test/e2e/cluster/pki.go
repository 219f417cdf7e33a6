package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"
)

// certLifetime outlives any test run by far while keeping leaked keys short-lived.
const certLifetime = 24 * time.Hour

// CertificateAuthority is the cluster's single CA: it signs the API server's serving
// certificate and every client certificate, and the API server trusts it for client
// authentication (--client-ca-file). Tests use it to issue webhook serving certificates
// (put CertPEM in the webhook's caBundle) and identities such as system:node:<name>.
type CertificateAuthority struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
}

// KeyPair is a PEM-encoded certificate and private key.
type KeyPair struct {
	CertPEM []byte
	KeyPEM  []byte
}

// newCertificateAuthority creates a self-signed ECDSA P-256 CA.
func newCertificateAuthority() (*CertificateAuthority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl, err := certTemplate(pkix.Name{CommonName: "execgate-e2e-ca"})
	if err != nil {
		return nil, err
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	return &CertificateAuthority{Cert: cert, Key: key, CertPEM: encodeCert(der)}, nil
}

// IssueServingCert issues a TLS server certificate for the given DNS names and IP
// addresses (strings that parse as IPs become IP SANs).
func (ca *CertificateAuthority) IssueServingCert(hosts ...string) (KeyPair, error) {
	if len(hosts) == 0 {
		return KeyPair{}, fmt.Errorf("issue serving certificate: no hosts given")
	}
	tmpl, err := certTemplate(pkix.Name{CommonName: hosts[0]})
	if err != nil {
		return KeyPair{}, err
	}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	pair, err := ca.issue(tmpl)
	if err != nil {
		return KeyPair{}, fmt.Errorf("issue serving certificate for %v: %w", hosts, err)
	}
	return pair, nil
}

// IssueClientCert issues a client certificate that the API server maps to user (CN)
// and groups (O), e.g. ("system:node:node-0", "system:nodes").
func (ca *CertificateAuthority) IssueClientCert(user string, groups ...string) (KeyPair, error) {
	tmpl, err := certTemplate(pkix.Name{CommonName: user, Organization: groups})
	if err != nil {
		return KeyPair{}, err
	}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	pair, err := ca.issue(tmpl)
	if err != nil {
		return KeyPair{}, fmt.Errorf("issue client certificate for %q: %w", user, err)
	}
	return pair, nil
}

func (ca *CertificateAuthority) issue(tmpl *x509.Certificate) (KeyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return KeyPair{}, fmt.Errorf("generate key: %w", err)
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return KeyPair{}, fmt.Errorf("sign certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return KeyPair{}, err
	}
	return KeyPair{CertPEM: encodeCert(der), KeyPEM: keyPEM}, nil
}

func certTemplate(subject pkix.Name) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		NotBefore:    now.Add(-time.Minute), // tolerate small clock differences between processes
		NotAfter:     now.Add(certLifetime),
	}, nil
}

// newServiceAccountKey returns the PEM-encoded RSA key pair the API server signs and
// verifies service account tokens with (RS256 is what the token issuer expects).
func newServiceAccountKey() (KeyPair, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return KeyPair{}, fmt.Errorf("generate service account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return KeyPair{}, fmt.Errorf("marshal service account public key: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return KeyPair{}, err
	}
	// CertPEM holds the public key here: --service-account-key-file takes either.
	return KeyPair{CertPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), KeyPEM: keyPEM}, nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// writeKeyPair writes pair to certPath and keyPath (key readable by the owner only).
func writeKeyPair(pair KeyPair, certPath, keyPath string) error {
	if err := os.WriteFile(certPath, pair.CertPEM, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", certPath, err)
	}
	if err := os.WriteFile(keyPath, pair.KeyPEM, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", keyPath, err)
	}
	return nil
}
