package agent

import (
	"context"
	"debug/elf"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/tools/events"

	"github.com/execgate/execgate/internal/execpath"
	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/internal/testloaders"
	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/enforcer"
	"github.com/execgate/execgate/nodeagent/podpolicy"
)

// loaderLab is the files of the loader tests: real loaders of three C libraries at
// paths no list of loader names knows, and a directory for a prefix rule that holds one.
type loaderLab struct {
	set      testloaders.Set
	launcher string // a copy of this machine's glibc 2.36 loader, named "launcher"
	glibc231 string // Debian 11's ld-2.31.so, as installed
	musl     string // Debian 12's musl libc.so, as installed (ld-musl-x86_64.so.1 links to it)
	prefix   string // a prefix rule: tool (a copy of true) and libexec/ld.so.real (ld-2.31.so)
}

func newLoaderLab(t *testing.T) *loaderLab {
	t.Helper()
	set := testloaders.Fetch(t)
	dir := realPath(t, t.TempDir())
	l := &loaderLab{set: set, launcher: filepath.Join(dir, "launcher"), glibc231: realPath(t, set.Glibc231),
		musl: realPath(t, set.Musl123), prefix: filepath.Join(dir, "app") + "/"}
	copyExecutable(t, testloaders.HostGlibc, l.launcher)
	copyExecutable(t, "/usr/bin/true", l.prefix+"tool")
	copyExecutable(t, set.Glibc231, l.prefix+"libexec/ld.so.real")
	return l
}

