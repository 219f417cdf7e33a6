package loaders

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/execgate/execgate/internal/testloaders"
)

// TestLoaderCheckRealFiles checks real loaders of three C libraries, under their
// installed names and under names no list knows, and real programs and libraries.
func TestLoaderCheckRealFiles(t *testing.T) {
	set := testloaders.Fetch(t)
	dir := t.TempDir()
	renamed := func(src, name string) string {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, name)
		if err := os.WriteFile(dst, data, 0o755); err != nil {
			t.Fatal(err)
		}
		return dst
	}
	tests := []struct {
		name   string
		path   string
		loader bool
	}{
		{"glibc 2.36 loader", testloaders.HostGlibc, true},
		{"glibc 2.31 loader (ld-2.31.so)", set.Glibc231, true},
		{"musl 1.2.3 loader (libc.so)", set.Musl123, true},
		{"glibc 2.36 loader renamed", renamed(testloaders.HostGlibc, "launcher"), true},
		{"glibc 2.31 loader renamed", renamed(set.Glibc231, "app"), true},
		{"musl loader renamed", renamed(set.Musl123, "tool"), true},
		{"glibc 2.31 libm (a library with no PT_INTERP)", filepath.Join(set.Glibc231Lib, "libm-2.31.so"), true},
		{"PIE program /usr/bin/true", "/usr/bin/true", false},
		{"glibc 2.31 libc.so.6 (runs through its PT_INTERP)", filepath.Join(set.Glibc231Lib, "libc-2.31.so"), false},
		{"shell script", writeFile(t, dir, "script.sh", "#!/bin/sh\necho hi\n"), false},
	}
	if os.Getenv("EXECGATE_REQUIRE_BPF") == "1" || hasCompiler() {
		tests = append(tests, struct {
			name   string
			path   string
			loader bool
		}{"static-pie program (gcc -static-pie)", staticPIE(t, dir), false})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := CheckFile(tt.path)
			if errors.Is(err, ErrNotELF) && !tt.loader {
				return
			}
			if err != nil {
				t.Fatalf("CheckFile(%s): %v", tt.path, err)
			}
			if v.Loader != tt.loader || v.Reason == "" {
				t.Errorf("CheckFile(%s) = %+v, want loader=%v with a reason", tt.path, v, tt.loader)
			}
		})
	}
}

func hasCompiler() bool { _, err := exec.LookPath("gcc"); return err == nil }

func staticPIE(t *testing.T, dir string) string {
	src := writeFile(t, dir, "main.c", "int main(void){return 0;}\n")
	out := filepath.Join(dir, "static-pie")
	if b, err := exec.Command("gcc", "-static-pie", "-o", out, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc -static-pie: %v: %s", err, b)
	}
	if b, err := exec.Command(out).CombinedOutput(); err != nil {
		t.Fatalf("the static-pie program does not run: %v: %s", err, b)
	}
	return out
}

