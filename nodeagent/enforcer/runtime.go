package enforcer

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/execgate/execgate/bpf"
)

// The container runtime's re-exec of itself.
//
// runc joins the container's cgroup before its init re-executes a clone of
// the runc binary (CVE-2019-5736's fix: a read-only bind mount of the binary,
// or a sealed memfd copy). That exec is under the pod's binding, before the
// container exists, and no policy lists the runtime: under Protect no
// container would ever start. The kernel program exempts it (runtime_reexec
// in the program) when the task is in the runtime's mount namespace, the task
// or its parent runs a runtime executable, and the file is one too or has no
// path. The runtime executables are named to the kernel by inode, here.

// FileID is a file as the kernel names it: the superblock's device number
// (s_dev, the kernel's encoding: major << 20 | minor) and the inode number.
type FileID struct {
	Dev uint32
	Ino uint64
}

func (f FileID) String() string {
	return fmt.Sprintf("%d:%d:%d", f.Dev>>20, f.Dev&(1<<20-1), f.Ino)
}

// MaxRuntimeFiles is the map's size in the program.
const MaxRuntimeFiles = 64

// KernelFileIDs names path's file as the kernel may: by its mapping and,
// where it differs, by stat (an overlayfs root on kernels whose
// /proc/<pid>/maps shows the underlying file, not the overlay's). Both name
// the same file; the kernel matches whichever it sees. stat's st_dev alone is
// not enough: btrfs reports a subvolume's own number, not the superblock's,
// so the file is mapped and its mapping read back from /proc/self/maps,
// which prints the superblock's device and the inode. An empty file, which
// cannot be mapped, has its stat name only.
func KernelFileIDs(path string) ([]FileID, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	byStat := FileID{Dev: unix.Major(st.Dev)<<20 | unix.Minor(st.Dev), Ino: st.Ino}
	if st.Size == 0 {
		return []FileID{byStat}, nil
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, 1, unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		return []FileID{byStat}, nil
	}
	defer func() { _ = unix.Munmap(mem) }() // a mapping of our own: unmapping cannot fail
	id, err := mappingID(uintptr(unsafe.Pointer(&mem[0])))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if id.Ino != st.Ino {
		return nil, fmt.Errorf("%s: mapped inode %d is not the opened file's %d", path, id.Ino, st.Ino)
	}
	if id == byStat {
		return []FileID{id}, nil
	}
	return []FileID{id, byStat}, nil
}

// KernelFileID is the first of KernelFileIDs: the name the mapping shows.
func KernelFileID(path string) (FileID, error) {
	ids, err := KernelFileIDs(path)
	if err != nil {
		return FileID{}, err
	}
	return ids[0], nil
}

// mappingID reads the device and inode of the mapping that starts at addr
// from /proc/self/maps ("start-end perms offset major:minor inode path").
func mappingID(addr uintptr) (FileID, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return FileID{}, err
	}
	defer f.Close()
	want := strconv.FormatUint(uint64(addr), 16) + "-"
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, want) {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 5 {
			break
		}
		major, minor, ok := strings.Cut(fields[3], ":")
		if !ok {
			break
		}
		ma, err1 := strconv.ParseUint(major, 16, 32)
		mi, err2 := strconv.ParseUint(minor, 16, 32)
		ino, err3 := strconv.ParseUint(fields[4], 10, 64)
		if err := errors.Join(err1, err2, err3); err != nil {
			return FileID{}, fmt.Errorf("parse /proc/self/maps line %q: %w", line, err)
		}
		return FileID{Dev: uint32(ma)<<20 | uint32(mi), Ino: ino}, nil
	}
	if err := sc.Err(); err != nil {
		return FileID{}, err
	}
	return FileID{}, fmt.Errorf("no mapping at %#x in /proc/self/maps", addr)
}

// MountNamespace is the inode of /proc/<pid>/ns/mnt.
func MountNamespace(pid int) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/mnt", pid), &st); err != nil {
		return 0, err
	}
	return uint32(st.Ino), nil
}

// SetRuntimeFiles replaces the runtime executables the kernel exempts (see
// the top of this file). Entries not in ids are deleted after the new ones
// are in, so an executable in both sets is never missing.
func (e *Enforcer) SetRuntimeFiles(ids []FileID) error {
	if len(ids) > MaxRuntimeFiles {
		return fmt.Errorf("%d runtime executables, at most %d", len(ids), MaxRuntimeFiles)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	keep := map[bpf.ExecgateFileId]bool{}
	for _, id := range ids {
		k := bpf.ExecgateFileId{Ino: id.Ino, Dev: id.Dev}
		keep[k] = true
		if err := e.runtime.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("add runtime executable %s: %w", id, err)
		}
	}
	var (
		k     bpf.ExecgateFileId
		v     uint8
		stale []bpf.ExecgateFileId
	)
	it := e.runtime.Iterate()
	for it.Next(&k, &v) {
		if !keep[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list runtime executables: %w", err)
	}
	for _, k := range stale {
		if err := e.runtime.Delete(k); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove runtime executable %d:%d: %w", k.Dev, k.Ino, err)
		}
	}
	e.log.Debug("runtime executables", zap.Int("files", len(ids)), zap.Int("removed", len(stale)))
	return nil
}

// RuntimeFiles lists what the kernel exempts now.
func (e *Enforcer) RuntimeFiles() ([]FileID, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var (
		k   bpf.ExecgateFileId
		v   uint8
		out []FileID
	)
	it := e.runtime.Iterate()
	for it.Next(&k, &v) {
		out = append(out, FileID{Dev: k.Dev, Ino: k.Ino})
	}
	return out, it.Err()
}
