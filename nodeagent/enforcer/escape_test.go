package enforcer

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/execgate/execgate/internal/testenv"
)

// Escape attempts: a process in a Protect cgroup tries to run a binary its allowlist does
// not name. Each row of docs/threat-model.md is one subtest here; a row whose result is
// "runs" is a documented limit of a path-based allowlist, asserted so that a change in
// behaviour (a fix, or a regression elsewhere) fails and the document gets updated.
//
// The attacker is a copy of this test binary, allowed in every case's policy, started in
// the bound cgroup (as root or as nobody) with EXECGATE_ESCAPE_ATTACK naming what to try:
// it can make the system calls a compromised allowed program would (link, cgroup writes,
// execveat, user namespaces), which no allowed system binary does on request.

// Outcomes of one attempt.
const (
	ran     = "runs"    // the disallowed code ran: an escape
	denied  = "denied"  // the exec was refused (EPERM) or killed before its first instruction
	blocked = "blocked" // a step before the exec (link, cgroup move) was refused by the kernel
)

type outcome struct{ kind, detail string }

func (o outcome) String() string { return o.kind + ": " + o.detail }

// classify turns the result of running a command into an outcome.
func classify(out []byte, err error) outcome {
	detail := strings.TrimSpace(string(out))
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return outcome{ran, detail}
	case errors.As(err, &exitErr) && exitErr.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL:
		return outcome{denied, "killed by SIGKILL " + detail}
	case errors.Is(err, syscall.EPERM):
		return outcome{denied, err.Error()}
	case errors.As(err, &exitErr):
		return outcome{ran, fmt.Sprintf("exit %d: %s", exitErr.ExitCode(), detail)} // it ran, and failed
	}
	return outcome{"error", fmt.Sprintf("%v: %s", err, detail)}
}

// escapeLab is a directory every user can read, with the attacker's program in it.
type escapeLab struct {
	dir      string // canonical, mode 0755
	writable string // dir/w, mode 1777: a writable volume of the pod (emptyDir, /tmp)
	attacker string // a copy of this test binary
	e        *Enforcer
}

func newEscapeLab(t *testing.T, e *Enforcer) *escapeLab {
	t.Helper()
	dir, err := os.MkdirTemp("", "execgate-escape-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dir = canonical(t, dir)
	l := &escapeLab{dir: dir, writable: filepath.Join(dir, "w"), attacker: filepath.Join(dir, "attacker"), e: e}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	copyFile(t, self, l.attacker)
	if err := os.Mkdir(l.writable, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(l.writable, 0o1777); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *escapeLab) path(name string) string { return filepath.Join(l.dir, name) }

// cgroup returns a fresh cgroup bound to a Protect policy allowing the attacker and allow.
func (l *escapeLab) cgroup(t *testing.T, name string, allow ...string) *testenv.Cgroup {
	t.Helper()
	cg := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-escape-%s-%d", name, time.Now().UnixNano()))
	key := PolicyKey("escape/" + name)
	pol := PolicyVersion{Key: key, Version: 1, Mode: ModeProtect, Containers: map[string]Rules{"app": {Paths: append([]string{l.attacker}, allow...)}}}
	if _, err := l.e.PutPolicy(pol); err != nil {
		t.Fatalf("put policy: %v", err)
	}
	if err := l.e.Bind(cg.ID, key, "app"); err != nil {
		t.Fatalf("bind: %v", err)
	}
	t.Cleanup(func() { _ = l.e.Unbind(cg.ID); _ = l.e.DeletePolicy(key) })
	return cg
}

// run execs argv directly in cg (as root), like a container's process would.
func run(t *testing.T, cg *testenv.Cgroup, setup func(*syscall.SysProcAttr), argv ...string) outcome {
	t.Helper()
	cmd, done, err := cg.Command(argv[0], argv[1:]...)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	if setup != nil {
		setup(cmd.SysProcAttr)
	}
	return classify(cmd.CombinedOutput())
}

// attack starts the attacker in cg as uid and returns what it reported, or, when it
// replaced itself by exec, what became of the process.
func (l *escapeLab) attack(t *testing.T, cg *testenv.Cgroup, uid uint32, attack string, args ...string) outcome {
	t.Helper()
	cmd, done, err := cg.Command(l.attacker, "-test.run=^TestEscapeHelperProcess$")
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	cmd.Dir = l.dir
	cmd.Env = append(os.Environ(), "EXECGATE_ESCAPE_ATTACK="+attack, "EXECGATE_ESCAPE_ARGS="+strings.Join(args, "\x1f"))
	if uid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: uid}
	}
	out, err := cmd.CombinedOutput()
	if i := bytes.LastIndex(out, []byte("\nRESULT ")); i >= 0 || bytes.HasPrefix(out, []byte("RESULT ")) {
		line := string(out[i+1:])
		if i < 0 {
			line = string(out)
		}
		kind, detail, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "RESULT "), " ")
		return outcome{kind, detail}
	}
	return classify(out, err)
}

