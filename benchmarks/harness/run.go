package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/execgate/execgate/benchmarks/execbench"
	"github.com/execgate/execgate/benchmarks/peer"
	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

// Run measures everything cfg asks for and returns the numbers. The order
// is fixed: a no-program baseline, every kernel state (each with baselines
// between its rounds), then memory, then the control plane.
func Run(ctx context.Context, cfg Config) (*Results, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("benchmark config: %w", err)
	}
	if err := Preflight(); err != nil {
		return nil, err
	}
	defer os.Remove(pinRoot) // fails, as it should, while another run uses it
	removeStale()
	res := &Results{Config: cfg, Started: time.Now(), Machine: readMachine()}
	var err error
	if res.ExecHookLinksBefore, err = ExecHookLinks(); err != nil {
		return nil, err
	}

	tmp, err := os.MkdirTemp("", "execgate-bench-")
	if err != nil {
		return nil, fmt.Errorf("temporary directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	progs, err := execbench.BuildPrograms(tmp)
	if err != nil {
		return nil, err
	}
	top, enforced, other, err := makePods()
	if err != nil {
		return nil, err
	}
	defer testenv.RemoveCgroup(top)

	m := &meter{cfg: cfg, progs: progs, enforced: enforced, other: other, res: res}
	m.logf("machine: %s, %d CPUs, load %s", res.Machine.Kernel, res.Machine.OnlineCPUs, res.Machine.LoadAvgStart)
	if err := m.baseline(ctx); err != nil {
		return nil, err
	}
	if err := m.execStates(ctx); err != nil {
		return nil, err
	}
	res.NoProgram = execbench.Summarize(m.noProgram)
	if err := m.memory(ctx); err != nil {
		return nil, fmt.Errorf("memory: %w", err)
	}
	res.Memory.LargestExec = largestExec(res)

	if cfg.ControlPlane == nil {
		res.ControlPlaneSkipped = "not measured: no control-plane benchmark configured (execgate-bench -control-plane=false)"
	} else {
		m.logf("control plane: items 4-6")
		cp, err := cfg.ControlPlane.Run(ctx)
		if err != nil {
			return nil, fmt.Errorf("control plane: %w", err)
		}
		res.ControlPlane = &cp
	}

	if res.ExecHookLinksAfter, err = ExecHookLinks(); err != nil {
		return nil, err
	}
	res.Machine.LoadAvgEnd = loadAvg()
	res.Finished = time.Now()
	return res, nil
}

// execStates measures execgate in every attach mode this kernel loads, then
// the peer baseline on every hook it loads.
func (m *meter) execStates(ctx context.Context) error {
	tramp := enforcer.TrampolinesAvailable()
	if tramp != nil {
		m.res.TrampolinesRefused = refusal(tramp)
	}
	for _, mode := range measuredModes {
		if !m.cfg.measures(mode) {
			why := fmt.Sprintf("not measured: this run timed only %v (-modes)", m.cfg.Modes)
			m.skipped(ImplExecgate, string(mode), m.cfg.OurPolicies, why)
			m.logf("execgate %s: %s", mode, why)
			continue
		}
		if why := unavailable(mode, tramp); why != "" {
			if mode == enforcer.AttachLSM && tramp == nil {
				m.res.LSMInactive = why
			}
			m.skipped(ImplExecgate, string(mode), m.cfg.OurPolicies, why)
			m.logf("execgate %s: %s", mode, why)
			continue
		}
		for i, n := range m.cfg.OurPolicies {
			err := m.ours(ctx, mode, n)
			var refused *refusedError
			if mode != enforcer.AttachExecKill && errors.As(err, &refused) {
				m.skipped(ImplExecgate, string(mode), m.cfg.OurPolicies[i:], "n/a: "+refused.Error())
				m.logf("execgate %s: %v", mode, err)
				break
			}
			if err != nil {
				return err
			}
		}
	}
	if err := m.peerState(ctx, peer.HookExecKill, m.cfg.PeerPolicies); err != nil {
		return err
	}
	if tramp != nil {
		m.skipped(ImplPeer, string(peer.HookFmodRet), m.cfg.PeerPolicies, trampolineNA(tramp))
		return nil
	}
	// One more than the trampoline limit shows where the model stops.
	sizes := append([]int(nil), m.cfg.PeerPolicies...)
	if last := sizes[len(sizes)-1]; last <= bpfMaxTrampLinks {
		sizes = append(sizes, bpfMaxTrampLinks+1)
	}
	return m.peerState(ctx, peer.HookFmodRet, sizes)
}

// bpfMaxTrampLinks is the kernel's BPF_MAX_TRAMP_LINKS (include/linux/bpf.h)
// on x86-64 and arm64: programs one trampoline (one function) can hold.
const bpfMaxTrampLinks = 38

// unavailable says why mode cannot be measured here, or "".
func unavailable(mode enforcer.AttachMode, tramp error) string {
	switch mode {
	case enforcer.AttachExecKill:
		return ""
	case enforcer.AttachFanotify:
		if err := enforcer.GateAvailable(); err != nil {
			return "n/a: " + err.Error()
		}
		return ""
	case enforcer.AttachLSM:
		if tramp != nil {
			return trampolineNA(tramp)
		}
		if ok, err := enforcer.BPFLSMActive(); err != nil || !ok {
			return "n/a: bpf is not in the boot-time LSM list (lsm=...,bpf)"
		}
		return ""
	default:
		if tramp != nil {
			return trampolineNA(tramp)
		}
		return ""
	}
}

func trampolineNA(err error) string {
	return "n/a: kernel refuses trampoline programs (" + refusal(err) + ")"
}

// refusal is the kernel's errno (EPERM), else the whole error.
func refusal(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

// removeStale removes what a killed earlier run left: its pins (which keep
// its program attached) and its cgroups. Names carry the run's pid; only
// dead runs' are touched.
func removeStale() {
	dead := func(pidText string) bool {
		pid, err := strconv.Atoi(pidText)
		return err == nil && pid > 0 && errors.Is(unix.Kill(pid, 0), unix.ESRCH)
	}
	if entries, err := os.ReadDir(pinRoot); err == nil {
		for _, e := range entries {
			// ours-<pid>-<mode>-<n>, memory-<pid>
			if f := strings.Split(e.Name(), "-"); len(f) >= 2 && dead(f[1]) {
				_ = enforcer.Cleanup(filepath.Join(pinRoot, e.Name()))
			}
		}
	}
	if root, err := testenv.CgroupRoot(); err == nil {
		dirs, _ := filepath.Glob(filepath.Join(root, "execgate-bench-*"))
		for _, d := range dirs {
			if dead(strings.TrimPrefix(filepath.Base(d), "execgate-bench-")) {
				testenv.RemoveCgroup(d)
			}
		}
	}
}

// makePods creates two pods' cgroups below a fresh top directory, nested
// like the kubelet's: top/kubepods/burstable/pod-<name>/app.
func makePods() (top string, enforced, other podCgroups, err error) {
	root, err := testenv.CgroupRoot()
	if err != nil {
		return "", enforced, other, err
	}
	top = filepath.Join(root, fmt.Sprintf("execgate-bench-%d", os.Getpid()))
	mk := func(name string) (podCgroups, error) {
		pod, err := execbench.NewCgroup(top, filepath.Join("kubepods", "burstable", "pod-"+name))
		if err != nil {
			return podCgroups{}, err
		}
		ctr, err := execbench.NewCgroup(pod.Path, execbench.Container)
		return podCgroups{pod: pod, container: ctr}, err
	}
	if enforced, err = mk("enforced"); err == nil {
		other, err = mk("other")
	}
	if err != nil {
		testenv.RemoveCgroup(top)
	}
	return top, enforced, other, err
}

// EmulationEnv names the emulator the run is inside, for the report.
const EmulationEnv = "EXECGATE_BENCH_EMULATION"

func readMachine() Machine {
	m := Machine{OnlineCPUs: runtime.NumCPU(), GoVersion: runtime.Version(), LoadAvgStart: loadAvg(),
		Emulation: os.Getenv(EmulationEnv)}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = "Linux " + unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Machine[:])
	}
	if n, err := ebpf.PossibleCPU(); err == nil {
		m.PossibleCPUs = n
	}
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	if kb, err := strconv.ParseUint(strings.TrimSuffix(procField("/proc/meminfo", "MemTotal"), " kB"), 10, 64); err == nil {
		m.MemTotalBytes = kb * 1024
	}
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// procField returns the value of the first "key: value" line of a /proc file.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
