package agent

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

func TestResolveInHostRoot(t *testing.T) {
	root := t.TempDir()
	mk := func(p string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, p string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(root, p)); err != nil {
			t.Fatal(err)
		}
	}
	mk("/opt/runc/runc.amd64")
	link("/opt/runc/runc.amd64", "/usr/bin/runc")    // absolute: the host's /opt, not the agent's
	link("../bin/runc", "/usr/sbin/runc")            // relative, through another link
	link("/usr/sbin/../bin/runc", "/usr/local/runc") // dot-dot inside the target
	link("loop", "/usr/bin/loop")
	for p, want := range map[string]string{
		"/usr/bin/runc":   "/opt/runc/runc.amd64",
		"/usr/sbin/runc":  "/opt/runc/runc.amd64",
		"/usr/local/runc": "/opt/runc/runc.amd64",
	} {
		got, err := resolveIn(root, p)
		if err != nil || got != want {
			t.Errorf("resolveIn(%s) = %q, %v; want %q", p, got, err, want)
		}
	}
	if _, err := resolveIn(root, "/usr/bin/loop"); err == nil {
		t.Error("a symlink loop resolved")
	}
	if _, err := resolveIn(root, "/usr/bin/crun"); !os.IsNotExist(err) {
		t.Errorf("a missing runtime: %v, want not-exist", err)
	}
}

// TestRuntimeFilesSync: the kernel gets the runtimes found in the host root,
// a runtime replaced in place (a new inode) is added at once and its old
// inode dropped a round later, and a name found nowhere is no error.
func TestRuntimeFilesSync(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverCgroupfs)
	e := n.newEnforcer(t)
	root := t.TempDir()
	bin := filepath.Join(root, "usr/sbin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func() enforcer.FileID {
		t.Helper()
		tmp := filepath.Join(bin, ".runc.new")
		if err := os.WriteFile(tmp, []byte("\x7fELF runtime"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(bin, "runc")); err != nil { // as a package upgrade does
			t.Fatal(err)
		}
		id, err := enforcer.KernelFileID(filepath.Join(bin, "runc"))
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	kernel := func() []enforcer.FileID {
		t.Helper()
		ids, err := e.RuntimeFiles()
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(ids, func(a, b enforcer.FileID) int { return int(int64(a.Ino) - int64(b.Ino)) })
		return ids
	}
	r := &RuntimeFiles{Enforcer: e, Root: root, Names: []string{"runc", "crun", "/opt/none"}, Log: zaptest.NewLogger(t)}
	old := write()
	if err := r.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := kernel(); !slices.Equal(got, []enforcer.FileID{old}) {
		t.Fatalf("kernel lists %v, want %v", got, old)
	}
	upgraded := write()
	if upgraded == old {
		t.Fatal("the replaced file kept its inode")
	}
	if err := r.Sync(); err != nil {
		t.Fatal(err)
	}
	want := []enforcer.FileID{old, upgraded}
	slices.SortFunc(want, func(a, b enforcer.FileID) int { return int(int64(a.Ino) - int64(b.Ino)) })
	if got := kernel(); !slices.Equal(got, want) {
		t.Fatalf("after the upgrade the kernel lists %v, want both %v", got, want)
	}
	if err := r.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := kernel(); !slices.Equal(got, []enforcer.FileID{upgraded}) {
		t.Fatalf("a round later the kernel lists %v, want only %v", got, upgraded)
	}
}
