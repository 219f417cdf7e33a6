package cgroups

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestIDAgreesWithProcAndHandleRoot checks the three ways to name a cgroup agree: the
// inode of the directory (ID), the directory /proc/<pid>/cgroup points at, and the
// kernfs id inside the directory's file handle.
func TestIDAgreesWithProcAndHandleRoot(t *testing.T) {
	mount, dir := testTree(t)
	cg := filepath.Join(dir, "kubepods.slice", "kubepods-pod"+"x.slice")
	mkdirAll(t, cg)
	cmd := startIn(t, cg)

	id, err := ID(cg)
	if err != nil {
		t.Fatal(err)
	}
	procDir, err := ProcCgroupDir(mount, cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if procDir != cg {
		t.Fatalf("/proc/%d/cgroup names %q, want %q", cmd.Process.Pid, procDir, cg)
	}
	viaProc := mustID(t, procDir)
	viaHandle, err := handleID(cg)
	if err != nil {
		t.Fatal(err)
	}
	if id != viaProc || id != viaHandle {
		t.Fatalf("cgroup ids disagree: stat %d, via /proc %d, file handle %d", id, viaProc, viaHandle)
	}
	if parent := mustID(t, filepath.Dir(cg)); parent == id {
		t.Fatalf("parent and child share id %d", id)
	}

	if ok, err := Exists(cg); !ok || err != nil {
		t.Fatalf("Exists(%s) = %v, %v", cg, ok, err)
	}
	if ok, err := ExistsID(mount, id); !ok || err != nil {
		t.Fatalf("ExistsID(%d) = %v, %v", id, ok, err)
	}

	// Removed: neither the path nor the id resolves, even if the kernel still holds
	// the cgroup as dying for a moment after the last process left.
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	rmdir(t, cg)
	if ok, err := Exists(cg); ok || err != nil {
		t.Fatalf("Exists(removed) = %v, %v", ok, err)
	}
	if ok, err := ExistsID(mount, id); ok || err != nil {
		t.Fatalf("ExistsID(removed %d) = %v, %v", id, ok, err)
	}
	// A fresh directory under the same name is a different cgroup.
	mkdirAll(t, cg)
	if again := mustID(t, cg); again == id {
		t.Fatalf("recreated cgroup reuses id %d", id)
	}
}

func TestIDRejectsNonCgroupRoot(t *testing.T) {
	mount, _ := testTree(t)
	if _, err := ID(t.TempDir()); err == nil {
		t.Error("ID(tmpdir) succeeded, want not-cgroup2 error")
	}
	if _, err := ID(filepath.Join(mount, "cgroup.procs")); err == nil {
		t.Error("ID(file) succeeded")
	}
	if _, err := ID(filepath.Join(mount, "does-not-exist")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ID(missing) error %v is not ErrNotExist", err)
	}
	if _, err := ExistsID(mount, 0); err == nil {
		t.Error("ExistsID(0) succeeded")
	}
}
