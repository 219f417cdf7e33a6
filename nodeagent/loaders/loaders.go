// Package loaders tells a dynamic loader from a program by what the file is, not by
// what it is called.
//
// A dynamic loader (glibc's ld.so, in any version and under any name: ld-2.31.so,
// /nix/store/...-glibc-2.38/lib/ld-linux-x86-64.so.2; musl's libc.so) run directly
// ("ld.so /any/file") maps and runs a file that is never exec'd itself, so the kernel
// checks only the loader: an allowlist that allows a loader allows everything.
// internal/execpath refuses the loaders' usual names; this package recognises them by
// content, so that the node agent can refuse them whatever their name.
//
// It owns the ELF check (Check, CheckFile) and opening a path the way a container sees
// it (OpenInRoot). It must not know Kubernetes, cgroups or the enforcer.
package loaders

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Verdict is what Check found.
type Verdict struct {
	// Loader is true for a shared object that runs on its own: see Check.
	Loader bool
	// Reason says why, in words that follow a file's name in a message.
	Reason string
	// Interp is the PT_INTERP of a program (the loader the kernel starts it with),
	// "" for other files.
	Interp string
}

// maxInterp bounds the PT_INTERP read: PATH_MAX.
const maxInterp = 4096

// maxDynamic bounds the PT_DYNAMIC segment read: real ones are a few hundred bytes.
const maxDynamic = 64 << 10

// df1PIE is DF_1_PIE in DT_FLAGS_1: the object is a position-independent program.
const df1PIE = 0x08000000

// ErrNotELF reports a file that is not ELF (a script, data): never a loader.
var ErrNotELF = errors.New("not an ELF file")

// Check reads an ELF file and says whether it is a dynamic loader. A loader is the one
// kind of shared object that runs by itself: ELF type ET_DYN, no PT_INTERP (the kernel
// starts it without an interpreter), and not marked as a program (DF_1_PIE). That
// describes glibc's ld.so and musl's libc.so in every version, and no program: a PIE
// program has PT_INTERP, a static-pie program has DF_1_PIE, a static program is ET_EXEC.
// Ordinary libraries (libm.so.6) match too: they are not programs either, and no
// policy needs them. Linkers older than binutils 2.33 wrote static-pie programs without
// DF_1_PIE; those are refused as well (fail closed).
//
// A file that is not ELF returns ErrNotELF; a malformed ELF file an error. Only the ELF
// header and the program headers are read (as the kernel does), never the section
// headers: a check costs a few reads, and hostile input is bounded by maxPhnum.
func Check(r io.ReaderAt) (Verdict, error) {
	var ident [elf.EI_NIDENT]byte
	if _, err := r.ReadAt(ident[:], 0); err != nil || string(ident[:4]) != elf.ELFMAG {
		return Verdict{}, ErrNotELF
	}
	var order binary.ByteOrder
	switch elf.Data(ident[elf.EI_DATA]) {
	case elf.ELFDATA2LSB:
		order = binary.LittleEndian
	case elf.ELFDATA2MSB:
		order = binary.BigEndian
	default:
		return Verdict{}, fmt.Errorf("malformed ELF file: data encoding %d", ident[elf.EI_DATA])
	}
	h := header{order: order, wide: elf.Class(ident[elf.EI_CLASS]) == elf.ELFCLASS64}
	if !h.wide && elf.Class(ident[elf.EI_CLASS]) != elf.ELFCLASS32 {
		return Verdict{}, fmt.Errorf("malformed ELF file: class %d", ident[elf.EI_CLASS])
	}
	if err := h.read(r); err != nil {
		return Verdict{}, err
	}
	if h.typ != elf.ET_DYN {
		return Verdict{Reason: "is an ELF " + h.typ.String() + " file, not a shared object"}, nil
	}
	var dynamic *segment
	for i := range h.progs {
		switch p := &h.progs[i]; p.typ {
		case elf.PT_INTERP:
			return Verdict{Reason: "names an interpreter (PT_INTERP): it is a program the loader runs", Interp: interp(r, p)}, nil
		case elf.PT_DYNAMIC:
			dynamic = p
		}
	}
	if dynamic != nil {
		flags, err := flags1(r, &h, dynamic)
		if err != nil {
			return Verdict{}, err
		}
		if flags&df1PIE != 0 {
			return Verdict{Reason: "is a static-pie program (DF_1_PIE, no PT_INTERP)"}, nil
		}
	}
	return Verdict{Loader: true, Reason: "is an ELF shared object that runs without an interpreter (no PT_INTERP, not a PIE program): a dynamic loader such as ld.so, which runs any readable file named on its command line"}, nil
}

