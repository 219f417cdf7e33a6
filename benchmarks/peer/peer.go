package peer

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Hook is where a peer policy's program is attached.
type Hook string

const (
	// HookExecKill is tp_btf/sched_process_exec: loads on every kernel with
	// BTF, denies by SIGKILL. Tracepoints have no attach limit.
	HookExecKill Hook = "exec_kill"
	// HookFmodRet is fmod_ret/security_bprm_creds_for_exec: a trampoline,
	// so at most BPF_MAX_TRAMP_LINKS (38) programs attach to it.
	HookFmodRet Hook = "fmod_ret"
)

// Denies reports how a refused exec looks on hook.
func (h Hook) Denies() string {
	if h == HookExecKill {
		return "SIGKILL"
	}
	return "EPERM"
}

// MaxPathLen is the longest allowlist entry (the key holds a NUL).
const MaxPathLen = len(PeerPathKey{}.Path) - 1

var programFor = map[Hook]string{
	HookExecKill: PeerProgPeerExecKill,
	HookFmodRet:  PeerProgPeerFmodRet,
}

var (
	specOnce sync.Once
	spec     *ebpf.CollectionSpec
	specErr  error
)

// Policy is one loaded peer policy: its own program, its own cgroup map and
// its own allowlist map, and the link that hooks the program while attached.
type Policy struct {
	hook Hook
	coll *ebpf.Collection
	prog *ebpf.Program
	lnk  link.Link
}

// Load loads a policy program allowing paths to the tasks of cgroupIDs and
// attaches it to hook. Close detaches it.
func Load(hook Hook, paths []string, cgroupIDs []uint64) (*Policy, error) {
	name, ok := programFor[hook]
	if !ok {
		return nil, fmt.Errorf("unknown peer hook %q", hook)
	}
	for _, p := range paths {
		if p == "" || len(p) > MaxPathLen {
			return nil, fmt.Errorf("allowlist path %q must be 1-%d bytes", p, MaxPathLen)
		}
	}
	specOnce.Do(func() { spec, specErr = LoadPeer() })
	if specErr != nil {
		return nil, fmt.Errorf("load peer spec: %w", specErr)
	}
	s := spec.Copy()
	for prog := range s.Programs {
		if prog != name {
			delete(s.Programs, prog)
		}
	}
	s.Maps[PeerMapAllowlist].MaxEntries = uint32(max(len(paths), 1))
	s.Maps[PeerMapCgroups].MaxEntries = uint32(max(len(cgroupIDs), 1))
	coll, err := ebpf.NewCollection(s)
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load peer program: %+v", verr)
		}
		return nil, fmt.Errorf("load peer program: %w", err)
	}
	p := &Policy{hook: hook, coll: coll, prog: coll.Programs[name]}
	one := uint8(1)
	for _, path := range paths {
		var k PeerPathKey
		for i := 0; i < len(path); i++ {
			k.Path[i] = int8(path[i])
		}
		if err := coll.Maps[PeerMapAllowlist].Update(&k, &one, ebpf.UpdateAny); err != nil {
			p.Close()
			return nil, fmt.Errorf("write allowlist entry %q: %w", path, err)
		}
	}
	for _, id := range cgroupIDs {
		if err := coll.Maps[PeerMapCgroups].Update(id, &one, ebpf.UpdateAny); err != nil {
			p.Close()
			return nil, fmt.Errorf("write cgroup %d: %w", id, err)
		}
	}
	if err := p.Attach(); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// Attach hooks the program (again); a no-op while attached.
func (p *Policy) Attach() error {
	if p.lnk != nil {
		return nil
	}
	opts := link.TracingOptions{Program: p.prog}
	if p.hook == HookFmodRet {
		opts.AttachType = ebpf.AttachModifyReturn
	}
	l, err := link.AttachTracing(opts)
	if err != nil {
		return fmt.Errorf("attach peer program to %s: %w", p.hook, err)
	}
	p.lnk = l
	return nil
}

// Detach unhooks the program and keeps it and its maps loaded.
func (p *Policy) Detach() error {
	if p.lnk == nil {
		return nil
	}
	err := p.lnk.Close()
	p.lnk = nil
	return err
}

// Program is the policy's program (for its run-time statistics).
func (p *Policy) Program() *ebpf.Program { return p.prog }

// KernelBytes is the memory the kernel charges for the policy's maps and
// program (memlock).
func (p *Policy) KernelBytes() (uint64, error) {
	var total uint64
	for name, m := range p.coll.Maps {
		info, err := m.Info()
		if err != nil {
			return 0, fmt.Errorf("map %s info: %w", name, err)
		}
		if b, ok := info.Memlock(); ok {
			total += b
		}
	}
	info, err := p.prog.Info()
	if err != nil {
		return 0, fmt.Errorf("program info: %w", err)
	}
	if b, ok := info.Memlock(); ok {
		total += b
	}
	return total, nil
}

// Close detaches the program and frees it and its maps.
func (p *Policy) Close() error {
	err := p.Detach()
	p.coll.Close()
	return err
}