func writeFile(t *testing.T, dir, name, body string) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLoaderCheckSynthetic states the rule on minimal files, one property at a time.
func TestLoaderCheckSynthetic(t *testing.T) {
	flags1 := uint64(elf.DT_FLAGS_1)
	tests := []struct {
		name    string
		file    []byte
		loader  bool
		wantErr string
	}{
		{"shared object, no PT_INTERP, no PT_DYNAMIC", testloaders.ELF(elf.ET_DYN, "", nil), true, ""},
		{"shared object, no PT_INTERP, DT_FLAGS_1 without PIE", testloaders.ELF(elf.ET_DYN, "", [][2]uint64{{flags1, 1}}), true, ""},
		{"static-pie: DF_1_PIE", testloaders.ELF(elf.ET_DYN, "", [][2]uint64{{uint64(elf.DT_DEBUG), 0}, {flags1, df1PIE | 1}}), false, ""},
		{"DF_1_PIE after DT_NULL is not read", testloaders.ELF(elf.ET_DYN, "", [][2]uint64{{uint64(elf.DT_NULL), 0}, {flags1, df1PIE}}), true, ""},
		{"PIE program: PT_INTERP", testloaders.ELF(elf.ET_DYN, "/lib64/ld-linux-x86-64.so.2", [][2]uint64{{flags1, df1PIE}}), false, ""},
		{"library run through PT_INTERP (libc.so.6)", testloaders.ELF(elf.ET_DYN, "/lib64/ld-linux-x86-64.so.2", [][2]uint64{}), false, ""},
		{"static program", testloaders.ELF(elf.ET_EXEC, "", nil), false, ""},
		{"relocatable object", testloaders.ELF(elf.ET_REL, "", nil), false, ""},
		{"not ELF", []byte("#!/bin/sh\n"), false, ErrNotELF.Error()},
		{"empty", nil, false, ErrNotELF.Error()},
		{"truncated header", testloaders.ELF(elf.ET_DYN, "", nil)[:40], false, "malformed"},
		{"program headers cut off", testloaders.ELF(elf.ET_DYN, "/lib64/ld-linux-x86-64.so.2", nil)[:70], false, "malformed"},
	}
	huge := testloaders.ELF(elf.ET_DYN, "", [][2]uint64{{flags1, 0}})
	binary.LittleEndian.PutUint64(huge[64+32:], maxDynamic+1) // Filesz of the PT_DYNAMIC header
	tests = append(tests, struct {
		name    string
		file    []byte
		loader  bool
		wantErr string
	}{"PT_DYNAMIC larger than the bound", huge, false, "PT_DYNAMIC of"})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := Check(bytes.NewReader(tt.file))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Check = %+v, %v; want an error containing %q", v, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if v.Loader != tt.loader || v.Reason == "" {
				t.Errorf("Check = %+v, want loader=%v with a reason", v, tt.loader)
			}
		})
	}
}

// FuzzLoaderCheck: Check never panics and returns a verdict or an error, never both.
func FuzzLoaderCheck(f *testing.F) {
	f.Add(testloaders.ELF(elf.ET_DYN, "", nil))
	f.Add(testloaders.ELF(elf.ET_DYN, "/lib64/ld-linux-x86-64.so.2", [][2]uint64{{uint64(elf.DT_FLAGS_1), df1PIE}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := Check(bytes.NewReader(b))
		if err != nil && (v.Loader || v.Reason != "") {
			t.Fatalf("error %v with verdict %+v", err, v)
		}
		if err == nil && v.Reason == "" {
			t.Fatalf("verdict without a reason: %+v", v)
		}
	})
}

// TestLoaderOpenInRoot: a path is opened as the container sees it, through no link.
func TestLoaderOpenInRoot(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"usr/bin", "real"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, root, "usr/bin/app", "app")
	writeFile(t, root, "real/x", "x")
	if err := os.Symlink("/real/x", filepath.Join(root, "usr/bin/link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", filepath.Join(root, "lib")); err != nil {
		t.Fatal(err)
	}
	dir, err := os.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	tests := []struct {
		path string
		ok   bool
	}{
		{"/usr/bin/app", true},
		{"/real/x", true},
		{"/usr/bin/link", false},     // the kernel would name /real/x
		{"/lib/x", false},            // a linked directory: the kernel names /real/x
		{"/../../etc/passwd", false}, // ".." stops at the root: no such file inside it
		{"/usr/bin", false},          // not a regular file
	}
	for _, tt := range tests {
		f, err := OpenInRoot(dir, tt.path)
		if (err == nil) != tt.ok {
			t.Errorf("OpenInRoot(%s) = %v, want ok=%v", tt.path, err, tt.ok)
		}
		if f != nil {
			f.Close()
		}
	}
}

// BenchmarkLoaderCheck is the cost of checking one allowed path in a root: open it
// (openat2 in root, no links) and read its ELF headers, as the agent's inspection does.
//
//	go test ./nodeagent/loaders -run '^$' -bench LoaderCheck -benchtime 2000x
func BenchmarkLoaderCheck(b *testing.B) {
	root, err := os.Open("/")
	if err != nil {
		b.Fatal(err)
	}
	defer root.Close()
	for _, path := range []string{"/usr/bin/true", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/libc.so.6"} {
		b.Run(filepath.Base(path), func(b *testing.B) {
			for range b.N {
				f, err := OpenInRoot(root, path)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := Check(f); err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
	}
}
