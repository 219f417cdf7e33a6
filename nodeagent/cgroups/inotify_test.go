package cgroups

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestKernelInotifyOnCgroup2Root pins down the kernel behaviour the watcher is built
// on. On cgroup2 (kernfs), mkdir and rmdir of a cgroup raise IN_CREATE and IN_DELETE
// (with IN_ISDIR) on the parent, and the interface files the kernel creates inside a
// new cgroup raise nothing. But a watched cgroup that is removed reports nothing to
// its own watch: no IN_DELETE_SELF and no IN_IGNORED (kernfs keeps the directory
// inode's link count, so fsnotify never sees it die). The watch stays registered until
// inotify_rm_watch, so a watcher that waited for IN_IGNORED would leak watches.
func TestKernelInotifyOnCgroup2Root(t *testing.T) {
	_, dir := testTree(t)
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	parentWD, err := unix.InotifyAddWatch(fd, dir, watchMask)
	if err != nil {
		t.Fatal(err)
	}
	child := filepath.Join(dir, "child")
	mkdirAll(t, child)
	childWD, err := unix.InotifyAddWatch(fd, child, watchMask)
	if err != nil {
		t.Fatal(err)
	}
	// A file write inside a cgroup must not look like a create.
	if err := os.WriteFile(filepath.Join(child, "cgroup.freeze"), []byte("0"), 0); err != nil {
		t.Fatal(err)
	}
	rmdir(t, child)
	names := map[int]string{parentWD: "parent", childWD: "child"}

	got := readInotify(t, fd, names)
	want := []string{
		"parent IN_CREATE|IN_ISDIR child",
		"parent IN_DELETE|IN_ISDIR child",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("inotify events on cgroup2:\n got %q\nwant %q", got, want)
	}
	// The watch on the removed directory is still there.
	if _, err := unix.InotifyRmWatch(fd, uint32(childWD)); err != nil {
		t.Fatalf("inotify_rm_watch on the removed cgroup: %v (the kernel dropped the watch itself?)", err)
	}
	if got := readInotify(t, fd, names); !slices.Equal(got, []string{"child IN_IGNORED"}) {
		t.Fatalf("after inotify_rm_watch: got %q, want [child IN_IGNORED]", got)
	}
}

func readInotify(t *testing.T, fd int, names map[int]string) []string {
	t.Helper()
	buf := make([]byte, 64*1024)
	n, err := unix.Read(fd, buf)
	if err != nil {
		t.Fatalf("read inotify: %v", err)
	}
	var out []string
	for b := buf[:n]; len(b) >= unix.SizeofInotifyEvent; {
		wd := int(int32(binary.NativeEndian.Uint32(b)))
		mask := binary.NativeEndian.Uint32(b[4:])
		l := int(binary.NativeEndian.Uint32(b[12:]))
		name, _, _ := bytes.Cut(b[unix.SizeofInotifyEvent:unix.SizeofInotifyEvent+l], []byte{0})
		s := fmt.Sprintf("%s %s", names[wd], maskString(mask))
		if len(name) > 0 {
			s += " " + string(name)
		}
		out = append(out, s)
		b = b[unix.SizeofInotifyEvent+l:]
	}
	return out
}

func maskString(m uint32) string {
	var s string
	for _, f := range []struct {
		bit  uint32
		name string
	}{
		{unix.IN_CREATE, "IN_CREATE"}, {unix.IN_DELETE, "IN_DELETE"}, {unix.IN_DELETE_SELF, "IN_DELETE_SELF"},
		{unix.IN_MOVED_FROM, "IN_MOVED_FROM"}, {unix.IN_MOVED_TO, "IN_MOVED_TO"}, {unix.IN_MOVE_SELF, "IN_MOVE_SELF"},
		{unix.IN_IGNORED, "IN_IGNORED"}, {unix.IN_Q_OVERFLOW, "IN_Q_OVERFLOW"}, {unix.IN_ISDIR, "IN_ISDIR"},
	} {
		if m&f.bit != 0 {
			if s != "" {
				s += "|"
			}
			s += f.name
			m &^= f.bit
		}
	}
	if m != 0 {
		s += fmt.Sprintf("|%#x", m)
	}
	return s
}
