package cgroups

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/execgate/execgate/internal/testenv"
)

// requireRoot returns the cgroup2 mount, skipping the test when it cannot run here
// (not root, no cgroup2) unless EXECGATE_REQUIRE_BPF=1 demands that it run.
func requireRoot(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root to create cgroups")
	}
	mount, err := DiscoverRoot()
	if err != nil {
		skipOrFail(t, "needs a cgroup2 mount: %v", err)
	}
	return mount
}

func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	testenv.Need(t, "EXECGATE_REQUIRE_BPF", fmt.Sprintf(format, args...))
}

// testTree creates an empty cgroup subtree for this test under the cgroup2 mount and
// removes it, deepest directories first, when the test ends. Processes started with
// startIn are killed before that (cleanups run last-registered first).
func testTree(t *testing.T) (mount, dir string) {
	t.Helper()
	mount = requireRoot(t)
	dir, err := os.MkdirTemp(mount, "execgate-test-")
	if err != nil {
		t.Fatalf("create test cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := removeTree(dir); err != nil {
			t.Errorf("remove test cgroup tree: %v", err)
		}
	})
	return mount, dir
}

// removeTree rmdirs a cgroup tree; cgroup directories cannot be removed recursively
// (their interface files are not unlinkable), so children go first.
func removeTree(dir string) error {
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Slice(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
	for _, d := range dirs {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// startIn starts a sleeping child process and moves it into the cgroup dir; it is
// killed, by pid, when the test ends.
func startIn(t *testing.T, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
		t.Fatalf("move pid %d into %s: %v", cmd.Process.Pid, dir, err)
	}
	return cmd
}

func mustLayout(t testing.TB, root string, d Driver, cgroupRoot string) Layout {
	t.Helper()
	l, err := NewLayout(root, d, cgroupRoot)
	if err != nil {
		t.Fatalf("NewLayout(%q, %q, %q): %v", root, d, cgroupRoot, err)
	}
	return l
}

func mustID(t testing.TB, path string) uint64 {
	t.Helper()
	id, err := ID(path)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func mkdirAll(t testing.TB, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func rmdir(t testing.TB, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if err := syscall.Rmdir(p); err != nil {
			t.Fatalf("rmdir %s: %v", p, err)
		}
	}
}

// Fixed ids keep table output readable.
const (
	uidA = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
	uidB = "11111111-2222-3333-4444-555555555555"
	uidC = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
	uidX = "99999999-9999-9999-9999-999999999999" // never of interest
	cidA = "1111111111111111111111111111111111111111111111111111111111111111"
	cidB = "2222222222222222222222222222222222222222222222222222222222222222"
	cidC = "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdef0123"
)