func want(t *testing.T, got outcome, kind string) {
	t.Helper()
	if got.kind != kind {
		t.Fatalf("outcome %s, want %s (update docs/threat-model.md if this changed on purpose)", got, kind)
	}
	t.Logf("%s", got)
}

const nobody = 65534

// TestEscapeAttempts runs every escape of docs/threat-model.md in each attach mode the
// kernel accepts (exec_kill on this test bed).
func TestEscapeAttempts(t *testing.T) {
	forEachAttachMode(t, func(t *testing.T, mode AttachMode) {
		l := newEscapeLab(t, newTestEnforcer(t, mode))
		// Which file of a script is checked: the script (lsm, fmod_ret, and
		// the fanotify gate), the interpreter that runs (exec_kill, and so
		// fanotify too, which is exec_kill plus the gate).
		checksScript := mode != AttachExecKill
		checksInterpreter := mode == AttachExecKill || mode == AttachFanotify

		t.Run("symlink with an allowed name to a disallowed binary", func(t *testing.T) {
			link := l.path("allowed-name")
			if err := os.Symlink("/usr/bin/id", link); err != nil {
				t.Fatal(err)
			}
			want(t, run(t, l.cgroup(t, "symlink", link), nil, link), denied)
		})

		t.Run("allowed path whose directory is swapped for a symlink", func(t *testing.T) {
			tool := l.path("app/bin/tool")
			copyFile(t, "/usr/bin/true", tool)
			copyFile(t, "/usr/bin/id", l.path("evil/tool"))
			cg := l.cgroup(t, "dirlink", tool)
			want(t, run(t, cg, nil, tool), ran) // the genuine file
			if err := os.RemoveAll(l.path("app/bin")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(l.path("evil"), l.path("app/bin")); err != nil {
				t.Fatal(err)
			}
			want(t, run(t, cg, nil, tool), denied)
		})

		t.Run("hard link of a disallowed binary at an allowed name, as root", func(t *testing.T) {
			evil, linked := filepath.Join(l.writable, "evil"), filepath.Join(l.writable, "linked")
			copyFile(t, "/usr/bin/id", evil)
			cg := l.cgroup(t, "hardlink-root", linked)
			want(t, run(t, cg, nil, evil), denied)
			if err := os.Link(evil, linked); err != nil {
				t.Fatal(err)
			}
			want(t, run(t, cg, nil, linked, "-u"), ran) // documented: identity is the path
		})

		t.Run("hard link of a root-owned binary at an allowed name, as nobody", func(t *testing.T) {
			linked := filepath.Join(l.writable, "linked-by-nobody")
			cg := l.cgroup(t, "hardlink-nobody", linked)
			expect := blocked // fs.protected_hardlinks, or EXDEV across filesystems
			if sysctl(t, "fs/protected_hardlinks") == "0" && sameFilesystem(t, "/usr/bin/id", l.writable) {
				expect = ran
			}
			want(t, l.attack(t, cg, nobody, "link-exec", "/usr/bin/id", linked, linked), expect)
		})

		t.Run("copy of a disallowed binary to an allowed path in a writable directory, as nobody", func(t *testing.T) {
			copied := filepath.Join(l.writable, "copied")
			cg := l.cgroup(t, "copy", copied)
			want(t, l.attack(t, cg, nobody, "copy-exec", "/usr/bin/id", copied, copied, "-u"), ran) // documented
		})

		t.Run("memfd through /proc/self/fd", func(t *testing.T) {
			cg := l.cgroup(t, "memfd-fd", "/usr/bin/true")
			mfd, err := unix.MemfdCreate("true", 0)
			if err != nil {
				t.Fatal(err)
			}
			f := os.NewFile(uintptr(mfd), "memfd")
			defer f.Close()
			b, err := os.ReadFile("/usr/bin/id")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(b); err != nil {
				t.Fatal(err)
			}
			cmd, done, err := cg.Command("/proc/self/fd/3")
			if err != nil {
				t.Fatal(err)
			}
			defer done()
			cmd.ExtraFiles = []*os.File{f}
			want(t, classify(cmd.CombinedOutput()), denied)
		})

		t.Run("memfd through execveat(AT_EMPTY_PATH), as nobody", func(t *testing.T) {
			cg := l.cgroup(t, "memfd-execveat", "/usr/bin/true")
			want(t, l.attack(t, cg, nobody, "memfd-execveat", "/usr/bin/id"), denied)
		})

		t.Run("execveat(AT_EMPTY_PATH) of an O_PATH descriptor, as nobody", func(t *testing.T) {
			cg := l.cgroup(t, "opath-execveat", "/usr/bin/true")
			want(t, l.attack(t, cg, nobody, "opath-execveat", "/usr/bin/id"), denied)
		})

		t.Run("allowed file deleted while open, run through /proc/self/fd", func(t *testing.T) {
			del := filepath.Join(l.writable, "deleted")
			copyFile(t, "/usr/bin/true", del)
			cg := l.cgroup(t, "deleted", del)
			f, err := os.Open(del)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := os.Remove(del); err != nil {
				t.Fatal(err)
			}
			cmd, done, err := cg.Command("/proc/self/fd/3")
			if err != nil {
				t.Fatal(err)
			}
			defer done()
			cmd.ExtraFiles = []*os.File{f}
			want(t, classify(cmd.CombinedOutput()), denied) // fails closed: no trustworthy name
		})

		loader := canonical(t, elfInterpreter(t, "/usr/bin/true"))
		t.Run("dynamic loader invoked directly", func(t *testing.T) {
			cg := l.cgroup(t, "ldso", "/usr/bin/true")
			want(t, run(t, cg, nil, loader, "/usr/bin/true"), denied) // even for an allowed program
			want(t, run(t, cg, nil, loader, "/usr/bin/id"), denied)
		})

		t.Run("dynamic loader cannot be allowed", func(t *testing.T) {
			for _, p := range []string{loader, elfInterpreter(t, "/usr/bin/true"), filepath.Dir(loader) + "/"} {
				_, err := l.e.PutPolicy(PolicyVersion{Key: "escape/ldso-allowed", Version: 1, Mode: ModeProtect, Containers: map[string]Rules{"app": {Paths: []string{p}}}})
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "dynamic loader") {
					t.Fatalf("PutPolicy(%q) = %v, want ErrInvalid naming the dynamic loader", p, err)
				}
			}
		})

		t.Run("copy of the dynamic loader at an allowed path in a writable directory, as nobody", func(t *testing.T) {
			renamed := filepath.Join(l.writable, "launcher")
			cg := l.cgroup(t, "ldso-copy", renamed)
			want(t, l.attack(t, cg, nobody, "copy-exec", loader, renamed, renamed, "/usr/bin/id", "-u"), ran) // documented
		})

		t.Run("move to an unenforced cgroup, as root", func(t *testing.T) {
			cg := l.cgroup(t, "move-root")
			free := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-escape-free-%d", time.Now().UnixNano()))
			want(t, l.attack(t, cg, 0, "move-exec", free.Path, "/usr/bin/id", "-u"), ran) // documented: needs write access to cgroupfs
		})

		t.Run("move to an unenforced cgroup, as nobody", func(t *testing.T) {
			cg := l.cgroup(t, "move-nobody")
			free := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-escape-free-%d", time.Now().UnixNano()))
			want(t, l.attack(t, cg, nobody, "move-exec", free.Path, "/usr/bin/id", "-u"), blocked)
		})

		for _, depth := range []string{"15", "16", "70"} { // 70: deeper than MAX_LEVELS (64) below the binding
			t.Run("move "+depth+" cgroups below the bound one, as root", func(t *testing.T) {
				cg := l.cgroup(t, "nest-"+depth)
				want(t, l.attack(t, cg, 0, "nest-exec", cg.Path, depth, "/usr/bin/id", "-u"), denied)
			})
		}

		root := l.path("chroot")
		chrootWith(t, root, "/usr/bin/true", "/usr/bin/id")
		t.Run("chroot into a tree with a disallowed binary at an allowed path, as root", func(t *testing.T) {
			cg := l.cgroup(t, "chroot", "/usr/bin/true")
			want(t, run(t, cg, nil, root+"/usr/bin/true"), denied)                                         // the same file outside the chroot
			want(t, run(t, cg, func(a *syscall.SysProcAttr) { a.Chroot = root }, "/usr/bin/true"), denied) // named from the namespace's root
		})

		t.Run("user namespace and chroot, as nobody", func(t *testing.T) {
			requireUserNamespaces(t)
			cg := l.cgroup(t, "userns-chroot", "/usr/bin/true")
			want(t, l.attack(t, cg, nobody, "userns-chroot-exec", root, "/usr/bin/true"), denied)
		})

		t.Run("mount namespace and a bind mount over an allowed path, as root", func(t *testing.T) {
			tool, evil := l.path("mntns/bin/tool"), filepath.Join(l.writable, "evil-tool")
			copyFile(t, "/usr/bin/true", tool)
			copyFile(t, "/usr/bin/id", evil)
			cg := l.cgroup(t, "mntns-bind", tool)
			want(t, run(t, cg, nil, tool), ran) // the genuine file, from the container's namespace
			want(t, l.attack(t, cg, 0, "unshare-bind-exec", evil, tool, tool, "-u"), denied)
		})

		t.Run("user and mount namespace, bind mount over an allowed path, as nobody", func(t *testing.T) {
			requireUserNamespaces(t)
			tool, evil := l.path("userns-mntns/bin/tool"), filepath.Join(l.writable, "evil-tool-nobody")
			copyFile(t, "/usr/bin/true", tool)
			copyFile(t, "/usr/bin/id", evil)
			cg := l.cgroup(t, "userns-mntns", tool)
			// The attacker re-executes itself in the new namespaces to mount, and that
			// exec is refused: nothing runs from a namespace the container was not in.
			want(t, l.attack(t, cg, nobody, "userns-mntns-bind-exec", evil, tool, tool, "-u"), denied)
		})

		t.Run("allowed path of another mount namespace, through /proc/PID/root", func(t *testing.T) {
			other := otherMountNamespace(t)
			cg := l.cgroup(t, "proc-root", "/usr/bin/true")
			want(t, run(t, cg, nil, fmt.Sprintf("/proc/%d/root/usr/bin/true", other)), denied)
		})

		sh := canonical(t, "/bin/sh")
		t.Run("script not listed, its interpreter listed", func(t *testing.T) {
			script := l.path("scripts/any.sh")
			writeExecutable(t, script, "#!/bin/sh\necho script-ran\n")
			cg := l.cgroup(t, "script-interp", sh)
			if checksScript {
				want(t, run(t, cg, nil, script), denied) // the script is the executable checked
			} else {
				want(t, run(t, cg, nil, script), ran) // documented: exec_kill checks the interpreter
			}
		})

		t.Run("script listed, its interpreter not listed", func(t *testing.T) {
			script := l.path("scripts/listed.sh")
			writeExecutable(t, script, "#!/usr/bin/id\n")
			cg := l.cgroup(t, "script-listed", script)
			if checksInterpreter {
				want(t, run(t, cg, nil, script), denied)
			} else {
				want(t, run(t, cg, nil, script), ran) // documented: lsm/fmod_ret check the script only
			}
		})
	})
}

