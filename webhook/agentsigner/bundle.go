package agentsigner

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// BundleKey is the ConfigMap key agents read their CA bundle from.
const BundleKey = "ca.crt"

// BundlePublisher keeps the agent mTLS trust bundle: the agent CA in use
// (CACertFile) plus every earlier CA still in the ConfigMap and not expired.
// When the CA is replaced (cert-manager renewal, a new chart Secret) the old
// one stays trusted next to it, so leaves of both chain until every leaf has
// been reissued: the overlap the rotation needs, without an operator step.
// Removing an old CA from the ConfigMap by hand retires it for good.
//
// The bundle is written to the ConfigMap (agents mount it) and to LocalFile
// (this controller's agent Dialer reads it). Every replica runs one; writes are
// idempotent and a conflict is retried on the next tick.
type BundlePublisher struct {
	Client     client.Client // writes
	Reader     client.Reader // reads (the API reader: no ConfigMap watch)
	Namespace  string
	Name       string
	CACertFile string
	LocalFile  string
	Interval   time.Duration // default 30s
	Log        *zap.Logger
}

// Sync publishes the bundle once.
func (p *BundlePublisher) Sync(ctx context.Context) error {
	current, err := os.ReadFile(p.CACertFile)
	if err != nil {
		return fmt.Errorf("read agent CA: %w", err)
	}
	var cm corev1.ConfigMap
	err = p.Reader.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: p.Name}, &cm)
	exists := err == nil
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("read ConfigMap %s/%s: %w", p.Namespace, p.Name, err)
	}
	bundle, err := mergeBundle(current, []byte(cm.Data[BundleKey]), time.Now())
	if err != nil {
		return err
	}
	if old, _ := os.ReadFile(p.LocalFile); !bytes.Equal(old, bundle) {
		if err := os.MkdirAll(filepath.Dir(p.LocalFile), 0o700); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(p.LocalFile), err)
		}
		if err := writeFile(p.LocalFile, bundle); err != nil {
			return err
		}
	}
	switch {
	case !exists:
		cm = corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name,
			Labels: map[string]string{"app.kubernetes.io/part-of": "execgate"}}, Data: map[string]string{BundleKey: string(bundle)}}
		if err := p.Client.Create(ctx, &cm); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create ConfigMap %s/%s: %w", p.Namespace, p.Name, err)
		}
	case cm.Data[BundleKey] != string(bundle):
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[BundleKey] = string(bundle)
		if err := p.Client.Update(ctx, &cm); err != nil {
			return fmt.Errorf("update ConfigMap %s/%s: %w", p.Namespace, p.Name, err)
		}
		p.logger().Info("agent CA bundle updated", zap.Int("bytes", len(bundle)))
	}
	return nil
}

// Start implements manager.Runnable.
func (p *BundlePublisher) Start(ctx context.Context) error {
	interval := p.Interval
	if interval <= 0 {
		interval = 30 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := p.Sync(ctx); err != nil {
				p.logger().Warn("agent CA bundle not published", zap.Error(err))
			}
		}
	}
}

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (p *BundlePublisher) NeedLeaderElection() bool { return false }

func (p *BundlePublisher) logger() *zap.Logger {
	if p.Log == nil {
		return zap.NewNop()
	}
	return p.Log
}

// mergeBundle returns current's certificates followed by those of published that are
// CAs, not expired at now, and not already listed.
func mergeBundle(current, published []byte, now time.Time) ([]byte, error) {
	var out bytes.Buffer
	seen := map[string]bool{}
	add := func(data []byte, keep func(*x509.Certificate) bool) error {
		for len(data) > 0 {
			var block *pem.Block
			block, data = pem.Decode(data)
			if block == nil {
				return nil
			}
			if block.Type != "CERTIFICATE" {
				continue
			}
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return fmt.Errorf("parse CA certificate: %w", err)
			}
			if seen[string(block.Bytes)] || !keep(cert) {
				continue
			}
			seen[string(block.Bytes)] = true
			_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: block.Bytes})
		}
		return nil
	}
	if err := add(current, func(c *x509.Certificate) bool { return c.IsCA }); err != nil {
		return nil, err
	}
	if out.Len() == 0 {
		return nil, errors.New("the agent CA file holds no CA certificate")
	}
	if err := add(published, func(c *x509.Certificate) bool { return c.IsCA && now.Before(c.NotAfter) }); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
