// Package tlsfiles keeps a TLS key pair and a CA bundle loaded from PEM files
// and re-reads them when their content changes, so that rotated certificates
// (cert-manager, a re-mounted Secret) are used without a restart.
//
// It owns reading, parsing and caching those files. It must not decide whom
// to trust or build connections: callers put the Material into their own
// tls.Config. It starts no goroutine: files are re-checked lazily, at most
// once per Options.MinInterval, by the handshake that asks for the material.
package tlsfiles

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Files names the PEM files to load. All three are required.
type Files struct {
	CertFile string // certificate chain, leaf first
	KeyFile  string // private key of the leaf
	CAFile   string // CA bundle used to verify the peer
}

// Material is one consistent load of Files. It is immutable once returned.
type Material struct {
	Certificate *tls.Certificate
	Leaf        *x509.Certificate
	CAs         *x509.CertPool
}

// Options tunes a Source; the zero value is usable.
type Options struct {
	// MinInterval is the minimum time between two checks of the files.
	// Zero checks on every call to Current (tests).
	MinInterval time.Duration
	// Logger receives one line per reload and per failed reload.
	Logger *zap.Logger
	// OnReload, if set, is called after each reload attempt that found
	// changed files: with the new material, or with the error that kept the
	// previous material in use.
	OnReload func(m *Material, err error)
}

// Source serves the latest good Material. Safe for concurrent use.
type Source struct {
	files Files
	opts  Options
	start time.Time

	cur atomic.Pointer[Material]
	// nextCheck is the earliest next check, as a monotonic offset from start.
	nextCheck atomic.Int64

	// checkMu serialises reloads; callers that find it busy use the current material.
	checkMu sync.Mutex
	digest  [sha256.Size]byte // of the files behind cur, guarded by checkMu
}

// Load reads the files once. It fails if they cannot be read or parsed, so
// that a misconfigured process stops at start instead of at its first handshake.
func Load(files Files, opts Options) (*Source, error) {
	if files.CertFile == "" || files.KeyFile == "" || files.CAFile == "" {
		return nil, errors.New("tls files: certificate, key and CA bundle files are all required")
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	s := &Source{files: files, opts: opts, start: time.Now()}
	if _, err := s.reload(); err != nil {
		return nil, err
	}
	s.nextCheck.Store(int64(opts.MinInterval))
	return s, nil
}

// Current returns the latest good material, re-reading the files first if
// MinInterval has passed since the last check. A failed re-read keeps the
// previous material (a rotation caught half-written is retried next time).
func (s *Source) Current() *Material {
	now := int64(time.Since(s.start))
	if now >= s.nextCheck.Load() && s.checkMu.TryLock() {
		s.nextCheck.Store(now + int64(s.opts.MinInterval))
		_, _ = s.reloadLocked() // logged and reported inside
		s.checkMu.Unlock()
	}
	return s.cur.Load()
}

// Reload re-reads the files now. It reports whether they had changed.
func (s *Source) Reload() (changed bool, err error) {
	return s.reload()
}

func (s *Source) reload() (bool, error) {
	s.checkMu.Lock()
	defer s.checkMu.Unlock()
	return s.reloadLocked()
}

func (s *Source) reloadLocked() (bool, error) {
	certPEM, keyPEM, caPEM, err := s.readFiles()
	if err != nil {
		return false, s.report(nil, err)
	}
	h := sha256.New()
	for _, b := range [][]byte{certPEM, keyPEM, caPEM} {
		h.Write(b)
		h.Write([]byte{0})
	}
	var digest [sha256.Size]byte
	copy(digest[:], h.Sum(nil))
	if s.cur.Load() != nil && bytes.Equal(digest[:], s.digest[:]) {
		return false, nil
	}
	m, err := parse(certPEM, keyPEM, caPEM)
	if err != nil {
		return false, s.report(nil, fmt.Errorf("parse %s, %s, %s: %w", s.files.CertFile, s.files.KeyFile, s.files.CAFile, err))
	}
	s.digest = digest
	s.cur.Store(m)
	return true, s.report(m, nil)
}

func (s *Source) readFiles() (certPEM, keyPEM, caPEM []byte, err error) {
	if certPEM, err = os.ReadFile(s.files.CertFile); err != nil {
		return nil, nil, nil, fmt.Errorf("read certificate: %w", err)
	}
	if keyPEM, err = os.ReadFile(s.files.KeyFile); err != nil {
		return nil, nil, nil, fmt.Errorf("read private key: %w", err)
	}
	if caPEM, err = os.ReadFile(s.files.CAFile); err != nil {
		return nil, nil, nil, fmt.Errorf("read CA bundle: %w", err)
	}
	return certPEM, keyPEM, caPEM, nil
}

func (s *Source) report(m *Material, err error) error {
	if err != nil {
		s.opts.Logger.Warn("TLS files not (re)loaded; keeping the previous certificates",
			zap.String("cert_file", s.files.CertFile), zap.Error(err))
	} else {
		s.opts.Logger.Info("TLS files loaded",
			zap.String("cert_file", s.files.CertFile),
			zap.String("subject", m.Leaf.Subject.String()),
			zap.String("serial", m.Leaf.SerialNumber.String()),
			zap.Time("not_after", m.Leaf.NotAfter))
	}
	if s.opts.OnReload != nil {
		s.opts.OnReload(m, err)
	}
	return err
}

func parse(certPEM, keyPEM, caPEM []byte) (*Material, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("key pair: %w", err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parse leaf certificate: %w", err)
		}
		pair.Leaf = leaf
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("CA bundle holds no PEM certificate")
	}
	return &Material{Certificate: &pair, Leaf: leaf, CAs: pool}, nil
}
