package cgroups

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// mountinfoPath is a variable so tests can point discovery at sample files.
var mountinfoPath = "/proc/self/mountinfo"

// ErrNoCgroup2 is returned when no usable cgroup2 mount is found.
var ErrNoCgroup2 = errors.New("no cgroup2 mount found")

// DiscoverRoot returns the mount point of the cgroup v2 hierarchy, read from
// /proc/self/mountinfo. Callers that take a configured root should use ResolveRoot.
func DiscoverRoot() (string, error) {
	f, err := os.Open(mountinfoPath)
	if err != nil {
		return "", fmt.Errorf("discover cgroup2 root: %w", err)
	}
	defer f.Close()
	root, err := parseMountinfo(f)
	if err != nil {
		return "", fmt.Errorf("discover cgroup2 root from %s: %w", mountinfoPath, err)
	}
	return root, nil
}

// ResolveRoot returns override when it is set (after checking that it is a cgroup2
// directory), else the discovered mount point. override comes from a flag or config.
func ResolveRoot(override string) (string, error) {
	if override == "" {
		return DiscoverRoot()
	}
	if err := CheckRoot(override); err != nil {
		return "", err
	}
	return filepath.Clean(override), nil
}

// CheckRoot reports whether path is an absolute directory on a cgroup2 filesystem.
func CheckRoot(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("cgroup2 root %q: must be an absolute path", path)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return fmt.Errorf("cgroup2 root %q: statfs: %w", path, err)
	}
	if sfs.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("cgroup2 root %q: filesystem magic %#x is not cgroup2 (%#x); point the cgroup root at the cgroup2 mount",
			path, sfs.Type, unix.CGROUP2_SUPER_MAGIC)
	}
	return nil
}

// Mount is one line of mountinfo(5): what is mounted where.
type Mount struct {
	Root       string // the subtree of the filesystem this mount shows
	MountPoint string
	FSType     string
}

// ReadMounts parses a mountinfo(5) file, e.g. /proc/self/mountinfo.
func ReadMounts(path string) ([]Mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	mounts, err := ParseMounts(f)
	if err != nil {
		return nil, fmt.Errorf("read mounts from %s: %w", path, err)
	}
	return mounts, nil
}

// ParseMounts parses a mountinfo(5) text; a malformed line is an error.
func ParseMounts(r io.Reader) ([]Mount, error) {
	var mounts []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	line := 0
	for sc.Scan() {
		line++
		m, ok, err := parseMountinfoLine(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if ok {
			mounts = append(mounts, m)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return mounts, nil
}

// parseMountinfo picks the cgroup2 mount from a mountinfo(5) text. Only mounts whose
// root is "/" qualify: a mount of a subtree (a bind mount, or the host mount seen from
// inside a cgroup namespace, which shows up as "/.." paths) would not show kubepods
// and would give paths that do not match /proc/<pid>/cgroup.
func parseMountinfo(r io.Reader) (string, error) {
	all, err := ParseMounts(r)
	if err != nil {
		return "", err
	}
	var mounts []Mount
	for _, m := range all {
		if m.FSType == "cgroup2" {
			mounts = append(mounts, m)
		}
	}
	if len(mounts) == 0 {
		return "", fmt.Errorf("%w (is this a cgroup v1-only host? execgate needs cgroup v2, pure or hybrid)", ErrNoCgroup2)
	}
	var best string
	for _, m := range mounts {
		if m.Root != "/" {
			continue
		}
		// The conventional locations win; otherwise the last mount, since a later mount
		// on the same point hides the earlier one.
		switch {
		case m.MountPoint == "/sys/fs/cgroup":
			return m.MountPoint, nil
		case best == "/sys/fs/cgroup/unified":
		default:
			best = m.MountPoint
		}
	}
	if best == "" {
		return "", fmt.Errorf("%w: the cgroup2 mount at %q shows only the subtree %q (agent in a private cgroup namespace?); run with the host cgroup namespace or configure the cgroup root explicitly",
			ErrNoCgroup2, mounts[0].MountPoint, mounts[0].Root)
	}
	return best, nil
}

// parseMountinfoLine parses one line of mountinfo(5):
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// The number of optional fields before "-" varies, so the separator is searched for.
// The kernel separates fields with one " " and escapes only space, tab, newline and
// backslash, so a field may hold other spaces ("\r", U+00A0): split on " " alone.
func parseMountinfoLine(s string) (Mount, bool, error) {
	if strings.TrimSpace(s) == "" {
		return Mount{}, false, nil
	}
	fields := strings.Split(s, " ")
	sep := -1
	for i := 6; i < len(fields); i++ {
		if fields[i] == "-" {
			sep = i
			break
		}
	}
	if len(fields) < 7 || sep < 0 || sep+1 >= len(fields) {
		return Mount{}, false, fmt.Errorf("malformed mountinfo line %q", s)
	}
	root, err := unescapeMountinfo(fields[3])
	if err != nil {
		return Mount{}, false, err
	}
	mp, err := unescapeMountinfo(fields[4])
	if err != nil {
		return Mount{}, false, err
	}
	if !filepath.IsAbs(mp) {
		return Mount{}, false, fmt.Errorf("%s mount point %q is not absolute", fields[sep+1], mp)
	}
	return Mount{Root: root, MountPoint: filepath.Clean(mp), FSType: fields[sep+1]}, true, nil
}

// unescapeMountinfo undoes the kernel's octal escaping of space, tab, newline and
// backslash (\040, \011, \012, \134) in mountinfo path fields.
func unescapeMountinfo(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b bytes.Buffer
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+3 >= len(s) {
			return "", fmt.Errorf("truncated escape in mountinfo field %q", s)
		}
		v := 0
		for _, c := range []byte(s[i+1 : i+4]) {
			if c < '0' || c > '7' {
				return "", fmt.Errorf("bad escape in mountinfo field %q", s)
			}
			v = v*8 + int(c-'0')
		}
		if v > 0xff {
			return "", fmt.Errorf("bad escape in mountinfo field %q", s)
		}
		b.WriteByte(byte(v))
		i += 3
	}
	return b.String(), nil
}
