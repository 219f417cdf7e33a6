package enforcer

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf"
	"github.com/execgate/execgate/bpf"
	"github.com/execgate/execgate/internal/testenv"
)

// TestRuntimeReexec: the container runtime re-executing itself in a bound
// cgroup runs (runc init's clone of its binary, before the container
// exists); nothing else gets through that door. The "runtime" is a copy of
// this test binary registered with SetRuntimeFiles; like runc init it starts
// outside the cgroup and moves itself in. The policy allows only the
// attacker, never the runtime.
func TestRuntimeReexec(t *testing.T) {
	forEachAttachMode(t, func(t *testing.T, mode AttachMode) {
		e := newTestEnforcer(t, mode)
		l := newEscapeLab(t, e)
		rt := l.path("runc")
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		copyFile(t, self, rt)
		id, err := KernelFileID(rt)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.SetRuntimeFiles([]FileID{id}); err != nil {
			t.Fatal(err)
		}
		other := l.path("entrypoint")
		copyFile(t, "/usr/bin/id", other)

		// step runs the runtime helper: it joins cg, then does what step says.
		step := func(t *testing.T, what string) outcome {
			t.Helper()
			cg := l.cgroup(t, strings.ReplaceAll(what, " ", "-"))
			cmd := exec.Command(rt, "-test.run=^TestRuntimeHelperProcess$")
			cmd.Env = append(os.Environ(), "EXECGATE_RUNTIME_STEP="+what, "EXECGATE_RUNTIME_CGROUP="+cg.Path,
				"EXECGATE_RUNTIME_OTHER="+other)
			out, err := cmd.CombinedOutput()
			if i := strings.LastIndex(string(out), "RESULT "); i >= 0 {
				kind, detail, _ := strings.Cut(strings.TrimSpace(string(out[i+len("RESULT "):])), " ")
				return outcome{kind, detail}
			}
			return classify(out, err)
		}
		t.Run("runtime execs its own file", func(t *testing.T) { want(t, step(t, "self"), ran) })
		t.Run("runtime execs a detached bind mount of its file", func(t *testing.T) { want(t, step(t, "clone"), ran) })
		t.Run("runtime execs a memfd copy of itself", func(t *testing.T) { want(t, step(t, "memfd"), ran) })
		// crun's case, and runc's last step: the entrypoint is the workload's.
		t.Run("runtime execs another file", func(t *testing.T) { want(t, step(t, "other"), denied) })
		// kubectl exec: runc init has entered the container's mount namespace.
		t.Run("runtime execs itself from another mount namespace", func(t *testing.T) { want(t, step(t, "newns self"), denied) })
		t.Run("runtime execs a memfd copy from another mount namespace", func(t *testing.T) { want(t, step(t, "newns memfd"), denied) })
		t.Run("runtime execs a detached mount from another mount namespace", func(t *testing.T) { want(t, step(t, "newns clone"), denied) })
		t.Run("a memfd copy of the runtime, not run by it", func(t *testing.T) {
			cg := l.cgroup(t, "memfd-attacker")
			want(t, l.attack(t, cg, 0, "memfd-execveat", rt), denied)
		})
		// exec_kill decides after the exec: the task already runs the file, so
		// a process of the runtime's mount namespace may start the runtime's
		// own file (documented: a container never is in that namespace).
		t.Run("the runtime's file, run by the workload", func(t *testing.T) {
			expect := denied
			if mode == AttachExecKill {
				expect = ran
			}
			want(t, run(t, l.cgroup(t, "workload-runs-runtime"), nil, rt, "-test.run=^$"), expect)
		})
		t.Run("no runtime registered", func(t *testing.T) {
			if err := e.SetRuntimeFiles(nil); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = e.SetRuntimeFiles([]FileID{id}) })
			if got, err := e.RuntimeFiles(); err != nil || len(got) != 0 {
				t.Fatalf("runtime files %v, %v; want none", got, err)
			}
			want(t, step(t, "self"), denied)
		})
		if st, err := e.Stats(); err != nil || st.Counters["runtime"] == 0 {
			t.Fatalf("runtime counter %d (%v), want > 0", st.Counters["runtime"], err)
		}
	})
}

