package cgroups

import (
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The parsers of what the agent reads from /proc and cgroupfs. The kernel writes these
// files, but a bug, a container runtime or a hostile bind mount may not: the properties
// are that nothing panics, and that what is accepted is exactly what the parser promises.

// FuzzParseProcCgroup: an accepted v2 path is absolute, clean, NUL-free, within the
// cgroup namespace and bounded, and reads back the same from a one-line file.
func FuzzParseProcCgroup(f *testing.F) {
	for _, s := range []string{
		"0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-1.scope\n", "9:name=systemd:/\n4:memory:/x\n0::/init.scope\n",
		"0::/\n", "0::/gone (deleted)\n", "0::/../../x\n", "0::x\n", "0::/a//b\n", "4:memory:/x\n", "", "0::/a\x00b\n",
		"0::/" + strings.Repeat("d/", 2100) + "\n", "0::\n0::/second\n", "0::/a (deleted) (deleted)\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		p, err := parseProcCgroup(strings.NewReader(text))
		if err != nil {
			if p != "" || err.Error() == "" {
				t.Fatalf("error %v came with path %q", err, p)
			}
			return
		}
		switch {
		case !strings.HasPrefix(p, "/") || filepath.Clean(p) != p:
			t.Fatalf("accepted %q: not a clean absolute path", p)
		case p == "/.." || strings.HasPrefix(p, "/../"):
			t.Fatalf("accepted %q: outside the cgroup namespace", p)
		case len(p) > maxPathLen || strings.ContainsRune(p, 0):
			t.Fatalf("accepted %q: too long or NUL", p)
		case !strings.Contains(text, "0::"+p):
			t.Fatalf("accepted %q, which the text does not contain", p)
		}
		if again, err := parseProcCgroup(strings.NewReader("0::" + p + "\n")); err != nil || again != p {
			t.Fatalf("%q reads back as %q, %v", p, again, err)
		}
	})
}

// FuzzParsePIDs: accepted pids are in the kernel's range and render back to themselves.
func FuzzParsePIDs(f *testing.F) {
	for _, s := range []string{"1\n42\n", "", "x\n", "-1\n", "0\n", "1 2\n", "99999999\n", "4194304\n", "4194305", "+5\n", "007\n", "1\n\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		pids, err := parsePIDs(data)
		if err != nil {
			if pids != nil {
				t.Fatalf("pids %v came with error %v", pids, err)
			}
			return
		}
		var b strings.Builder
		for _, p := range pids {
			if p <= 0 || p > pidMax {
				t.Fatalf("accepted pid %d", p)
			}
			b.WriteString(strconv.Itoa(p) + "\n")
		}
		if again, err := parsePIDs([]byte(b.String())); err != nil || !slices.Equal(again, pids) {
			t.Fatalf("%v renders and reads back as %v, %v", pids, again, err)
		}
	})
}

// escapeMountinfo is the kernel's escaping of a mountinfo path field (show_path).
func escapeMountinfo(s string) string {
	return strings.NewReplacer(`\`, `\134`, " ", `\040`, "\t", `\011`, "\n", `\012`).Replace(s)
}

// FuzzParseMountinfo: the chosen mount point is an absolute clean path that a cgroup2
// line of the text names (after unescaping), and escaping round-trips through the parser.
func FuzzParseMountinfo(f *testing.F) {
	for _, s := range []string{
		"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
		"30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
		"30 23 0:26 /.. /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
		"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n",
		"1 2 3 / /a\\040b rw - cgroup2 none rw\n", "1 2 3 / rel rw - cgroup2 none rw\n", "1 2 3 / /x\\9 rw - cgroup2 c rw\n",
		"garbage\n", "", "1 2 3 / /a rw -\n",
	} {
		f.Add(s, "/weird dir\\with\tescapes")
	}
	f.Fuzz(func(t *testing.T, text, mountPoint string) {
		if got, err := unescapeMountinfo(escapeMountinfo(mountPoint)); err != nil || got != mountPoint {
			t.Fatalf("escape/unescape of %q gives %q, %v", mountPoint, got, err)
		}
		mp, err := parseMountinfo(strings.NewReader(text))
		if err != nil {
			if mp != "" {
				t.Fatalf("mount point %q came with error %v", mp, err)
			}
		} else {
			if !filepath.IsAbs(mp) || filepath.Clean(mp) != mp {
				t.Fatalf("chose %q: not absolute and clean", mp)
			}
			found := false
			for _, line := range strings.Split(text, "\n") {
				m, ok, err := parseMountinfoLine(line)
				found = found || (err == nil && ok && m.FSType == "cgroup2" && m.MountPoint == mp && m.Root == "/")
			}
			if !found {
				t.Fatalf("chose %q, which no cgroup2 line with root / names", mp)
			}
		}
		// A well-formed line for an absolute mount point is always found again,
		// whatever other spaces it holds ("\r", "\v", U+0085, U+00A0 are not escaped).
		if !filepath.IsAbs(mountPoint) || strings.ContainsRune(mountPoint, 0) {
			return
		}
		line := "30 23 0:26 / " + escapeMountinfo(mountPoint) + " rw shared:4 - cgroup2 cgroup2 rw\n"
		if got, err := parseMountinfo(strings.NewReader(line)); err != nil || got != filepath.Clean(mountPoint) {
			t.Fatalf("line %q: got %q, %v; want %q", line, got, err, filepath.Clean(mountPoint))
		}
	})
}
