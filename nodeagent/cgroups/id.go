package cgroups

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// fileIDKernfs is FILEID_KERNFS (include/linux/exportfs.h): the handle type of kernfs,
// whose 8-byte handle is the node's 64-bit id (since Linux 5.5).
const fileIDKernfs = 0xfe

// ID returns the cgroup v2 id of the cgroup directory at path: the kernfs node id,
// which is what bpf_get_current_cgroup_id() returns and, on 64-bit kernels, the
// directory's inode number. (On 32-bit kernels the inode holds only the low 32 bits;
// execgate does not support those.)
func ID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup id of %q: stat: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, fmt.Errorf("cgroup id of %q: not a directory", path)
	}
	// An inode number from another filesystem would silently bind the wrong thing.
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return 0, fmt.Errorf("cgroup id of %q: statfs: %w", path, err)
	}
	if sfs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup id of %q: not on a cgroup2 filesystem (magic %#x)", path, sfs.Type)
	}
	return st.Ino, nil
}

// handleID returns the kernfs id from the directory's file handle. It is the kernel's
// own statement of the id and is used to cross-check ID.
func handleID(path string) (uint64, error) {
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, path, 0)
	if err != nil {
		return 0, fmt.Errorf("name_to_handle_at %q: %w", path, err)
	}
	b := h.Bytes()
	if h.Type() != fileIDKernfs || len(b) != 8 {
		return 0, fmt.Errorf("name_to_handle_at %q: handle type %#x size %d, want kernfs (%#x) size 8", path, h.Type(), len(b), fileIDKernfs)
	}
	return binary.NativeEndian.Uint64(b), nil
}

// Exists reports whether a cgroup directory exists at path.
func Exists(path string) (bool, error) {
	if _, err := ID(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// ExistsID reports whether a live cgroup has the given id, by opening it through its
// kernfs file handle; mountDir is any directory on the cgroup2 filesystem (normally
// the mount point). This needs CAP_DAC_READ_SEARCH and works after the cgroup was
// renamed, which a path check would not. Removed cgroups answer ESTALE even while the
// kernel still holds them as dying.
func ExistsID(mountDir string, id uint64) (bool, error) {
	if id == 0 {
		return false, fmt.Errorf("cgroup id 0 is not valid")
	}
	mfd, err := unix.Open(mountDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("cgroup id %d: open %q: %w", id, mountDir, err)
	}
	defer unix.Close(mfd)
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], id)
	fd, err := unix.OpenByHandleAt(mfd, unix.NewFileHandle(fileIDKernfs, b[:]), unix.O_RDONLY|unix.O_CLOEXEC)
	switch {
	case err == nil:
		unix.Close(fd)
		return true, nil
	case errors.Is(err, unix.ESTALE), errors.Is(err, unix.ENOENT):
		return false, nil
	default:
		return false, fmt.Errorf("cgroup id %d: open_by_handle_at: %w", id, err)
	}
}
