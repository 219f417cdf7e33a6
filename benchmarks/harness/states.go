package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/execgate/execgate/benchmarks/execbench"
	"github.com/execgate/execgate/benchmarks/peer"
	"github.com/execgate/execgate/bpf"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

// refusedError: the kernel would not load or attach a program in a mode
// that the feature probes said it supports.
type refusedError struct{ err error }

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

// ours measures execgate's program in attach mode with n loaded policies;
// the enforced pod is bound to the last one loaded.
//
// The enforcer loads the program, the policies and the bindings exactly as
// on a node. Then it is closed and its link unpinned: the program and its
// pinned maps stay, and the benchmark attaches and detaches the same
// program with links of its own, to time baselines between rounds.
func (m *meter) ours(ctx context.Context, mode enforcer.AttachMode, n int) (err error) {
	dir := filepath.Join(pinRoot, fmt.Sprintf("ours-%d-%s-%d", os.Getpid(), mode, n))
	e, err := enforcer.New(execbench.EnforcerConfig(dir, mode, n))
	if err != nil {
		return &refusedError{fmt.Errorf("start enforcer (%s): %w", mode, err)}
	}
	defer func() {
		e.Close()
		if cerr := enforcer.Cleanup(dir); cerr != nil && err == nil {
			err = fmt.Errorf("remove pins: %w", cerr)
		}
	}()

	m.logf("execgate %s: loading %s", mode, plural(n, "policy", "policies"))
	start := time.Now()
	if err := execbench.LoadPolicies(e, 0, n, m.progs.Allowed()...); err != nil {
		return err
	}
	loadPer := time.Since(start) / time.Duration(n)
	key := execbench.PolicyKey(n - 1)
	if err := e.Bind(m.enforced.pod.ID, key, enforcer.UnionContainer); err != nil {
		return err
	}
	if err := e.Bind(m.enforced.container.ID, key, execbench.Container); err != nil {
		return err
	}
	st, err := e.Stats()
	if err != nil {
		return err
	}
	e.Close()
	progs, err := takeOverPrograms(dir)
	if err != nil {
		return err
	}
	defer closeAll(progs)
	count, closeCounters, err := pinnedCounters(dir)
	if err != nil {
		return err
	}
	defer closeCounters()
	var h hooks = &ownLink{progs: progs, mode: mode}
	if mode == enforcer.AttachFanotify {
		h = &gateHooks{dir: dir, n: n}
	}
	defer func() { err = errors.Join(err, h.detach()) }()
	return m.measure(ctx, state{
		impl: ImplExecgate, mode: string(mode), policies: n, programs: progs,
		loadPerPolicy: loadPer, kernelBytes: execbench.MapBytes(st), denies: mode.Denies(),
	}, h, count)
}

// gateHooks puts fanotify mode on and off: an enforcer adopts the pinned maps,
// attaches the program and starts its gate, and goes away again, its link
// unpinned. The gate is part of the cost: every exec on the node waits for it.
type gateHooks struct {
	dir   string
	n     int
	e     *enforcer.Enforcer
	progs []*ebpf.Program // the attached exec programs (twins), for run-time statistics
}

func (g *gateHooks) attach() error {
	if g.e != nil {
		return nil
	}
	e, err := enforcer.New(execbench.EnforcerConfig(g.dir, enforcer.AttachFanotify, g.n))
	if err != nil {
		return fmt.Errorf("start enforcer (fanotify): %w", err)
	}
	progs, err := pinnedPrograms(g.dir, false) // stay attached
	if err != nil {
		e.Close()
		return err
	}
	g.e, g.progs = e, progs
	return nil
}

func (g *gateHooks) detach() error {
	if g.e == nil {
		return nil
	}
	g.e.Close()
	g.e = nil
	closeAll(g.progs)
	g.progs = nil
	progs, err := takeOverPrograms(g.dir) // unpin: the programs leave the hook
	closeAll(progs)
	return err
}