func copyExecutable(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// attacks are "run the loader on something": each prints a banner only the loader (or
// the program it maps) prints, so an attack that ran is told from one that was denied.
func (l *loaderLab) attacks() []struct {
	name, banner string
	argv         []string
} {
	return []struct {
		name, banner string
		argv         []string
	}{
		{"glibc 2.36 loader as launcher runs /usr/bin/id", "uid=", []string{l.launcher, "/usr/bin/id"}},
		{"glibc 2.31 ld-2.31.so runs libc.so.6, never exec'd", "GNU C Library", []string{l.glibc231, "--library-path", l.set.Glibc231Lib, filepath.Join(l.set.Glibc231Lib, "libc.so.6")}},
		{"musl libc.so runs as the loader", "musl libc", []string{l.musl}},
		{"ld-2.31.so below a prefix rule runs libc.so.6", "GNU C Library", []string{l.prefix + "libexec/ld.so.real", "--library-path", l.set.Glibc231Lib, filepath.Join(l.set.Glibc231Lib, "libc.so.6")}},
	}
}

// ranAs reports whether an exec that printed out with err was allowed to run: it was
// not refused with EPERM nor killed by SIGKILL, and printed what only it prints.
func ranAs(out string, err error, banner string) bool {
	if errors.Is(err, syscall.EPERM) {
		return false
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && exitErr.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL {
		return false
	}
	return strings.Contains(out, banner)
}

// TestLoaderAllowedByPolicyRefused is issue 14's attack 3: a Protect policy allows a
// dynamic loader under a name the name list does not know (glibc 2.31's ld-2.31.so,
// which Learn used to record because ldd runs it; musl's libc.so; this machine's loader
// copied as "launcher"; a loader below a prefix rule), and "loader /any/file" runs any
// file. Before the fix all four attacks ran. The agent must find the loaders by content
// in the container's root and refuse them: each exec is denied, the programs the policy
// allows still run, execgate_agent_loaders_total counts each refusal.
func TestLoaderAllowedByPolicyRefused(t *testing.T) {
	// The best mode this kernel attaches (fanotify here: EPERM), and exec_kill, which
	// every kernel attaches (SIGKILL before the loader's first instruction).
	for _, mode := range []enforcer.AttachMode{enforcer.AttachAuto, enforcer.AttachExecKill} {
		t.Run(string(mode), func(t *testing.T) { testLoaderAllowedByPolicyRefused(t, mode) })
	}
}

func testLoaderAllowedByPolicyRefused(t *testing.T, mode enforcer.AttachMode) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	l := newLoaderLab(t)
	e, err := enforcer.New(enforcer.Config{PinDir: n.pinDir, Attach: mode, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatalf("enforcer in mode %s: %v", mode, err)
	}
	t.Cleanup(func() { e.Close() })
	reg := prometheus.NewRegistry()
	a := n.startAgent(t, e, func(o *Options) { o.Registry = reg; o.LoaderCheckInterval = 50 * time.Millisecond })
	// The backstop's recorder, as runBackstop installs it (no API server here).
	rec := events.NewFakeRecorder(16)
	a.events.Store(&eventSink{rec})
	uid, cid := podUID(70), containerID(70)
	_, ctr := n.mkPod(t, uid, cgroups.QoSBurstable, cid)
	// The container's main process: the agent reads the container's root through it.
	startIn(t, ctr, "/usr/bin/sleep", "300")
	pol := podpolicy.Policy{UID: "policy-uid-loader", Namespace: "ns", Name: "web", Version: 1, Mode: podpolicy.ModeProtect,
		RulesByContainer: map[string][]string{"app": {"/usr/bin/echo", "/usr/bin/sleep", l.launcher, l.glibc231, l.musl, l.prefix}}}
	pp := podPolicy(uid, cgroups.QoSBurstable, pol, podpolicy.Container{Name: "app", ContainerID: "containerd://" + cid})
	if _, _, err := a.ApplyPodPolicy(context.Background(), pp); err != nil {
		t.Fatal(err)
	}
	if b, ok := bindingOf(e, ctr.ID); !ok || b.Container != "app" {
		t.Fatalf("container binding: %+v %v", b, ok)
	}
	refused := func() float64 {
		return counterValue(t, reg, "execgate_agent_loaders_total", map[string]string{"namespace": "ns", "policy": "ns/web", "result": "refused"})
	}
	// The inspection starts with the binding; give it time, then attack whatever the
	// metric says: the attacks decide.
	for deadline := time.Now().Add(5 * time.Second); refused() < 4 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	for _, at := range l.attacks() {
		out, err := ctr.Run(at.argv[0], at.argv[1:]...)
		if ranAs(out, err, at.banner) {
			t.Errorf("%s: the loader ran in a Protect container (%q, %v)", at.name, out, err)
			continue
		}
		assertDenied(t, e.AttachMode(), out, err)
	}
	if out, err := ctr.Run("/usr/bin/echo", "hello"); err != nil || out != "hello\n" {
		t.Errorf("allowed program after the refusals: %q %v", out, err)
	}
	// A prefix rule is refused whole (fail closed): its other programs are denied too.
	out, err := ctr.Run(l.prefix + "tool")
	if err == nil {
		t.Errorf("a program below the refused prefix rule ran: %q", out)
	}
	if got := refused(); got != 4 {
		t.Errorf("execgate_agent_loaders_total{result=refused} = %v, want 4 (three paths, one prefix rule)", got)
	}
	var notes []string
	for len(rec.Events) > 0 {
		notes = append(notes, <-rec.Events)
	}
	for _, path := range []string{l.launcher, l.glibc231, l.musl, l.prefix} {
		found := false
		for _, note := range notes {
			found = found || (strings.HasPrefix(note, "Warning "+ReasonLoaderRefused+" ") && strings.Contains(note, execpath.Quote(path)))
		}
		if !found {
			t.Errorf("no Warning %s Event names %s: %q", ReasonLoaderRefused, path, notes)
		}
	}
	// A later version of the policy keeps them out.
	pol.Version = 2
	if _, _, err := a.ApplyPodPolicy(context.Background(), podPolicy(uid, cgroups.QoSBurstable, pol,
		podpolicy.Container{Name: "app", ContainerID: "containerd://" + cid})); err != nil {
		t.Fatal(err)
	}
	if v, _ := e.PolicyVersionOf("ns/web"); v != 2 {
		t.Fatalf("policy version %d loaded, want 2", v)
	}
	out, err = ctr.Run(l.launcher, "/usr/bin/id")
	if ranAs(out, err, "uid=") {
		t.Errorf("version 2 allowed the refused loader again: %q", out)
	}
	if got := refused(); got != 4 {
		t.Errorf("after version 2: %v refusals, want still 4 (each path is refused once)", got)
	}
}

// TestLoaderNeverLearned: a Learn container that runs loaders directly (as ldd does:
// "ld-2.31.so --verify prog"), and one whose running process is a loader, must not
// have them proposed: they would allow everything once promoted. Before the fix every
// one was published.
func TestLoaderNeverLearned(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	l := newLoaderLab(t)
	e := n.newEnforcer(t)
	reg := prometheus.NewRegistry()
	a := n.startAgent(t, e, func(o *Options) { o.Registry = reg })
	ch := subscribeLearn(t, a.Agent)
	uid, cid := podUID(71), containerID(71)
	_, ctr := n.mkPod(t, uid, cgroups.QoSBurstable, cid)
	startIn(t, ctr, "/usr/bin/sleep", "300")
	// Found by the scan when the cgroup is bound: /proc/<pid>/exe is the loader.
	startIn(t, ctr, l.launcher, "/usr/bin/sleep", "300")
	pp := podPolicy(uid, cgroups.QoSBurstable, learnPolicy(), podpolicy.Container{Name: "app", ContainerID: "containerd://" + cid})
	if _, _, err := a.ApplyPodPolicy(context.Background(), pp); err != nil {
		t.Fatal(err)
	}
	script := strings.Join([]string{
		l.glibc231 + " --help", l.launcher + " --help", l.musl, l.prefix + "libexec/ld.so.real --help", "/usr/bin/true",
	}, " >/dev/null 2>&1; ")
	if out, err := ctr.Run("/bin/sh", "-c", script); err != nil {
		t.Fatalf("run in learning container: %v: %s", err, out)
	}
	got := learnt(collectLearn(t, ch, 3, time.Second))
	want := []string{"app " + realPath(t, "/bin/sh"), "app " + realPath(t, "/usr/bin/true"), "app " + realPath(t, "/usr/bin/sleep")}
	slices.Sort(want)
	if !slices.Equal(slices.Compact(got), want) {
		t.Errorf("learnt %v, want exactly %v (no loader)", got, want)
	}
	dropped := counterValue(t, reg, "execgate_agent_loaders_total", map[string]string{"result": "learn_dropped"})
	if dropped < 4 {
		t.Errorf("execgate_agent_loaders_total{result=learn_dropped} = %v, want at least 4 (the four execs of a loader)", dropped)
	}
}

// TestLoaderInspectRoot: what one container root's inspection refuses, on a root built
// from minimal ELF files. A file is refused as a loader by its content, or because an
// allowed program names it as its interpreter (PT_INTERP, through a link as the kernel
// follows it) even when its content looks like a static-pie program; a prefix rule is
// refused when a loader is below it. Before the identity rule, the disguised
// interpreter was allowed.
func TestLoaderInspectRoot(t *testing.T) {
	pie := [][2]uint64{{uint64(elf.DT_FLAGS_1), 0x08000000}} // DF_1_PIE
	root := t.TempDir()
	files := map[string][]byte{
		"usr/bin/prog":   testloaders.ELF(elf.ET_DYN, "/lib64/ld", pie),
		"lib/x/weird-ld": testloaders.ELF(elf.ET_DYN, "", pie), // a loader posing as static-pie
		"usr/bin/static": testloaders.ELF(elf.ET_DYN, "", pie),
		"opt/loader":     testloaders.ELF(elf.ET_DYN, "", nil),
		"opt/app/bin/ok": testloaders.ELF(elf.ET_DYN, "/lib64/ld", pie),
		"opt/app/sub/ld": testloaders.ELF(elf.ET_DYN, "", nil),
		"opt/ok/static":  testloaders.ELF(elf.ET_DYN, "", pie),
		"usr/bin/script": []byte("#!/bin/sh\n"),
	}
	for name, data := range files {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, name), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "lib64"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/lib/x/weird-ld", filepath.Join(root, "lib64/ld")); err != nil {
		t.Fatal(err)
	}
	dir, err := os.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	a := &Agent{log: zaptest.NewLogger(t)}
	a.loaders.init()
	j := &loaderJob{key: "ns/web", exact: []string{"/lib/x/weird-ld", "/lib64/ld", "/opt/loader", "/usr/bin/prog", "/usr/bin/script", "/usr/bin/static"},
		prefixes: []string{"/opt/app/", "/opt/ok/"}}
	var findings []loaderFinding
	a.inspectRoot(j, dir, &findings)
	got := map[string]string{}
	for _, f := range findings {
		got[f.path] = f.reason
	}
	want := map[string]string{
		"/lib/x/weird-ld": `interpreter (PT_INTERP) of the allowed program "/usr/bin/prog"`,
		"/opt/loader":     "runs without an interpreter",
		"/opt/app/":       `covers "/opt/app/sub/ld"`,
	}
	for path, reason := range want {
		if !strings.Contains(got[path], reason) {
			t.Errorf("%s: refused as %q, want a reason containing %q", path, got[path], reason)
		}
	}
	for path := range got {
		if _, ok := want[path]; !ok {
			t.Errorf("%s refused (%s); only %v should be", path, got[path], slices.Sorted(maps.Keys(want)))
		}
	}
}

// container is a process tree in a mount namespace of its own whose root is rootfs
// (pivot_root, as runc does), running a shell loop that runs each command written to
// /ctl and reports its output in /out: the agent must read files through the
// container's root, and the kernel names them from it.
type container struct {
	rootfs string
	cmd    *exec.Cmd
}

// startContainer starts the container in cg (before any binding: nothing it runs is
// checked until then) and waits until its loop runs in the new root. binds maps host
// directories to mount read-only at paths of rootfs.
func startContainer(t *testing.T, cg *testenv.Cgroup, rootfs string, binds map[string]string) *container {
	t.Helper()
	for _, d := range []string{"usr", "old", "opt", "proc"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []string{"bin", "lib", "lib64", "sbin"} { // a merged-/usr image
		if err := os.Symlink("usr/"+l, filepath.Join(rootfs, l)); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"ctl", "done"} {
		if err := unix.Mkfifo(filepath.Join(rootfs, f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	script := []string{`set -e`, `mount --bind "$R" "$R"`, `mount --bind -o ro /usr "$R/usr"`}
	for host, in := range binds {
		if err := os.MkdirAll(filepath.Join(rootfs, in), 0o755); err != nil {
			t.Fatal(err)
		}
		script = append(script, `mount --bind -o ro '`+host+`' "$R/`+in+`"`)
	}
	script = append(script, `cd "$R"`, `pivot_root . old`, `mount -t proc proc /proc`, `umount -l /old`, `set +e`, `: > /ready`,
		`while :; do read -r cmd < /ctl; sh -c "$cmd" > /out 2>&1; echo "rc=$?" >> /out; echo > /done; done`)
	cmd, done, err := cg.Command("/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", strings.Join(script, "\n"))
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	cmd.Env = append(os.Environ(), "R="+rootfs)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitFor(t, "the container's loop in its own root", func() bool {
		_, err := os.Stat(filepath.Join(rootfs, "ready"))
		return err == nil || cmd.ProcessState != nil
	})
	if _, err := os.Stat(filepath.Join(rootfs, "ready")); err != nil {
		t.Fatalf("container did not start: %s", stderr.String())
	}
	return &container{rootfs: rootfs, cmd: cmd}
}

// exec runs a shell command in the container and returns its output and "rc=N".
func (c *container) exec(t *testing.T, command string) string {
	t.Helper()
	result := make(chan string, 1)
	go func() {
		if err := os.WriteFile(filepath.Join(c.rootfs, "ctl"), []byte(command+"\n"), 0); err != nil {
			result <- "write ctl: " + err.Error()
			return
		}
		if _, err := os.ReadFile(filepath.Join(c.rootfs, "done")); err != nil {
			result <- "read done: " + err.Error()
			return
		}
		out, _ := os.ReadFile(filepath.Join(c.rootfs, "out"))
		result <- string(out)
	}()
	select {
	case out := <-result:
		return out
	case <-time.After(10 * time.Second):
		t.Fatalf("the container did not run %q", command)
		return ""
	}
}

// TestLoaderInContainerRoot is the attack in a real container root: ld-2.31.so exists
// only in the container's image (at /opt/tools/ld-2.31.so, a path the node does not
// have), the container runs in its own mount namespace after pivot_root, and the policy
// allows the loader by that path. Before the fix the loader ran libc.so.6 in the Protect
// container; now the agent finds it through /proc/<pid>/root and the exec is denied.
func TestLoaderInContainerRoot(t *testing.T) {
	for _, mode := range []enforcer.AttachMode{enforcer.AttachAuto, enforcer.AttachExecKill} {
		t.Run(string(mode), func(t *testing.T) {
			n := newTestNodeEnv(t, cgroups.DriverSystemd)
			l := newLoaderLab(t)
			e, err := enforcer.New(enforcer.Config{PinDir: n.pinDir, Attach: mode, Logger: zaptest.NewLogger(t)})
			if err != nil {
				t.Fatalf("enforcer in mode %s: %v", mode, err)
			}
			t.Cleanup(func() { e.Close() })
			reg := prometheus.NewRegistry()
			a := n.startAgent(t, e, func(o *Options) { o.Registry = reg; o.LoaderCheckInterval = 50 * time.Millisecond })
			uid, cid := podUID(72), containerID(72)
			_, ctr := n.mkPod(t, uid, cgroups.QoSBurstable, cid)
			rootfs := filepath.Join(t.TempDir(), "rootfs")
			copyExecutable(t, l.set.Glibc231, filepath.Join(rootfs, "opt/tools/ld-2.31.so"))
			c := startContainer(t, ctr, rootfs, map[string]string{l.set.Glibc231Lib: "opt/glibc231"})
			if _, err := os.Stat("/opt/tools/ld-2.31.so"); err == nil {
				t.Fatal("/opt/tools/ld-2.31.so exists on the node: the test must show the container's root is read")
			}
			pol := podpolicy.Policy{UID: "policy-uid-ctr", Namespace: "ns", Name: "web", Version: 1, Mode: podpolicy.ModeProtect,
				RulesByContainer: map[string][]string{"app": {realPath(t, "/bin/sh"), "/opt/tools/ld-2.31.so"}}}
			pp := podPolicy(uid, cgroups.QoSBurstable, pol, podpolicy.Container{Name: "app", ContainerID: "containerd://" + cid})
			if _, _, err := a.ApplyPodPolicy(context.Background(), pp); err != nil {
				t.Fatal(err)
			}
			refused := func() float64 {
				return counterValue(t, reg, "execgate_agent_loaders_total", map[string]string{"policy": "ns/web", "result": "refused"})
			}
			for deadline := time.Now().Add(5 * time.Second); refused() < 1 && time.Now().Before(deadline); {
				time.Sleep(20 * time.Millisecond)
			}
			if out := c.exec(t, "echo hello"); out != "hello\nrc=0\n" {
				t.Fatalf("the container's shell under Protect: %q", out)
			}
			out := c.exec(t, "/opt/tools/ld-2.31.so --library-path /opt/glibc231 /opt/glibc231/libc.so.6")
			if strings.Contains(out, "GNU C Library") {
				t.Fatalf("the image's loader ran in the Protect container: %q", out)
			}
			// Denied: EPERM (sh reports 126) or SIGKILL (137).
			if !strings.Contains(out, "rc=126") && !strings.Contains(out, "rc=137") {
				t.Errorf("loader exec: %q, want a denial (rc=126 EPERM or rc=137 SIGKILL)", out)
			}
			if got := refused(); got != 1 {
				t.Errorf("execgate_agent_loaders_total{result=refused} = %v, want 1", got)
			}
		})
	}
}
