package cgroups

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    string
		wantErr string
	}{
		{
			name: "pure v2",
			text: `22 28 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
25 28 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`,
			want: "/sys/fs/cgroup",
		},
		{
			name: "hybrid",
			text: `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`,
			want: "/sys/fs/cgroup/unified",
		},
		{
			name: "no optional fields, several optional fields",
			text: `41 31 0:38 / /run/cg2 rw shared:1 master:2 propagate_from:3 - cgroup2 none rw
`,
			want: "/run/cg2",
		},
		{
			name: "escaped space, tab and backslash",
			text: `41 31 0:38 / /mnt/my\040cgroup\011x\134y rw - cgroup2 cgroup2 rw
`,
			want: "/mnt/my cgroup\tx\\y",
		},
		{
			name: "conventional location wins over others",
			text: `41 31 0:38 / /mnt/other rw - cgroup2 cgroup2 rw
42 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
43 31 0:38 / /mnt/later rw - cgroup2 cgroup2 rw
`,
			want: "/sys/fs/cgroup",
		},
		{
			name: "later mount on another point wins",
			text: `41 31 0:38 / /mnt/a rw - cgroup2 cgroup2 rw
43 31 0:38 / /mnt/b rw - cgroup2 cgroup2 rw
`,
			want: "/mnt/b",
		},
		{
			name: "subtree mounts are skipped",
			text: `41 31 0:38 /kubepods.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw
42 31 0:38 / /host/sys/fs/cgroup rw - cgroup2 cgroup2 rw
`,
			want: "/host/sys/fs/cgroup",
		},
		{
			name: "fstype named like cgroup2 in the source field is not a cgroup2 mount",
			text: `41 31 0:38 / /sys/fs/cgroup rw - tmpfs cgroup2 rw
`,
			wantErr: "no cgroup2 mount",
		},
		{
			name:    "v1 only",
			text:    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n",
			wantErr: "no cgroup2 mount",
		},
		{name: "empty", text: "", wantErr: "no cgroup2 mount"},
		{
			name:    "only a private cgroup namespace view",
			text:    "41 31 0:38 /../.. /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			wantErr: "cgroup namespace",
		},
		{
			name:    "malformed line",
			text:    "41 31 0:38 / /sys/fs/cgroup rw cgroup2\n",
			wantErr: "malformed",
		},
		{
			name:    "truncated escape",
			text:    `41 31 0:38 / /mnt/x\04 rw - cgroup2 cgroup2 rw` + "\n",
			wantErr: "escape",
		},
		{
			name:    "relative mount point",
			text:    "41 31 0:38 / mnt rw - cgroup2 cgroup2 rw\n",
			wantErr: "not absolute",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMountinfo(strings.NewReader(tt.text))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseMountinfo() = %q, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseMountinfo() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestDiscoverRootNoCgroup2(t *testing.T) {
	f := t.TempDir() + "/mountinfo"
	if err := os.WriteFile(f, []byte("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := mountinfoPath
	mountinfoPath = f
	defer func() { mountinfoPath = old }()
	if _, err := DiscoverRoot(); !errors.Is(err, ErrNoCgroup2) {
		t.Fatalf("DiscoverRoot() error = %v, want ErrNoCgroup2", err)
	}
}

func TestResolveRoot(t *testing.T) {
	mount := requireRoot(t)
	if got, err := ResolveRoot(""); err != nil || got != mount {
		t.Fatalf("ResolveRoot(\"\") = %q, %v; want %q", got, err, mount)
	}
	if got, err := ResolveRoot(mount + "/"); err != nil || got != mount {
		t.Fatalf("ResolveRoot(override) = %q, %v; want %q", got, err, mount)
	}
	for _, bad := range []string{t.TempDir(), "relative/path", "/does/not/exist"} {
		if _, err := ResolveRoot(bad); err == nil {
			t.Errorf("ResolveRoot(%q) succeeded, want error", bad)
		}
	}
}
