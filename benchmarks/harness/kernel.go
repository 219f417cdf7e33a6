package harness

import (
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

// Preflight fails, saying what is missing, unless this process can load BPF
// programs and create cgroups: the benchmark measures the real kernel or
// nothing.
func Preflight() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (BPF programs, bpffs pins and cgroups): run it as root, e.g. `sudo make bench`")
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		missing = append(missing, "kernel BTF (/sys/kernel/btf/vmlinux): a kernel built with CONFIG_DEBUG_INFO_BTF")
	}
	if _, err := testenv.CgroupRoot(); err != nil {
		missing = append(missing, "a cgroup v2 mount")
	}
	if len(missing) > 0 {
		return fmt.Errorf("this benchmark needs %s", strings.Join(missing, "; "))
	}
	if err := enforcer.EnsureBPFFS(pinRoot); err != nil {
		return fmt.Errorf("this benchmark needs bpffs: %w", err)
	}
	return nil
}

// pinRoot holds this run's pins; every state uses a directory below it.
const pinRoot = "/sys/fs/bpf/execgate-bench"

// execTracepoint is the tracepoint exec_kill programs (tp_btf, raw_tp) use;
// their links are raw tracepoint links that name it.
const execTracepoint = "sched_process_exec"

// execHooks are the BTF functions trampoline links on the exec path target:
// the LSM hook and the function fmod_ret attaches to.
var execHooks = map[string]string{
	"bpf_lsm_bprm_creds_for_exec":  "lsm/bprm_creds_for_exec",
	"security_bprm_creds_for_exec": "fentry|fexit|fmod_ret/security_bprm_creds_for_exec",
}

// ExecHookLinks lists every BPF link on an exec hook, whoever made it.
func ExecHookLinks() ([]HookLink, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("load kernel BTF: %w", err)
	}
	targets := map[btf.TypeID]string{}
	for name, hook := range execHooks {
		typ, err := spec.AnyTypeByName(name)
		if err != nil {
			continue // e.g. no BPF LSM in this kernel
		}
		id, err := spec.TypeID(typ)
		if err != nil {
			return nil, fmt.Errorf("BTF id of %s: %w", name, err)
		}
		targets[id] = hook
	}
	var out []HookLink
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue // gone, or a link type without info
		}
		var hook string
		if rt := info.RawTracepoint(); rt != nil && rt.Name == execTracepoint {
			hook = "tp_btf|raw_tp/" + execTracepoint
		} else if tr := info.Tracing(); tr != nil {
			hook = targets[btf.TypeID(tr.TargetBtfId)]
		}
		if hook == "" {
			continue
		}
		out = append(out, HookLink{ID: uint32(info.ID), Program: programName(info.Program), Hook: hook})
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("list BPF links: %w", err)
	}
	return out, nil
}

func programName(id ebpf.ProgramID) string {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return fmt.Sprintf("prog %d", id)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return fmt.Sprintf("prog %d", id)
	}
	return info.Name
}

// runStats are the kernel's BPF run-time statistics of a set of programs.
type runStats struct {
	runtimeNs, runs uint64
}

func readRunStats(progs []*ebpf.Program) (runStats, error) {
	var s runStats
	for _, p := range progs {
		st, err := p.Stats()
		if err != nil {
			return s, fmt.Errorf("program statistics: %w", err)
		}
		s.runtimeNs += uint64(st.Runtime)
		s.runs += st.RunCount
	}
	return s, nil
}

// enableRunStats turns on the kernel's BPF run-time accounting until the
// returned function is called (it also ends when this process exits).
func enableRunStats() (func(), error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable BPF run-time statistics: %w", err)
	}
	return func() { c.Close() }, nil
}