// TestEscapeHelperProcess is the attacker: it does nothing unless started by
// escapeLab.attack, then performs EXECGATE_ESCAPE_ATTACK and prints one RESULT line.
func TestEscapeHelperProcess(t *testing.T) {
	attack := os.Getenv("EXECGATE_ESCAPE_ATTACK")
	if attack == "" {
		return
	}
	args := strings.Split(os.Getenv("EXECGATE_ESCAPE_ARGS"), "\x1f")
	report := func(o outcome) {
		fmt.Printf("\nRESULT %s %s\n", o.kind, strings.ReplaceAll(o.detail, "\n", " | "))
		os.Exit(0)
	}
	step := func(what string, err error) {
		if err != nil {
			report(outcome{blocked, what + ": " + err.Error()})
		}
	}
	execute := func(argv []string, attr *syscall.SysProcAttr) {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.SysProcAttr = attr
		report(classify(cmd.CombinedOutput()))
	}
	switch attack {
	case "link-exec": // src, dst, argv...
		step("link", os.Link(args[0], args[1]))
		execute(args[2:], nil)
	case "copy-exec": // src, dst, argv...
		step("copy", copyAs(args[0], args[1]))
		execute(args[2:], nil)
	case "move-exec": // cgroup dir, argv...
		step("write cgroup.procs", os.WriteFile(filepath.Join(args[0], "cgroup.procs"), []byte("0"), 0))
		execute(args[1:], nil)
	case "nest-exec": // bound cgroup dir, depth, argv...
		depth, _ := strconv.Atoi(args[1])
		dir := args[0]
		for i := range depth {
			dir = filepath.Join(dir, fmt.Sprintf("n%d", i+1))
			step("mkdir", os.Mkdir(dir, 0o755))
		}
		step("write cgroup.procs", os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte("0"), 0))
		execute(args[2:], nil)
	case "memfd-execveat": // src
		fd, err := unix.MemfdCreate("true", 0)
		step("memfd_create", err)
		b, err := os.ReadFile(args[0])
		step("read", err)
		_, err = unix.Write(fd, b)
		step("write", err)
		report(outcome{denied, "execveat: " + execveatEmptyPath(fd, args[0]).Error()})
	case "opath-execveat": // path
		fd, err := unix.Open(args[0], unix.O_PATH|unix.O_CLOEXEC, 0)
		step("open O_PATH", err)
		report(outcome{denied, "execveat: " + execveatEmptyPath(fd, args[0]).Error()})
	case "userns-chroot-exec": // root, argv...
		execute(args[1:], &syscall.SysProcAttr{
			Cloneflags:  syscall.CLONE_NEWUSER,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
			Chroot:      args[0],
		})
	case "unshare-bind-exec": // src, dst, argv...: unshare(CLONE_NEWNS) in place, no exec before the mount
		runtime.LockOSThread() // the mount namespace is this thread's; the child is forked from it
		step("unshare mount namespace", unix.Unshare(unix.CLONE_NEWNS))
		bindMountExec(args[0], args[1], args[2:], execute)
	case "userns-mntns-bind-exec": // src, dst, argv...: as `unshare -Urm`, the mounting program runs in the new namespaces
		self, err := os.Executable()
		step("executable", err)
		cmd := exec.Command(self, "-test.run=^TestEscapeHelperProcess$")
		cmd.Env = append(os.Environ(), "EXECGATE_ESCAPE_ATTACK=bind-exec")
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		}
		out, err := cmd.CombinedOutput()
		if i := bytes.LastIndex(out, []byte("RESULT ")); i >= 0 { // the inner stage ran and reported
			fmt.Printf("\n%s", out[i:])
			os.Exit(0)
		}
		report(classify(out, err))
	case "bind-exec": // src, dst, argv...: already in a mount namespace of its own
		bindMountExec(args[0], args[1], args[2:], execute)
	}
	report(outcome{"error", "unknown attack " + attack})
}

