// Package testenv gives tests one way to say what they need (root and BPF,
// or a control plane) and real cgroups to run processes in.
//
// A test that cannot run here skips, unless EXECGATE_REQUIRE_BPF=1 or
// EXECGATE_REQUIRE_E2E=1 says this machine must run it: then it fails. CI
// sets both, so a skipped test in CI is impossible.
package testenv

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// RequireBPF stops the test unless it runs as root on a kernel with BTF.
func RequireBPF(t testing.TB) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		missing = append(missing, "kernel BTF (/sys/kernel/btf/vmlinux)")
	}
	if _, err := CgroupRoot(); err != nil {
		missing = append(missing, "a cgroup v2 mount")
	}
	need(t, "EXECGATE_REQUIRE_BPF", missing)
}

func need(t testing.TB, env string, missing []string) {
	t.Helper()
	if len(missing) == 0 {
		return
	}
	msg := "needs " + strings.Join(missing, ", ")
	if os.Getenv(env) == "1" {
		t.Fatalf("%s, and %s=1 requires this test to run", msg, env)
	}
	t.Skip(msg)
}

// Need fails or skips, by env, when missing is not empty.
func Need(t testing.TB, env string, missing ...string) { t.Helper(); need(t, env, missing) }

// CgroupRoot is the cgroup v2 mount point, read from /proc/self/mountinfo.
func CgroupRoot() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" {
				return fields[4], nil
			}
		}
	}
	return "", errors.New("no cgroup2 mount in /proc/self/mountinfo")
}

// Cgroup is a real cgroup v2 directory made for one test.
type Cgroup struct {
	Path string
	ID   uint64
}

// NewCgroup creates a cgroup below the v2 root (parent "" = a fresh
// per-test directory) and removes it, killing its processes, at cleanup.
func NewCgroup(t testing.TB, parent, name string) *Cgroup {
	t.Helper()
	if parent == "" {
		root, err := CgroupRoot()
		if err != nil {
			t.Fatal(err)
		}
		parent = root
	}
	p := filepath.Join(parent, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() { RemoveCgroup(p) })
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return &Cgroup{Path: p, ID: st.Ino}
}

// RemoveCgroup kills what runs in p and below, then removes the tree.
func RemoveCgroup(p string) {
	entries, _ := os.ReadDir(p)
	for _, e := range entries {
		if e.IsDir() {
			RemoveCgroup(filepath.Join(p, e.Name()))
		}
	}
	_ = os.WriteFile(filepath.Join(p, "cgroup.kill"), []byte("1"), 0)
	for i := 0; i < 100; i++ {
		if err := os.Remove(p); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Command returns cmd set up to start directly inside cgroup cg
// (clone3 CLONE_INTO_CGROUP): its very first execve is already checked.
func (cg *Cgroup) Command(name string, args ...string) (*exec.Cmd, func(), error) {
	fd, err := unix.Open(cg.Path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open cgroup: %w", err)
	}
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	return cmd, func() { unix.Close(fd) }, nil
}

// Run runs a command inside the cgroup and returns its combined output.
func (cg *Cgroup) Run(name string, args ...string) (string, error) {
	cmd, done, err := cg.Command(name, args...)
	if err != nil {
		return "", err
	}
	defer done()
	out, err := cmd.CombinedOutput()
	return string(out), err
}
