package kernels

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

var mergedUsr = []string{"bin", "sbin", "lib", "lib64"}

// TestBinary is a cross-built Go test binary and the tests to run from it.
type TestBinary struct {
	Name string // enforcer, agent: also its file name under /tests
	Path string // on the host
	Run  string // -test.run; "" runs every test
	Skip string // -test.skip; "" skips none
}

// BuildBase writes the part of the initramfs every row of arch shares: the
// userland packages unpacked together, /etc/passwd and group (root and
// nobody), /tmp 1777, /dev/console and /dev/null, mount points, and the test
// binaries under /tests. The result is an uncompressed newc archive.
func BuildBase(a *Apt, pkgs []Package, bins []TestBinary, stage, out string) error {
	if err := os.RemoveAll(stage); err != nil {
		return err
	}
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "etc", "tests", "root"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return err
		}
	}
	// Merged /usr, as every current distribution: /bin, /sbin, /lib and
	// /lib64 link into /usr, so /bin/id and /usr/bin/id are one file.
	for _, d := range mergedUsr {
		if err := os.MkdirAll(filepath.Join(stage, "usr", d), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("usr/"+d, filepath.Join(stage, d)); err != nil {
			return err
		}
	}
	for _, p := range pkgs {
		dir, err := a.Unpack(p)
		if err != nil {
			return err
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			src, dst := filepath.Join(dir, e.Name()), stage
			if slices.Contains(mergedUsr, e.Name()) && e.IsDir() {
				src, dst = src+"/.", filepath.Join(stage, "usr", e.Name())
			}
			if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
				return fmt.Errorf("copy %s into the initramfs: %w: %s", p.Name, err, out)
			}
		}
	}
	if _, err := os.Lstat(filepath.Join(stage, "bin/busybox")); err != nil {
		return fmt.Errorf("the userland has no /bin/busybox (add busybox-static to the matrix): %w", err)
	}
	// dash's postinst would make /bin/sh; nothing runs maintainer scripts here.
	if _, err := os.Lstat(filepath.Join(stage, "bin/sh")); err != nil {
		if err := os.Symlink("dash", filepath.Join(stage, "bin/sh")); err != nil {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(stage, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(stage, "tmp"), 0o1777|os.ModeSticky); err != nil {
		return err
	}
	for _, n := range []struct {
		name         string
		major, minor uint32
	}{{"dev/console", 5, 1}, {"dev/null", 1, 3}} {
		if err := unix.Mknod(filepath.Join(stage, n.name), unix.S_IFCHR|0o600, int(unix.Mkdev(n.major, n.minor))); err != nil {
			return fmt.Errorf("mknod %s (needs root): %w", n.name, err)
		}
	}
	for _, b := range bins {
		if err := copyFile(b.Path, filepath.Join(stage, "tests", b.Name+".test"), 0o755); err != nil {
			return err
		}
	}
	return writeCpio(stage, out)
}

// InitScript is /init for one row: mount what the tests need, print the
// kernel and LSM list, run each test binary and print its exit code, power off.
func InitScript(row Row, env map[string]string, bins []TestBinary) string {
	var s strings.Builder
	s.WriteString(initPreamble(env))
	for _, b := range bins {
		run := ""
		if b.Run != "" {
			run = fmt.Sprintf(" '-test.run=%s'", b.Run)
		}
		if b.Skip != "" {
			run += fmt.Sprintf(" '-test.skip=%s'", b.Skip)
		}
		fmt.Fprintf(&s, "echo VMSTART %[1]s\n/tests/%[1]s.test -test.v -test.count=1 -test.timeout=40m%[2]s\necho \"VMRESULT %[1]s exit=$?\"\n", b.Name, run)
	}
	s.WriteString("echo VMDONE\n$B sync\n$B poweroff -f\n")
	return s.String()
}

// ShellQuote quotes v as one word for sh: inside single quotes nothing is special but the
// quote itself, which is closed, escaped and reopened ("Debian's" broke /init once).
func ShellQuote(v string) string {
	return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
}

// initPreamble mounts what the tests need, exports env, prints the kernel
// and LSM list and enters /tmp.
func initPreamble(env map[string]string) string {
	var s strings.Builder
	s.WriteString(`#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
$B mount -t bpf bpf /sys/fs/bpf
$B mount -t cgroup2 cgroup2 /sys/fs/cgroup
$B mount -t tracefs tracefs /sys/kernel/tracing
$B mount -t debugfs debugfs /sys/kernel/debug
$B mount -t securityfs securityfs /sys/kernel/security
$B mount -t tmpfs tmpfs /run
$B ip link set lo up
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
`)
	for _, k := range slices.Sorted(maps.Keys(env)) {
		fmt.Fprintf(&s, "export %s=%s\n", k, ShellQuote(env[k]))
	}
	s.WriteString(`echo "VMKERNEL $($B uname -r) $($B uname -m)"
echo "VMLSM $($B cat /sys/kernel/security/lsm)"
cd /tmp
`)
	return s.String()
}

// BuildRow writes base followed by a second archive holding the row's /init
// and files (path in the VM → path on the host): the kernel unpacks
// concatenated archives in order.
func BuildRow(base, stage, out, init string, files map[string]string) error {
	if err := os.RemoveAll(stage); err != nil {
		return err
	}
	if err := os.MkdirAll(stage, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, "init"), []byte(init), 0o755); err != nil {
		return err
	}
	for dst, src := range files {
		to := filepath.Join(stage, dst)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return err
		}
		if err := copyFile(src, to, 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(base, out, 0o644); err != nil {
		return err
	}
	return AppendTree(out, stage)
}

// AppendTree appends a newc archive of dir (owned by root) to the archive at
// path: the kernel unpacks concatenated archives in order, later files
// replacing earlier ones.
func AppendTree(path, dir string) error {
	var tree bytes.Buffer
	if err := cpioTo(dir, &tree); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(tree.Bytes()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeCpio archives dir with Debian's cpio (newc, owned by root): the Go
// cpio packages cannot write device nodes.
func writeCpio(dir, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := cpioTo(dir, f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func cpioTo(dir string, w io.Writer) error {
	var names bytes.Buffer
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		names.WriteString(rel + "\x00")
		return nil
	})
	if err != nil {
		return err
	}
	cmd := exec.Command("cpio", "--null", "-o", "-H", "newc", "-R", "0:0", "--quiet")
	cmd.Dir, cmd.Stdin, cmd.Stdout = dir, &names, w
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("cpio %s: %w: %s", dir, err, stderr.String())
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// KernelImage finds the bootable image in an unpacked kernel package.
func KernelImage(root string) (string, error) {
	for _, pat := range []string{"boot/vmlinuz-*", "usr/lib/modules/*/vmlinuz*", "boot/vmlinux-*"} {
		m, _ := filepath.Glob(filepath.Join(root, pat))
		if len(m) > 0 {
			return m[0], nil
		}
	}
	return "", fmt.Errorf("no vmlinuz in %s", root)
}
