package agentsigner

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	"github.com/execgate/execgate/internal/testpki"
)

func subjects(t *testing.T, bundle []byte) []string {
	t.Helper()
	var out []string
	for len(bundle) > 0 {
		var b *pem.Block
		b, bundle = pem.Decode(bundle)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c.Subject.CommonName)
	}
	return out
}

// TestRotationBundleKeepsPreviousCA: when the agent CA is replaced, the published bundle
// holds the new CA first and keeps the previous one until it expires, so leaves of both
// chain while they are reissued; a CA removed by hand, an expired CA and a leaf are not
// brought back.
func TestRotationBundleKeepsPreviousCA(t *testing.T) {
	ca1, ca2 := testpki.NewCA(t, "ca-1"), testpki.NewCA(t, "ca-2")
	leaf := ca1.ServerCert(t, "node-a")
	published := bytes.Join([][]byte{ca1.CertPEM, leaf.CertPEM}, nil)
	tests := []struct {
		name      string
		current   []byte
		published []byte
		now       time.Time
		want      []string
	}{
		{"first publication", ca1.CertPEM, nil, time.Now(), []string{"ca-1"}},
		{"unchanged", ca1.CertPEM, ca1.CertPEM, time.Now(), []string{"ca-1"}},
		{"CA replaced: old kept next to new, leaves dropped", ca2.CertPEM, published, time.Now(), []string{"ca-2", "ca-1"}},
		{"old CA expired", ca2.CertPEM, published, ca1.Cert.NotAfter.Add(time.Second), []string{"ca-2"}},
		{"old CA removed by hand stays removed", ca2.CertPEM, ca2.CertPEM, time.Now(), []string{"ca-2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := mergeBundle(tc.current, tc.published, tc.now)
			if err != nil {
				t.Fatal(err)
			}
			if s := subjects(t, got); len(s) != len(tc.want) || (len(s) > 0 && s[0] != tc.want[0]) || (len(s) > 1 && s[1] != tc.want[1]) {
				t.Fatalf("bundle = %v, want %v", s, tc.want)
			}
		})
	}
	if _, err := mergeBundle(leaf.CertPEM, nil, time.Now()); err == nil {
		t.Fatal("a CA file holding only a leaf was accepted as the agent CA")
	}
}
