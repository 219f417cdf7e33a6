package cgroups

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseProcCgroup(t *testing.T) {
	tests := []struct {
		name, text, want, wantErr string
	}{
		{name: "pure v2", text: "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-1.scope\n", want: "/kubepods.slice/kubepods-pod1.slice/cri-containerd-1.scope"},
		{name: "hybrid", text: "9:name=systemd:/\n4:memory:/x\n0::/init.scope\n", want: "/init.scope"},
		{name: "root", text: "0::/\n", want: "/"},
		{name: "removed", text: "0::/gone (deleted)\n", wantErr: "removed"},
		{name: "other namespace", text: "0::/../../x\n", wantErr: "namespace"},
		{name: "relative", text: "0::x\n", wantErr: "clean absolute"},
		{name: "unclean", text: "0::/a//b\n", wantErr: "clean absolute"},
		{name: "v1 only", text: "4:memory:/x\n", wantErr: "no cgroup v2"},
		{name: "empty", text: "", wantErr: "no cgroup v2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseProcCgroup(strings.NewReader(tt.text))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %q, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if _, err := parseProcCgroup(strings.NewReader("0::/x (deleted)\n")); !errors.Is(err, ErrCgroupRemoved) {
		t.Errorf("deleted cgroup: error %v is not ErrCgroupRemoved", err)
	}
}

func TestParsePIDs(t *testing.T) {
	if got, err := parsePIDs([]byte("1\n42\n")); err != nil || !slices.Equal(got, []int{1, 42}) {
		t.Fatalf("parsePIDs = %v, %v", got, err)
	}
	if got, err := parsePIDs(nil); err != nil || len(got) != 0 {
		t.Fatalf("parsePIDs(empty) = %v, %v", got, err)
	}
	for _, bad := range []string{"x\n", "-1\n", "0\n", "1 2\n", "99999999\n"} {
		if _, err := parsePIDs([]byte(bad)); err == nil {
			t.Errorf("parsePIDs(%q) succeeded", bad)
		}
	}
}

func TestProcCgroupPathRejectsBadPIDs(t *testing.T) {
	for _, pid := range []int{0, -1, pidMax + 1} {
		if _, err := ProcCgroupPath(pid); err == nil {
			t.Errorf("ProcCgroupPath(%d) succeeded", pid)
		}
	}
	if _, err := PIDs("relative"); err == nil {
		t.Error("PIDs(relative) succeeded")
	}
}

func TestPIDsAndProcCgroupRoot(t *testing.T) {
	mount, dir := testTree(t)
	cg := filepath.Join(dir, "procs")
	mkdirAll(t, cg)
	cmd := startIn(t, cg)
	pids, err := PIDs(cg)
	if err != nil || !slices.Equal(pids, []int{cmd.Process.Pid}) {
		t.Fatalf("PIDs = %v, %v; want [%d]", pids, err, cmd.Process.Pid)
	}
	got, err := ProcCgroupDir(mount, cmd.Process.Pid)
	if err != nil || got != cg {
		t.Fatalf("ProcCgroupDir = %q, %v; want %q", got, err, cg)
	}
}