// programs are the state's programs while attached (they change with each
// enforcer): the exec program; the gate's iterator program is not counted.
func (g *gateHooks) programs() []*ebpf.Program {
	return g.progs
}

// takeOverPrograms unpins the links of a closed enforcer's pin directory,
// which takes its programs off the hook, and returns the programs.
func takeOverPrograms(dir string) ([]*ebpf.Program, error) { return pinnedPrograms(dir, true) }

// pinnedPrograms returns the programs of dir's pinned links, in pin name
// order (link, link_b: the enforcer's attach order); unpin also removes the
// links' pins (a program leaves the hook once no one holds its link).
func pinnedPrograms(dir string, unpin bool) ([]*ebpf.Program, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read pins: %w", err)
	}
	var progs []*ebpf.Program
	for _, ent := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(dir, ent.Name()), nil)
		if err != nil {
			continue // a map
		}
		info, err := l.Info()
		if err == nil {
			var prog *ebpf.Program
			if prog, err = ebpf.NewProgramFromID(info.Program); err == nil {
				progs = append(progs, prog)
			}
		}
		if err == nil && unpin {
			err = l.Unpin()
		}
		l.Close()
		if err != nil {
			closeAll(progs)
			return nil, fmt.Errorf("take over the pinned link %s: %w", ent.Name(), err)
		}
	}
	if len(progs) == 0 {
		return nil, fmt.Errorf("no pinned link in %s", dir)
	}
	return progs, nil
}

func closeAll(progs []*ebpf.Program) {
	for _, p := range progs {
		p.Close()
	}
}

// pinnedCounters reads execgate's per-CPU counters from the pinned map.
func pinnedCounters(dir string) (counters, func(), error) {
	mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, bpf.ExecgateMapStats), nil)
	if err != nil {
		return nil, nil, fmt.Errorf("open pinned counters: %w", err)
	}
	read := func() (checked, denied uint64, err error) {
		var perCPU []bpf.ExecgateCounters
		if err := mp.Lookup(uint32(0), &perCPU); err != nil {
			return 0, 0, fmt.Errorf("read counters: %w", err)
		}
		for _, c := range perCPU {
			checked += c.Count[bpf.ExecgateStatSTAT_CHECKED]
			denied += c.Count[bpf.ExecgateStatSTAT_DENIED]
		}
		return checked, denied, nil
	}
	return read, func() { mp.Close() }, nil
}

// ownLink attaches execgate's programs (one, or the two twins) the way the
// enforcer does, in the same order.
type ownLink struct {
	progs []*ebpf.Program
	mode  enforcer.AttachMode
	lnks  []link.Link
}

func (o *ownLink) attach() error {
	if o.lnks != nil {
		return nil
	}
	for _, prog := range o.progs {
		var (
			l   link.Link
			err error
		)
		switch o.mode {
		case enforcer.AttachLSM:
			l, err = link.AttachLSM(link.LSMOptions{Program: prog})
		case enforcer.AttachFmodRet:
			l, err = link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachModifyReturn})
		default:
			l, err = link.AttachTracing(link.TracingOptions{Program: prog})
		}
		if err != nil {
			_ = o.detach()
			return fmt.Errorf("attach execgate (%s): %w", o.mode, err)
		}
		o.lnks = append(o.lnks, l)
	}
	return nil
}

func (o *ownLink) detach() error {
	var errs []error
	for _, l := range o.lnks {
		errs = append(errs, l.Close())
	}
	o.lnks = nil
	return errors.Join(errs...)
}

// peerSet attaches and detaches every program of a peer state.
type peerSet []*peer.Policy

func (s peerSet) attach() error {
	for _, p := range s {
		if err := p.Attach(); err != nil {
			return errors.Join(err, s.detach())
		}
	}
	return nil
}

func (s peerSet) detach() error {
	var errs []error
	for _, p := range s {
		errs = append(errs, p.Detach())
	}
	return errors.Join(errs...)
}

