package enforcer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/execgate/execgate/bpf"
)

// Attach modes: which hook the program uses, what the kernel lacks for each,
// and attaching (or taking over) the link.

// AttachMode says how the program is hooked to security_bprm_creds_for_exec.
type AttachMode string

const (
	AttachAuto     AttachMode = "auto"      // the first of lsm, fmod_ret, fanotify, exec_kill that works
	AttachLSM      AttachMode = "lsm"       // BPF LSM (5.7+, boot flag lsm=...,bpf): EPERM
	AttachFmodRet  AttachMode = "fmod_ret"  // BPF trampoline (5.7+, BTF, no boot flag): EPERM
	AttachExecKill AttachMode = "exec_kill" // tp_btf/sched_process_exec (5.5+, no trampoline): SIGKILL
	// AttachFanotify is exec_kill plus the fanotify gate (gate.go): EPERM
	// without trampolines (6.8+, CONFIG_FANOTIFY_ACCESS_PERMISSIONS).
	AttachFanotify AttachMode = "fanotify"
)

// Denies reports how a Protect-mode denial looks to the process: EPERM from
// execve, or death by SIGKILL before the new image runs an instruction.
func (m AttachMode) Denies() string {
	if m == AttachExecKill {
		return "SIGKILL"
	}
	return "EPERM"
}

// Unattended is the mode in force while no agent process runs: the pinned
// program alone. The fanotify gate lives and dies with the agent.
func (m AttachMode) Unattended() AttachMode {
	if m == AttachFanotify {
		return AttachExecKill
	}
	return m
}

// ParseAttachMode validates a flag value.
func ParseAttachMode(s string) (AttachMode, error) {
	switch m := AttachMode(s); m {
	case AttachAuto, AttachLSM, AttachFmodRet, AttachFanotify, AttachExecKill:
		return m, nil
	case "":
		return AttachAuto, nil
	}
	return "", fmt.Errorf("unknown attach mode %q: want auto, lsm, fmod_ret, fanotify or exec_kill", s)
}

// AttachMode reports the attach mode in use.
func (e *Enforcer) AttachMode() AttachMode { return e.attach }

// AttachRefusal says why the kernel refused an attach mode better than the
// one in use.
type AttachRefusal struct {
	Mode   AttachMode
	Reason string // one line: the verifier's error, or what the kernel lacks
}

// AttachRefusals lists, best first, the modes tried and refused before the
// one in use (none when the best mode loaded or the program was adopted).
func (e *Enforcer) AttachRefusals() []AttachRefusal {
	return append([]AttachRefusal(nil), e.refused...)
}

// refuse records and logs, once, why mode was not used.
func (e *Enforcer) refuse(mode AttachMode, err error, next AttachMode) {
	r := AttachRefusal{Mode: mode, Reason: refusalReason(err)}
	e.refused = append(e.refused, r)
	e.log.Warn("attach mode refused by this kernel", zap.String("mode", string(mode)),
		zap.String("reason", r.Reason), zap.String("next", string(next)))
	e.log.Debug("attach mode refused: full error", zap.String("mode", string(mode)), zap.Error(err))
}

// refusalReason is the line of err that says why: for a verifier
// rejection the line the verifier stopped at, not its instruction trace or
// statistics (an earlier line may be informational, like 5.10's
// "arg#0 type is not a struct" for every BPF_PROG).
func refusalReason(err error) string {
	var verr *ebpf.VerifierError
	if !errors.As(err, &verr) {
		msg, _, _ := strings.Cut(err.Error(), "\n")
		// load() raised the limit already: the hint would mislead
		return strings.Replace(msg, " (MEMLOCK may be too low, consider rlimit.RemoveMemlock)", "", 1)
	}
	for i := len(verr.Log) - 1; i >= 0; i-- {
		line := strings.TrimSpace(verr.Log[i])
		if line == "" || verifierStatsLine(line) {
			continue
		}
		return "verifier: " + line
	}
	msg, _, _ := strings.Cut(verr.Error(), "\n")
	return msg
}

func verifierStatsLine(line string) bool {
	for _, p := range []string{"processed ", "verification time", "stack depth", "max_states_per_insn", "peak_states", "mark_read"} {
		if strings.HasPrefix(line, p) {
			return true
		}
	}
	return false
}

// candidateModes lists what to try, best first: every mode, so that each
// refusal is tried, logged and reported with its reason.
func candidateModes(m AttachMode) []AttachMode {
	if m != AttachAuto {
		return []AttachMode{m}
	}
	return []AttachMode{AttachLSM, AttachFmodRet, AttachFanotify, AttachExecKill}
}

// modeAvailable says what the kernel lacks for mode before anything is
// loaded: the BPF LSM needs "bpf" in the boot-time LSM list, the fanotify
// gate needs 6.8+ (see GateAvailable).
func modeAvailable(mode AttachMode) error {
	switch mode {
	case AttachLSM:
		list, err := activeLSMs()
		if err != nil {
			return err
		}
		if lsmListHasBPF(list) {
			return nil
		}
		return fmt.Errorf(`"bpf" is not in the kernel's active LSM list (%s): boot with lsm=%s,bpf to use it`, list, list)
	case AttachFanotify:
		return GateAvailable()
	}
	return nil
}

