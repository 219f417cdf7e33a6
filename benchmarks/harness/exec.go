package harness

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/cilium/ebpf"

	"github.com/execgate/execgate/benchmarks/execbench"
	"github.com/execgate/execgate/internal/testenv"
)

// podCgroups is one synthetic pod's cgroups, nested as the kubelet nests
// them (kubepods/burstable/pod<uid>/<container>), so that the program's walk
// up the cgroup tree is as long as on a node.
type podCgroups struct {
	pod, container *testenv.Cgroup
}

// meter times execs in the two pods.
type meter struct {
	cfg      Config
	progs    execbench.Programs
	enforced podCgroups // bound to a policy in every state
	other    podCgroups // never bound
	res      *Results
	// noProgram pools every baseline sample of the run.
	noProgram []time.Duration
}

func (m *meter) logf(format string, args ...any) {
	if m.cfg.Progress != nil {
		fmt.Fprintf(m.cfg.Progress, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
}

// hooks puts a state's programs on the exec hook and takes them off again,
// keeping programs and maps loaded: the baseline is timed between rounds
// of the state itself, so that both see the same load on the machine.
type hooks interface {
	attach() error
	detach() error
}

// counters reads how many execs the program checked and denied (nil for
// programs without counters).
type counters func() (checked, denied uint64, err error)

// state describes the kernel configuration being measured.
type state struct {
	impl          Implementation
	mode          string
	policies      int
	programs      []*ebpf.Program
	loadPerPolicy time.Duration
	kernelBytes   uint64
	// denies is how a refused exec must look: EPERM or SIGKILL.
	denies string
}

type pod struct {
	kind CgroupKind
	cg   *testenv.Cgroup
}

func (m *meter) pods() []pod {
	return []pod{{CgroupEnforced, m.enforced.container}, {CgroupOther, m.other.container}}
}

// measure proves that the state enforces, then times Rounds rounds of
// [programs on: enforced pod, other pod; programs off: baseline], then the
// programs' own run time with the kernel's statistics on.
func (m *meter) measure(ctx context.Context, st state, h hooks, count counters) error {
	where := fmt.Sprintf("%s %s, %d policies", st.impl, st.mode, st.policies)
	if err := h.attach(); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	denial, err := execbench.ExecDenied(m.enforced.container, m.progs)
	if derr := h.detach(); err == nil {
		err = derr
	}
	if err != nil {
		return fmt.Errorf("%s does not enforce: %w", where, err)
	}
	if denial != st.denies {
		return fmt.Errorf("%s refused an exec with %s, want %s", where, denial, st.denies)
	}
	var checked0, denied0 uint64
	if count != nil {
		if checked0, denied0, err = count(); err != nil {
			return err
		}
	}

	pods := m.pods()
	per := m.cfg.Samples / m.cfg.Rounds
	samples := make([][]time.Duration, len(pods))
	overheads := make([][]float64, len(pods)) // per round: pod median - baseline median
	var base []time.Duration
	for r := 0; r < m.cfg.Rounds; r++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := h.attach(); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		medians := make([]time.Duration, len(pods))
		for i, p := range pods {
			d, err := execbench.TimeExecs(p.cg, m.progs, per)
			if err != nil {
				return errors.Join(fmt.Errorf("%s, %s pod: %w", where, p.kind, err), h.detach())
			}
			samples[i] = append(samples[i], d...)
			medians[i] = execbench.Summarize(d).Median
		}
		if err := h.detach(); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		b, err := execbench.TimeExecs(m.enforced.container, m.progs, per)
		if err != nil {
			return fmt.Errorf("%s, baseline: %w", where, err)
		}
		base = append(base, b...)
		bm := execbench.Summarize(b).Median
		for i := range pods {
			overheads[i] = append(overheads[i], float64(medians[i]-bm))
		}
	}
	if count != nil {
		checked, denied, err := count()
		if err != nil {
			return err
		}
		// Each round also exec'd execloop itself in the enforced pod.
		want := uint64(m.cfg.Rounds * (per + 1))
		switch {
		case denied != denied0:
			return fmt.Errorf("%s: %d allowed execs were denied", where, denied-denied0)
		case checked-checked0 < want:
			return fmt.Errorf("%s: the program checked %d execs of the enforced pod, want %d: the enforced rows would not measure a check", where, checked-checked0, want)
		}
	}
	kernel, err := m.kernelTime(st.programs, h, pods)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}

	m.noProgram = append(m.noProgram, base...)
	baseline := execbench.Summarize(base)
	for i, p := range pods {
		wall := execbench.Summarize(samples[i])
		r := ExecResult{
			Impl: st.impl, Mode: st.mode, Policies: st.policies, Cgroup: p.kind,
			Wall: wall, Baseline: baseline,
			OverheadNs:   float64(wall.Median - baseline.Median),
			OverheadSENs: standardError(overheads[i]),
			Denial:       denial, LoadPerPolicy: st.loadPerPolicy, KernelBytes: st.kernelBytes,
			KernelNsPerExec: kernel[i].nsPerExec, ProgramRunsPerExec: kernel[i].runsPerExec, ForeignExecShare: kernel[i].foreign,
		}
		m.res.Exec = append(m.res.Exec, r)
		m.logf("%s, %s pod: median %v (baseline %v), p99 %v; programs %.0f ns/exec (%.1f runs/exec)",
			where, p.kind, wall.Median, baseline.Median, wall.P99, r.KernelNsPerExec, r.ProgramRunsPerExec)
	}
	return nil
}