// largestExec is the map state of the largest execgate exec state: the
// "every node loads every policy" point of the cluster view.
func largestExec(res *Results) MemoryPoint {
	var p MemoryPoint
	for _, r := range res.Exec {
		if r.Impl == ImplExecgate && r.Skipped == "" && r.Policies >= p.Policies {
			p = MemoryPoint{Policies: r.Policies, Bindings: 2, Bytes: r.KernelBytes}
		}
	}
	return p
}

// peerState measures the peer baseline: one program per policy on hook,
// sizes ascending. It stops where the kernel refuses one more program and
// records that point in Results.PeerStop, measured unless it already was.
func (m *meter) peerState(ctx context.Context, hook peer.Hook, sizes []int) error {
	allowed := m.progs.Allowed()
	measured := 0
	for _, n := range sizes {
		m.logf("peer %s: loading %s", hook, plural(n, "program", "programs"))
		policies, loadPer, loadErr := loadPeers(hook, n, allowed, m.enforced.container.ID)
		if loadErr != nil {
			if len(policies) == 0 {
				return fmt.Errorf("peer %s: %w", hook, loadErr)
			}
			m.res.PeerStop = append(m.res.PeerStop, PeerStop{Mode: string(hook), Attached: len(policies), Err: loadErr.Error()})
			m.logf("peer %s stops at %d programs: %v", hook, len(policies), loadErr)
		}
		var err error
		if len(policies) > measured {
			err = m.measurePeers(ctx, hook, policies, loadPer)
			measured = len(policies)
		}
		for _, p := range policies {
			p.Close()
		}
		if err != nil || loadErr != nil {
			return err
		}
	}
	return nil
}

// loadPeers loads n peer policies. The first covers the enforced pod's
// container cgroup and allows the timed programs: every exec runs every
// program whatever their order, and the first survives when the kernel
// refuses a later one. On error it returns the policies that did load.
func loadPeers(hook peer.Hook, n int, allowed []string, enforcedCgroup uint64) ([]*peer.Policy, time.Duration, error) {
	var policies []*peer.Policy
	start := time.Now()
	for i := 0; i < n; i++ {
		pol := execbench.PodPolicy(i, 1)
		cgroups := []uint64{execbench.SyntheticCgroupID(i, false), execbench.SyntheticCgroupID(i, true)}
		if i == 0 {
			pol = execbench.PodPolicy(i, 1, allowed...)
			cgroups = append(cgroups, enforcedCgroup)
		}
		p, err := peer.Load(hook, pol.Containers[execbench.Container].Paths, cgroups)
		if err != nil {
			return policies, time.Since(start) / time.Duration(max(len(policies), 1)), fmt.Errorf("policy %d of %d: %w", i+1, n, err)
		}
		policies = append(policies, p)
	}
	return policies, time.Since(start) / time.Duration(n), nil
}

func (m *meter) measurePeers(ctx context.Context, hook peer.Hook, policies []*peer.Policy, loadPer time.Duration) error {
	set := peerSet(policies)
	if err := set.detach(); err != nil {
		return err
	}
	var bytes uint64
	progs := make([]*ebpf.Program, 0, len(policies))
	for _, p := range policies {
		b, err := p.KernelBytes()
		if err != nil {
			return err
		}
		bytes += b
		progs = append(progs, p.Program())
	}
	return m.measure(ctx, state{
		impl: ImplPeer, mode: string(hook), policies: len(policies), programs: progs,
		loadPerPolicy: loadPer, kernelBytes: bytes, denies: hook.Denies(),
	}, set, nil)
}

// skipped records rows that cannot be measured on this kernel.
func (m *meter) skipped(impl Implementation, mode string, sizes []int, why string) {
	for _, n := range sizes {
		for _, kind := range []CgroupKind{CgroupEnforced, CgroupOther} {
			m.res.Exec = append(m.res.Exec, ExecResult{Impl: impl, Mode: mode, Policies: n, Cgroup: kind, Skipped: why})
		}
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}