// maxPhnum bounds the program headers read (real files have about 15; the kernel's
// own bound is 64 KiB of headers).
const maxPhnum = 1024

// header is what Check needs of an ELF header and its program headers.
type header struct {
	order binary.ByteOrder
	wide  bool // ELFCLASS64
	typ   elf.Type
	progs []segment
}

type segment struct {
	typ         elf.ProgType
	off, filesz uint64
}

func (h *header) word(b []byte) uint64 {
	if h.wide {
		return h.order.Uint64(b)
	}
	return uint64(h.order.Uint32(b))
}

// read reads e_type and the program headers (ELF64 and ELF32 layouts).
func (h *header) read(r io.ReaderAt) error {
	size, phoffAt, phentAt := 64, 32, 54
	if !h.wide {
		size, phoffAt, phentAt = 52, 28, 42
	}
	buf := make([]byte, size)
	if err := readAt(r, buf, 0); err != nil {
		return fmt.Errorf("malformed ELF file: header: %w", err)
	}
	h.typ = elf.Type(h.order.Uint16(buf[16:]))
	phoff := h.word(buf[phoffAt:])
	phentsize, phnum := int(h.order.Uint16(buf[phentAt:])), int(h.order.Uint16(buf[phentAt+2:]))
	want := 56
	if !h.wide {
		want = 32
	}
	if phnum == 0 {
		return nil
	}
	if phentsize != want || phnum > maxPhnum {
		return fmt.Errorf("malformed ELF file: %d program headers of %d bytes", phnum, phentsize)
	}
	table := make([]byte, phnum*phentsize)
	if phoff > 1<<40 || readAt(r, table, int64(phoff)) != nil {
		return fmt.Errorf("malformed ELF file: program headers cut off")
	}
	for i := range phnum {
		p := table[i*phentsize:]
		s := segment{typ: elf.ProgType(h.order.Uint32(p))}
		if h.wide {
			s.off, s.filesz = h.order.Uint64(p[8:]), h.order.Uint64(p[32:])
		} else {
			s.off, s.filesz = uint64(h.order.Uint32(p[4:])), uint64(h.order.Uint32(p[16:]))
		}
		h.progs = append(h.progs, s)
	}
	return nil
}

// interp reads a PT_INTERP segment's path ("" when it is not one).
func interp(r io.ReaderAt, p *segment) string {
	if p.filesz == 0 || p.filesz > maxInterp || p.off > 1<<40 {
		return ""
	}
	buf := make([]byte, p.filesz)
	if readAt(r, buf, int64(p.off)) != nil {
		return ""
	}
	path, _, _ := strings.Cut(string(buf), "\x00")
	if !strings.HasPrefix(path, "/") {
		return ""
	}
	return path
}

// flags1 reads DT_FLAGS_1 from the PT_DYNAMIC segment, not from a section: stripped
// section headers do not matter.
func flags1(r io.ReaderAt, h *header, dynamic *segment) (uint64, error) {
	if dynamic.filesz > maxDynamic || dynamic.off > 1<<40 {
		return 0, fmt.Errorf("malformed ELF file: PT_DYNAMIC of %d bytes", dynamic.filesz)
	}
	buf := make([]byte, dynamic.filesz)
	if err := readAt(r, buf, int64(dynamic.off)); err != nil {
		return 0, fmt.Errorf("malformed ELF file: read PT_DYNAMIC: %w", err)
	}
	size, word := 16, 8
	if !h.wide {
		size, word = 8, 4
	}
	for off := 0; off+size <= len(buf); off += size {
		tag, val := h.word(buf[off:]), h.word(buf[off+word:])
		switch elf.DynTag(tag) {
		case elf.DT_NULL:
			return 0, nil
		case elf.DT_FLAGS_1:
			return val, nil
		}
	}
	return 0, nil
}

