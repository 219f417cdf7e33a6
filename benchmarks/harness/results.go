package harness

import (
	"time"

	"github.com/execgate/execgate/benchmarks/execbench"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

// Results is everything one run measured. Durations are nanoseconds in JSON.
type Results struct {
	Config Config
	// Command is how the run was started, for the report.
	Command  string
	Started  time.Time
	Finished time.Time
	Machine  Machine
	// ExecHookLinks lists BPF links of other processes on the exec hooks at
	// the start and the end: they run in every measurement, baseline too.
	ExecHookLinksBefore []HookLink
	ExecHookLinksAfter  []HookLink
	// TrampolinesRefused is the kernel's answer (an errno name) when it
	// refuses trampoline programs (lsm, fmod_ret): those rows are then not
	// measured.
	TrampolinesRefused string
	// LSMInactive says why the lsm rows were not measured on a kernel that
	// loads trampolines.
	LSMInactive string

	// NoProgram pools every exec timed with nothing of ours on the hooks.
	NoProgram execbench.Summary
	Exec      []ExecResult
	PeerStop  []PeerStop

	Memory       MemoryResults
	ControlPlane *ControlPlaneResults
	// ControlPlaneSkipped says why items 4-6 were not measured.
	ControlPlaneSkipped string
}

// Machine describes where the numbers come from.
type Machine struct {
	Kernel        string
	CPUModel      string
	OnlineCPUs    int
	PossibleCPUs  int
	MemTotalBytes uint64
	LoadAvgStart  string // /proc/loadavg: other work on the machine
	LoadAvgEnd    string
	GoVersion     string
	// Emulation names the emulator when the run is inside one (the kernel
	// matrix's VMs set EXECGATE_BENCH_EMULATION): only ratios carry then.
	Emulation string `json:",omitempty"`
}

// HookLink is one BPF link attached to an exec hook.
type HookLink struct {
	ID      uint32
	Program string
	Hook    string
}

// Implementation names what ran on the exec hook.
type Implementation string

const (
	ImplNone     Implementation = "no program"
	ImplExecgate Implementation = "execgate"
	ImplPeer     Implementation = "peer"
)

// CgroupKind says where the timed execs ran.
type CgroupKind string

const (
	// CgroupEnforced: a pod container cgroup bound to a loaded policy.
	CgroupEnforced CgroupKind = "enforced"
	// CgroupOther: a pod container cgroup with no policy, the common case.
	CgroupOther CgroupKind = "other"
)

// ExecResult is the exec cost in one kernel state and one cgroup.
type ExecResult struct {
	Impl     Implementation
	Mode     string // attach mode or peer hook
	Policies int
	Cgroup   CgroupKind
	// Skipped is set, and nothing else, when this state cannot run here.
	Skipped string

	Wall execbench.Summary
	// Baseline: execs in the enforced pod with the state's programs off the
	// hook, timed between the state's rounds.
	Baseline execbench.Summary
	// OverheadNs is Wall.Median - Baseline.Median; OverheadSENs the
	// standard error of the per-round differences.
	OverheadNs, OverheadSENs float64
	// KernelNsPerExec is the programs' own run time per exec (BPF run-time
	// statistics), summed over every program that ran, median of Rounds
	// chunks; ProgramRunsPerExec counts those runs (1 for execgate, N for
	// the peer).
	KernelNsPerExec    float64
	ProgramRunsPerExec float64
	// ForeignExecShare is the part of program runs that other processes'
	// execs caused while the kernel time was measured.
	ForeignExecShare float64
	// Denial is how the state refused a not-allowed exec in the enforced
	// cgroup (EPERM, SIGKILL): proof that what is timed enforces.
	Denial string

	// LoadPerPolicy is the time to load one policy (PutPolicy, or program
	// load + attach for the peer), averaged over the state's policies.
	LoadPerPolicy time.Duration
	// KernelBytes: maps (and, for the peer, programs) of the state.
	KernelBytes uint64
}

// PeerStop records where the one-program-per-policy model stopped loading.
type PeerStop struct {
	Mode     string
	Attached int
	Err      string
}

// MemoryResults are item 3: an enforcer sized as on a real node.
type MemoryResults struct {
	AttachMode enforcer.AttachMode
	Config     enforcer.Config
	Points     []MemoryPoint
	// PerCPUBytesPerCPU is what every per-CPU map costs per possible CPU;
	// the rest of the fixed cost does not depend on the CPU count.
	PerCPUBytesPerCPU uint64
	// LoadPerPolicy: PutPolicy and the two Binds of one pod.
	LoadPerPolicy execbench.Summary
	// Update: PutPolicy of a new version of a bound policy, which swaps
	// every binding atomically and frees the old entries after an RCU
	// grace period.
	Update execbench.Summary
	// LargestExec is the largest execgate state of the exec benchmark (all
	// policies in one enforcer sized for them): the "every node loads every
	// policy" point of the cluster view, measured.
	LargestExec MemoryPoint
}

// MemoryPoint is the kernel memory with Policies pod policies loaded and
// bound.
type MemoryPoint struct {
	Policies int
	Bindings int
	Bytes    uint64
	Maps     []enforcer.MapStats
}