type kernelResult struct {
	nsPerExec, runsPerExec, foreign float64
}

// kernelTime reads how long the state's programs run per exec in each pod,
// in Rounds chunks alternating the pods, and keeps each pod's median chunk.
// The statistics are global: other processes' execs in the same window
// count as runs too, and are reported as the foreign share.
func (m *meter) kernelTime(progs []*ebpf.Program, h hooks, pods []pod) (_ []kernelResult, err error) {
	stop, err := enableRunStats()
	if err != nil {
		return nil, err
	}
	defer stop()
	if err := h.attach(); err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, h.detach()) }()
	if ph, ok := h.(interface{ programs() []*ebpf.Program }); ok {
		progs = ph.programs()
	}
	per := max(1, m.cfg.KernelSamples/m.cfg.Rounds)
	chunks := make([][]float64, len(pods))
	runs := make([]float64, len(pods))
	execs := float64(m.cfg.Rounds * (per + 1)) // and execloop's own exec
	for c := 0; c < m.cfg.Rounds; c++ {
		for i, p := range pods {
			before, err := readRunStats(progs)
			if err != nil {
				return nil, err
			}
			if _, err := execbench.TimeExecs(p.cg, m.progs, per); err != nil {
				return nil, fmt.Errorf("kernel-time execs, %s pod: %w", p.kind, err)
			}
			after, err := readRunStats(progs)
			if err != nil {
				return nil, err
			}
			n := float64(after.runs - before.runs)
			if n == 0 {
				return nil, fmt.Errorf("the kernel counted no program run in the %s pod: BPF run-time statistics do not work here", p.kind)
			}
			// runs / programs = execs the programs saw, ours and others'.
			chunks[i] = append(chunks[i], float64(after.runtimeNs-before.runtimeNs)/(n/float64(len(progs))))
			runs[i] += n
		}
	}
	out := make([]kernelResult, len(pods))
	for i := range pods {
		ours := execs * float64(len(progs))
		out[i] = kernelResult{nsPerExec: medianOf(chunks[i]), runsPerExec: runs[i] / execs}
		if runs[i] > ours {
			out[i].foreign = (runs[i] - ours) / runs[i]
		}
	}
	return out, nil
}

// baseline times execs with nothing of ours on the exec hooks.
func (m *meter) baseline(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d, err := execbench.TimeExecs(m.enforced.container, m.progs, m.cfg.Samples/m.cfg.Rounds)
	if err != nil {
		return fmt.Errorf("no-program baseline: %w", err)
	}
	m.noProgram = append(m.noProgram, d...)
	s := execbench.Summarize(d)
	m.logf("no program: median %v p99 %v", s.Median, s.P99)
	return nil
}

func medianOf(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// standardError of the mean of v: how far the rounds' overheads scatter.
func standardError(v []float64) float64 {
	if len(v) < 2 {
		return math.NaN()
	}
	var sum, sq float64
	for _, x := range v {
		sum += x
	}
	mean := sum / float64(len(v))
	for _, x := range v {
		sq += (x - mean) * (x - mean)
	}
	return math.Sqrt(sq/float64(len(v)-1)) / math.Sqrt(float64(len(v)))
}