// TestRuntimeHelperProcess is the runtime of TestRuntimeReexec: it does
// nothing unless started by it, then moves into EXECGATE_RUNTIME_CGROUP and
// runs one exec as EXECGATE_RUNTIME_STEP says, and prints one RESULT line.
func TestRuntimeHelperProcess(t *testing.T) {
	what := os.Getenv("EXECGATE_RUNTIME_STEP")
	if what == "" {
		return
	}
	report := func(o outcome) {
		fmt.Printf("\nRESULT %s %s\n", o.kind, strings.ReplaceAll(o.detail, "\n", " | "))
		os.Exit(0)
	}
	fail := func(step string, err error) {
		if err != nil {
			report(outcome{"error", step + ": " + err.Error()})
		}
	}
	self, err := os.Executable()
	fail("executable", err)
	runtime.LockOSThread() // a new mount namespace is this thread's; children fork from it
	if ns, ok := strings.CutPrefix(what, "newns "); ok {
		fail("unshare mount namespace", unix.Unshare(unix.CLONE_NEWNS))
		fail("make mounts private", unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""))
		what = ns
	}
	fail("join cgroup", os.WriteFile(filepath.Join(os.Getenv("EXECGATE_RUNTIME_CGROUP"), "cgroup.procs"), []byte("0"), 0))
	var cmd *exec.Cmd
	switch what {
	case "self":
		cmd = exec.Command(self, "-test.run=^$")
	case "other":
		cmd = exec.Command(os.Getenv("EXECGATE_RUNTIME_OTHER"), "-u")
	case "clone": // runc's: open_tree(OPEN_TREE_CLONE), read-only, exec through the fd
		fd, err := unix.OpenTree(unix.AT_FDCWD, self, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		fail("open_tree", err)
		cmd = exec.Command("/proc/self/fd/3", "-test.run=^$")
		cmd.ExtraFiles = []*os.File{os.NewFile(uintptr(fd), "clone")}
	case "memfd": // runc's fallback: a sealed memfd copy
		fd, err := unix.MemfdCreate("runc_cloned:/proc/self/exe", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		fail("memfd_create", err)
		mem := os.NewFile(uintptr(fd), "memfd")
		in, err := os.Open(self)
		fail("open self", err)
		_, err = io.Copy(mem, in)
		fail("copy", err)
		_, err = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SEAL|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE)
		fail("seal", err)
		cmd = exec.Command("/proc/self/fd/3", "-test.run=^$")
		cmd.ExtraFiles = []*os.File{mem}
	default:
		report(outcome{"error", "unknown step " + what})
	}
	report(classify(cmd.CombinedOutput()))
}

// TestSandboxPathsInUnionOnly: the sandbox's executable is allowed where the
// pod-level (union) slot applies, the sandbox's cgroup before any container
// of the pod is known, and in no container's own slot.
func TestSandboxPathsInUnionOnly(t *testing.T) {
	forEachAttachMode(t, func(t *testing.T, mode AttachMode) {
		dir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("execgate-test-sandbox-%s-%d", mode, os.Getpid()))
		lab := t.TempDir()
		if err := os.Chmod(lab, 0o755); err != nil {
			t.Fatal(err)
		}
		lab = canonical(t, lab)
		pause := filepath.Join(lab, "pause")
		copyFile(t, "/usr/bin/true", pause)
		e, err := New(Config{PinDir: dir, Attach: mode, SandboxPaths: []string{pause}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close(); _ = Cleanup(dir) })
		key := PolicyKey("sandbox/" + string(mode))
		if _, err := e.PutPolicy(PolicyVersion{Key: key, Version: 1, Mode: ModeProtect,
			Containers: map[string]Rules{"app": {Paths: []string{"/usr/bin/id"}}}}); err != nil {
			t.Fatal(err)
		}
		pod := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-sandbox-pod-%d", time.Now().UnixNano()))
		ctr := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-sandbox-ctr-%d", time.Now().UnixNano()))
		if err := e.Bind(pod.ID, key, UnionContainer); err != nil {
			t.Fatal(err)
		}
		if err := e.Bind(ctr.ID, key, "app"); err != nil {
			t.Fatal(err)
		}
		want(t, run(t, pod, nil, pause), ran)
		want(t, run(t, ctr, nil, pause), denied)
		want(t, run(t, ctr, nil, "/usr/bin/id", "-u"), ran)
	})
}

// TestOlderPinnedCountersReplaced: a pinned counters map of an older layout
// (one counter fewer, as before STAT_RUNTIME) is replaced at load, not a
// reason to refuse to start; state maps are kept.
func TestOlderPinnedCountersReplaced(t *testing.T) {
	testenv.RequireBPF(t)
	dir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("execgate-test-oldstats-%d", os.Getpid()))
	if err := EnsureBPFFS(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Cleanup(dir) })
	spec, err := bpf.LoadExecgate()
	if err != nil {
		t.Fatal(err)
	}
	old := spec.Maps[bpf.ExecgateMapStats].Copy()
	old.ValueSize -= 8
	old.Pinning = ebpf.PinNone
	m, err := ebpf.NewMap(old)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Pin(filepath.Join(dir, bpf.ExecgateMapStats)); err != nil {
		t.Fatal(err)
	}
	m.Close()
	e, err := New(Config{PinDir: dir, Attach: AttachExecKill})
	if err != nil {
		t.Fatalf("an older counters layout stopped the load: %v", err)
	}
	defer e.Close()
	if _, err := e.Stats(); err != nil {
		t.Fatalf("counters after the replacement: %v", err)
	}
}
