// Package testpki mints throw-away CAs and certificates for tests that need
// real TLS (the agent's gRPC server, the webhook's agent client).
//
// It owns nothing but test fixtures: keys are ECDSA P-256, made fresh per
// call and never written outside the directory a test gives. It must not be
// imported by non-test code.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a self-signed certificate authority.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	Key     crypto.Signer
}

// NewCA returns a CA valid from one hour ago for one day.
func NewCA(t testing.TB, commonName string) *CA {
	t.Helper()
	key := newKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(t),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"execgate tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("create CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parse CA certificate: %v", err)
	}
	return &CA{Cert: cert, CertPEM: encodePEM("CERTIFICATE", der), Key: key}
}

// Pool returns a pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// WriteFile writes the CA certificate (PEM) to path atomically and returns path.
func (ca *CA) WriteFile(t testing.TB, path string) string {
	t.Helper()
	writeAtomic(t, path, ca.CertPEM)
	return path
}

// CertOptions describes a leaf certificate. Zero validity means "valid from
// one hour ago for one day".
type CertOptions struct {
	CommonName string
	DNSNames   []string
	IPs        []net.IP
	URIs       []*url.URL
	NotBefore  time.Time
	NotAfter   time.Time
	// Server and Client select the extended key usages; both may be set.
	Server bool
	Client bool
}

// KeyPair is a leaf certificate with its private key.
type KeyPair struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
}

// Issue signs a leaf certificate with the CA.
func (ca *CA) Issue(t testing.TB, o CertOptions) *KeyPair {
	t.Helper()
	key := newKey(t)
	now := time.Now()
	if o.NotBefore.IsZero() {
		o.NotBefore = now.Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = now.Add(24 * time.Hour)
	}
	var eku []x509.ExtKeyUsage
	if o.Server {
		eku = append(eku, x509.ExtKeyUsageServerAuth)
	}
	if o.Client {
		eku = append(eku, x509.ExtKeyUsageClientAuth)
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(t),
		Subject:      pkix.Name{CommonName: o.CommonName},
		DNSNames:     o.DNSNames,
		IPAddresses:  o.IPs,
		URIs:         o.URIs,
		NotBefore:    o.NotBefore,
		NotAfter:     o.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  eku,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatalf("create certificate %q: %v", o.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parse certificate %q: %v", o.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("marshal key: %v", err)
	}
	return &KeyPair{Cert: cert, CertPEM: encodePEM("CERTIFICATE", der), KeyPEM: encodePEM("PRIVATE KEY", keyDER)}
}

// ServerCert issues a server certificate for localhost, 127.0.0.1 and ::1
// plus any extra DNS names.
func (ca *CA) ServerCert(t testing.TB, dnsNames ...string) *KeyPair {
	t.Helper()
	return ca.Issue(t, CertOptions{
		CommonName: "execgate-agent",
		DNSNames:   append([]string{"localhost"}, dnsNames...),
		IPs:        []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		Server:     true,
	})
}

// ClientCert issues a client certificate with the given common name (also
// set as a DNS SAN).
func (ca *CA) ClientCert(t testing.TB, commonName string) *KeyPair {
	t.Helper()
	return ca.Issue(t, CertOptions{CommonName: commonName, DNSNames: []string{commonName}, Client: true})
}

// TLSCertificate returns the pair for a tls.Config.
func (kp *KeyPair) TLSCertificate(t testing.TB) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair(kp.CertPEM, kp.KeyPEM)
	if err != nil {
		t.Fatalf("load key pair: %v", err)
	}
	return c
}

// WriteFiles writes dir/name.crt and dir/name.key atomically (write to a
// temporary file, then rename, as a Secret volume update does) and returns
// their paths.
func (kp *KeyPair) WriteFiles(t testing.TB, dir, name string) (certFile, keyFile string) {
	t.Helper()
	certFile = filepath.Join(dir, name+".crt")
	keyFile = filepath.Join(dir, name+".key")
	writeAtomic(t, keyFile, kp.KeyPEM)
	writeAtomic(t, certFile, kp.CertPEM)
	return certFile, keyFile
}

func writeAtomic(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		t.Fatalf("create temp file for %s: %v", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		t.Fatalf("write %s: %v", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatalf("close %s: %v", tmp.Name(), err)
	}
	if err := os.Chmod(tmp.Name(), 0o600); err != nil {
		t.Fatalf("chmod %s: %v", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		t.Fatalf("rename to %s: %v", path, err)
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate key: %v", err)
	}
	return key
}

func newSerial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("serial number: %v", err)
	}
	return n
}

func encodePEM(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