// readAt fills buf from off; io.EOF with a full buffer is success (io.ReaderAt allows it).
func readAt(r io.ReaderAt, buf []byte, off int64) error {
	n, err := r.ReadAt(buf, off)
	if n == len(buf) {
		return nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// CheckFile opens path (on the agent's own file system) and checks it.
func CheckFile(path string) (Verdict, error) {
	f, err := os.Open(path)
	if err != nil {
		return Verdict{}, err
	}
	defer f.Close()
	return Check(f)
}

// OpenInRoot opens path as a process whose root directory is root sees it, without
// following symbolic links: the kernel names an executable by the path it resolved,
// so an allowlist entry matches only the file reached through no link at all. Absolute
// links and ".." cannot leave root (RESOLVE_IN_ROOT), nor can magic links of /proc.
// The file is opened read-only, non-blocking (a FIFO at an allowed path must not hang
// the agent) and must be a regular file.
func OpenInRoot(root *os.File, path string) (*os.File, error) {
	fd, err := unix.Openat2(int(root.Fd()), path, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, &os.PathError{Op: "openat2", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, &os.PathError{Op: "open", Path: path, Err: errors.New("not a regular file")}
	}
	return f, nil
}

// OpenInterpreter opens a program's PT_INTERP path in root the way the kernel does
// when it starts the program: symbolic links followed, but never out of root.
func OpenInterpreter(root *os.File, path string) (*os.File, error) {
	fd, err := unix.Openat2(int(root.Fd()), path, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, &os.PathError{Op: "openat2", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// OpenRoot opens the root directory of process pid (/proc/<pid>/root) for OpenInRoot.
func OpenRoot(proc string, pid int) (*os.File, error) {
	return os.OpenFile(fmt.Sprintf("%s/%d/root", proc, pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

// openDirInRoot opens directory dir as OpenInRoot opens a file.
func openDirInRoot(root *os.File, dir string) (*os.File, error) {
	fd, err := unix.Openat2(int(root.Fd()), dir, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, &os.PathError{Op: "openat2", Path: dir, Err: err}
	}
	return os.NewFile(uintptr(fd), dir), nil
}

// maxFindDepth bounds how deep FindInRoot descends below a prefix rule's directory.
const maxFindDepth = 16

// FindInRoot looks for loaders below directory dir (a prefix rule, "/opt/app/") as
// root's processes see it. Only regular files with an execute bit are read (the kernel
// execs nothing else); symbolic links are not followed (the kernel names a file by the
// path it resolved, which is then visited on its own if it is below dir). At most limit
// directory entries are visited: complete is false when the walk stopped there. It
// returns the loaders found, by path, with the reason.
func FindInRoot(root *os.File, dir string, limit int) (found map[string]string, complete bool, err error) {
	found = map[string]string{}
	budget := limit
	var walk func(path string, depth int) error
	walk = func(path string, depth int) error {
		d, err := openDirInRoot(root, path)
		if err != nil {
			return err
		}
		defer d.Close()
		entries, err := d.ReadDir(budget + 1)
		if err != nil && len(entries) == 0 {
			return nil // empty, or vanished meanwhile
		}
		for _, e := range entries {
			if budget <= 0 {
				return nil
			}
			budget--
			child := strings.TrimSuffix(path, "/") + "/" + e.Name()
			switch {
			case e.IsDir():
				if depth >= maxFindDepth {
					budget = 0 // deeper than the bound: incomplete
					return nil
				}
				if err := walk(child, depth+1); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
			case e.Type().IsRegular():
				// Not e.Info(): it stats by name from the agent's root, not root.
				var st unix.Stat_t
				if unix.Fstatat(int(d.Fd()), e.Name(), &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Mode&0o111 == 0 {
					continue
				}
				f, err := OpenInRoot(root, child)
				if err != nil {
					continue
				}
				v, err := Check(f)
				f.Close()
				if err == nil && v.Loader {
					found[child] = v.Reason
				}
			}
		}
		return nil
	}
	if err := walk(dir, 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return found, false, err
	}
	return found, budget > 0, nil
}