// bindMountExec mounts src over dst, privately, and runs argv.
func bindMountExec(src, dst string, argv []string, execute func([]string, *syscall.SysProcAttr)) {
	report := func(what string, err error) {
		fmt.Printf("\nRESULT %s %s: %v\n", blocked, what, err)
		os.Exit(0)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		report("make mounts private", err)
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		report("bind mount", err)
	}
	execute(argv, nil)
}

// otherMountNamespace starts a process (outside every bound cgroup) in a mount namespace
// of its own and returns its pid: its /proc/PID/root is that namespace's tree.
func otherMountNamespace(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("/usr/bin/sleep", "120")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", cmd.Process.Pid)); err == nil && ns != self {
			return cmd.Process.Pid
		}
	}
	t.Fatal("the process never showed a mount namespace of its own")
	return 0
}

func requireUserNamespaces(t *testing.T) {
	t.Helper()
	if sysctl(t, "user/max_user_namespaces") == "0" {
		t.Fatal("user namespaces are disabled on this machine: update docs/threat-model.md")
	}
}

// execveatEmptyPath replaces the process with the file behind fd; it returns only on error.
func execveatEmptyPath(fd int, name string) error {
	empty, err := syscall.BytePtrFromString("")
	if err != nil {
		return err
	}
	argv, err := syscall.SlicePtrFromStrings([]string{name, "-u"})
	if err != nil {
		return err
	}
	envv, err := syscall.SlicePtrFromStrings(os.Environ())
	if err != nil {
		return err
	}
	_, _, errno := unix.Syscall6(unix.SYS_EXECVEAT, uintptr(fd), uintptr(unsafe.Pointer(empty)),
		uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&envv[0])), unix.AT_EMPTY_PATH, 0)
	return errno
}

// copyAs copies src to dst as the current user, executable.
func copyAs(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func writeExecutable(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}

// elfInterpreter returns the PT_INTERP of an executable: the dynamic loader's path.
func elfInterpreter(t *testing.T, path string) string {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				t.Fatal(err)
			}
			return strings.TrimRight(string(b), "\x00")
		}
	}
	t.Fatalf("%s has no PT_INTERP", path)
	return ""
}

// chrootWith builds a tree at root in which dst is a copy of src, with the loader and
// libraries src needs (from ldd) at the paths it looks for them.
func chrootWith(t *testing.T, root, dst, src string) {
	t.Helper()
	copyFile(t, src, filepath.Join(root, dst))
	out, err := exec.Command("ldd", src).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", src, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		for _, field := range strings.Fields(sc.Text()) {
			if strings.HasPrefix(field, "/") {
				copyFile(t, canonical(t, field), filepath.Join(root, field))
			}
		}
	}
}

func sysctl(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func sameFilesystem(t *testing.T, a, b string) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev
}