// programFor is the program each mode attaches; fanotify also loads
// execgate_gate, which the gate process runs as an iterator.
var programFor = map[AttachMode]string{
	AttachLSM:      bpf.ExecgateProgExecgateLsm,
	AttachFmodRet:  bpf.ExecgateProgExecgateFmodRet,
	AttachExecKill: bpf.ExecgateProgExecgateExecKill,
	AttachFanotify: bpf.ExecgateProgExecgateExecKill,
}

// twinPrograms replace a tracing mode's single program where the kernel
// has task storage: the kernel skips a tracing program entered on a CPU
// where it already runs (a preempted exec), so two copies with their own
// guards decide each exec, the second from the first's stamp (see
// exec_stamp in the program). LSM programs have no such guard.
var twinPrograms = map[AttachMode][]string{
	AttachFmodRet:  {bpf.ExecgateProgExecgateFmodRetA, bpf.ExecgateProgExecgateFmodRetB},
	AttachExecKill: {bpf.ExecgateProgExecgateExecKillA, bpf.ExecgateProgExecgateExecKillB},
	AttachFanotify: {bpf.ExecgateProgExecgateExecKillA, bpf.ExecgateProgExecgateExecKillB},
}

// linkPins name the pinned link of each program in attach order.
var linkPins = []string{linkPin, linkPinTwin}

// attachProgram hooks prog, or keeps the pinned link when it already runs
// the same program. When it does not, the new link is attached before the
// old one is dropped: both consult the same maps, so there is no gap.
func (e *Enforcer) attachProgram(mode AttachMode, prog *ebpf.Program, pin string) (link.Link, error) {
	var old link.Link
	if e.cfg.PinDir != "" {
		l, err := link.LoadPinnedLink(filepath.Join(e.cfg.PinDir, pin), nil)
		switch {
		case err == nil:
			old = l
			e.adopted = true
		case errors.Is(err, os.ErrNotExist):
		default:
			return nil, fmt.Errorf("load pinned link: %w", err)
		}
	}
	if old != nil && sameProgram(old, prog) {
		return old, nil
	}
	var (
		l   link.Link
		err error
	)
	switch mode {
	case AttachLSM:
		l, err = link.AttachLSM(link.LSMOptions{Program: prog})
	case AttachFmodRet:
		l, err = link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachModifyReturn})
	default:
		l, err = link.AttachTracing(link.TracingOptions{Program: prog})
	}
	if err != nil {
		if old != nil {
			old.Close()
		}
		return nil, fmt.Errorf("attach %s: %w", mode, err)
	}
	if e.cfg.PinDir != "" {
		next := filepath.Join(e.cfg.PinDir, pin+"_next")
		_ = os.Remove(next)
		if err := l.Pin(next); err != nil {
			l.Close()
			if old != nil {
				old.Close()
			}
			return nil, fmt.Errorf("pin link: %w", err)
		}
		if old != nil {
			_ = old.Unpin()
			old.Close()
		}
		if err := os.Rename(next, filepath.Join(e.cfg.PinDir, pin)); err != nil {
			l.Close()
			return nil, fmt.Errorf("rename pinned link: %w", err)
		}
	}
	return l, nil
}

func sameProgram(l link.Link, prog *ebpf.Program) bool {
	info, err := l.Info()
	if err != nil {
		return false
	}
	oldProg, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return false
	}
	defer oldProg.Close()
	oi, err1 := oldProg.Info()
	ni, err2 := prog.Info()
	if err1 != nil || err2 != nil {
		return false
	}
	return oi.Tag == ni.Tag && oi.Type == ni.Type
}

// BPFLSMActive reports whether "bpf" is in the running kernel's LSM list,
// mounting securityfs if nothing did yet.
func BPFLSMActive() (bool, error) {
	list, err := activeLSMs()
	if err != nil {
		return false, err
	}
	return lsmListHasBPF(list), nil
}

func lsmListHasBPF(list string) bool {
	for _, name := range strings.Split(list, ",") {
		if name == "bpf" {
			return true
		}
	}
	return false
}

// activeLSMs is the kernel's comma-separated list of active LSMs.
func activeLSMs() (string, error) {
	const lsmFile = "/sys/kernel/security/lsm"
	b, err := os.ReadFile(lsmFile)
	if errors.Is(err, os.ErrNotExist) {
		if merr := unix.Mount("securityfs", "/sys/kernel/security", "securityfs", 0, ""); merr != nil {
			return "", fmt.Errorf("mount securityfs: %w", merr)
		}
		b, err = os.ReadFile(lsmFile)
	}
	if err != nil {
		return "", fmt.Errorf("read LSM list: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// kernelHasTaskPtRegs: bpf_task_pt_regs (5.15) lets the program read argv
// from the exec syscall's registers.
func kernelHasTaskPtRegs() bool {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return false
	}
	var fn *btf.Enum
	if err := spec.TypeByName("bpf_func_id", &fn); err != nil {
		return false
	}
	for _, v := range fn.Values {
		if v.Name == "BPF_FUNC_task_pt_regs" {
			return true
		}
	}
	return false
}

// TrampolinesAvailable loads (and drops) a minimal fentry program: some
// kernels refuse every trampoline program (fentry, fmod_ret, lsm) even to
// root, and only exec_kill can work there.
func TrampolinesAvailable() error {
	spec := &ebpf.ProgramSpec{
		Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry, AttachTo: "security_bprm_creds_for_exec",
		License: "GPL", Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	}
	p, err := ebpf.NewProgram(spec)
	if err != nil {
		return fmt.Errorf("kernel refuses trampoline programs: %w", err)
	}
	return p.Close()
}
