// Package testloaders gives tests real dynamic loaders of other C libraries than the
// machine's: glibc 2.31 (Debian 11's libc6, whose loader is installed as ld-2.31.so, a
// name no list of loader names had) and musl 1.2.3 (Debian 12's musl, whose loader is
// its libc.so). They are fetched with test/kernels' private apt configuration into the
// repository's gitignored .build/loaders and kept there between runs.
//
// It owns nothing but that fixture and must not be imported by non-test code.
package testloaders

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/test/kernels"
)

// Set is the fetched loaders and what comes with them.
type Set struct {
	Glibc231    string // .../lib/x86_64-linux-gnu/ld-2.31.so
	Glibc231Lib string // its library directory (libc-2.31.so, libm-2.31.so)
	Musl123     string // .../lib/x86_64-linux-musl/libc.so (ld-musl-x86_64.so.1 links to it)
}

// HostGlibc is the machine's own loader (glibc 2.36 on the test bed), by its real path.
const HostGlibc = "/lib64/ld-linux-x86-64.so.2"

var (
	packages = []kernels.Package{
		{Name: "libc6", Version: "2.31-13+deb11u11", Arch: "amd64", Suite: "bullseye"},
		{Name: "musl", Version: "1.2.3-1", Arch: "amd64", Suite: "bookworm"},
	}
	once    sync.Once
	fetched Set
	failure error
)

// Fetch returns the loaders, fetching them on first use. When they cannot be had (no
// network, no apt-get, not amd64) the test skips, or fails under EXECGATE_REQUIRE_BPF=1:
// the loader tests are part of the BPF suite.
func Fetch(t testing.TB) Set {
	t.Helper()
	once.Do(func() { fetched, failure = fetch(t) })
	if failure != nil {
		testenv.Need(t, "EXECGATE_REQUIRE_BPF", "the glibc 2.31 and musl loaders ("+failure.Error()+")")
	}
	return fetched
}

func fetch(t testing.TB) (Set, error) {
	root, err := repoRoot()
	if err != nil {
		return Set{}, err
	}
	apt := kernels.NewApt(filepath.Join(root, ".build", "loaders"), t.Logf)
	if err := apt.Fetch([]string{"bullseye", "bookworm"}, packages); err != nil {
		return Set{}, err
	}
	glibc, err := apt.Unpack(packages[0])
	if err != nil {
		return Set{}, err
	}
	musl, err := apt.Unpack(packages[1])
	if err != nil {
		return Set{}, err
	}
	s := Set{
		Glibc231:    filepath.Join(glibc, "lib/x86_64-linux-gnu/ld-2.31.so"),
		Glibc231Lib: filepath.Join(glibc, "lib/x86_64-linux-gnu"),
		Musl123:     filepath.Join(musl, "lib/x86_64-linux-musl/libc.so"),
	}
	for _, f := range []string{s.Glibc231, s.Musl123} {
		if _, err := os.Stat(f); err != nil {
			return Set{}, err
		}
	}
	return s, nil
}

// repoRoot is the directory of go.mod above the working directory (a test runs in
// its package's directory).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// ELF builds a minimal little-endian ELF64 file for tests of the loader rule: a header,
// a PT_INTERP naming interp if it is not empty, and, if dyn is not nil, a PT_DYNAMIC
// segment holding those (tag, value) pairs and DT_NULL.
func ELF(typ elf.Type, interp string, dyn [][2]uint64) []byte {
	const ehsize, phsize = 64, 56
	nph := 0
	if interp != "" {
		nph++
	}
	if dyn != nil {
		nph++
	}
	dataOff := uint64(ehsize + phsize*nph)
	var b bytes.Buffer
	h := elf.Header64{Type: uint16(typ), Machine: uint16(elf.EM_X86_64), Version: 1, Entry: 0x1000,
		Phoff: ehsize, Ehsize: ehsize, Phentsize: phsize, Phnum: uint16(nph)}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS], h.Ident[elf.EI_DATA], h.Ident[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), 1
	_ = binary.Write(&b, binary.LittleEndian, h)
	var data bytes.Buffer
	if interp != "" {
		name := interp + "\x00"
		_ = binary.Write(&b, binary.LittleEndian, elf.Prog64{Type: uint32(elf.PT_INTERP), Off: dataOff, Filesz: uint64(len(name)), Memsz: uint64(len(name))})
		data.WriteString(name)
	}
	if dyn != nil {
		off := dataOff + uint64(data.Len())
		for _, d := range append(dyn, [2]uint64{uint64(elf.DT_NULL), 0}) {
			_ = binary.Write(&data, binary.LittleEndian, elf.Dyn64{Tag: int64(d[0]), Val: d[1]})
		}
		size := uint64(16 * (len(dyn) + 1))
		_ = binary.Write(&b, binary.LittleEndian, elf.Prog64{Type: uint32(elf.PT_DYNAMIC), Off: off, Filesz: size, Memsz: size})
	}
	b.Write(data.Bytes())
	return b.Bytes()
}
