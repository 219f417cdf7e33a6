package tlsfiles

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/execgate/execgate/internal/testpki"
)

func writeSet(t *testing.T, dir string, ca *testpki.CA, kp *testpki.KeyPair) Files {
	t.Helper()
	cert, key := kp.WriteFiles(t, dir, "tls")
	return Files{CertFile: cert, KeyFile: key, CAFile: ca.WriteFile(t, filepath.Join(dir, "ca.crt"))}
}

func TestReloadRespectsIntervalAndKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "ca")
	first := ca.ServerCert(t)
	files := writeSet(t, dir, ca, first)
	var reloads, failures int
	src, err := Load(files, Options{MinInterval: time.Hour, OnReload: func(_ *Material, err error) {
		if err != nil {
			failures++
		} else {
			reloads++
		}
	}})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	second := ca.ServerCert(t)
	second.WriteFiles(t, dir, "tls")
	if got := src.Current().Leaf.SerialNumber; got.Cmp(first.Cert.SerialNumber) != 0 {
		t.Errorf("re-read before MinInterval passed")
	}
	if changed, err := src.Reload(); !changed || err != nil {
		t.Fatalf("Reload = %v, %v", changed, err)
	}
	if got := src.Current().Leaf.SerialNumber; got.Cmp(second.Cert.SerialNumber) != 0 {
		t.Errorf("serving %s after Reload, want %s", got, second.Cert.SerialNumber)
	}
	if changed, err := src.Reload(); changed || err != nil {
		t.Errorf("Reload of unchanged files = %v, %v", changed, err)
	}
	if err := os.WriteFile(files.KeyFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Reload(); err == nil {
		t.Errorf("Reload accepted a garbage key")
	}
	if got := src.Current().Leaf.SerialNumber; got.Cmp(second.Cert.SerialNumber) != 0 {
		t.Errorf("a failed reload replaced the material")
	}
	if reloads != 2 || failures != 1 {
		t.Errorf("OnReload: %d reloads, %d failures; want 2 and 1", reloads, failures)
	}
}

func TestLoadFails(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "ca")
	good := writeSet(t, dir, ca, ca.ServerCert(t))
	tests := map[string]Files{
		"missing names": {CertFile: good.CertFile},
		"missing file":  {CertFile: filepath.Join(dir, "absent"), KeyFile: good.KeyFile, CAFile: good.CAFile},
		"CA not PEM":    {CertFile: good.CertFile, KeyFile: good.KeyFile, CAFile: good.KeyFile},
	}
	for name, files := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := Load(files, Options{}); err == nil {
				t.Fatal("Load succeeded")
			}
		})
	}
}
