package enforcer

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"

	"github.com/execgate/execgate/bpf"
)

// Config sizes the maps and says where state is pinned.
type Config struct {
	// PinDir is a directory on bpffs (e.g. /sys/fs/bpf/execgate). Empty
	// means nothing is pinned: state dies with the process (tests only).
	PinDir string
	Attach AttachMode
	// MaxBindings bounds cgroups bound at once: pods x (containers + 1).
	// The mount namespace pins (one per cgroup that ran a checked exec) get
	// pinsPerBinding times as many entries.
	MaxBindings uint32
	// MaxExactEntries bounds exact allowlist entries on the node.
	MaxExactEntries uint32
	// MaxPrefixEntries bounds directory-prefix entries on the node.
	MaxPrefixEntries uint32
	// NamespaceSharePercent bounds the part of each rule map (exact entries,
	// prefix entries, slots) the policies of one namespace may hold, so that
	// one tenant cannot fill the node for the others (share.go). 0 or 100:
	// no per-namespace bound.
	NamespaceSharePercent uint32
	// RingBufferBytes is the event ring size, a power of two >= page size.
	RingBufferBytes uint32
	// RuntimeMountNS is the mount namespace (the inode of /proc/PID/ns/mnt)
	// the container runtime runs in, where its re-exec of itself is exempt
	// (see runtime.go). 0: PID 1's, which is the host's for an agent with
	// hostPID (the agent's own where PID 1's cannot be read).
	RuntimeMountNS uint32
	// SandboxPaths are the executables a pod sandbox runs (the pause
	// image's entrypoint, "/pause"), allowed in every pod-level (union)
	// slot: the sandbox starts before any container of the pod is known.
	SandboxPaths []string
	Logger       *zap.Logger
}

// Defaults for a node with up to 256 pods of 8 containers. A hash map's
// bucket array is allocated for max_entries up front (BPF_F_NO_PREALLOC only
// defers the entries), so these are sizing decisions, not free headroom:
//   - exact entries: 256 pods each with a policy of its own, 50 paths in 2
//     slots (the container's and the pod's union), is 25,600, plus a second
//     version during an update: 32,768 (512 KiB of buckets);
//   - the event ring: ~2,000 typical events (~250 bytes), 128 of the largest
//     (a PATH_MAX path and full argv); the agent drains it continuously and
//     a full ring drops events, counted, never decisions.
const (
	DefaultMaxBindings      = 256 * 9
	DefaultMaxExactEntries  = 32768
	DefaultMaxPrefixEntries = 4096
	DefaultRingBufferBytes  = 512 << 10
)

// pinsPerBinding sizes mntns_pins. A pod's cgroups hold one pin each, and a
// pin lives as long as the binding that decided it: restarts of a container
// that is never bound by name add pins until its pod is unbound. A full map
// pins nothing, so the kernel fails closed.
const pinsPerBinding = 4

func (c *Config) setDefaults() error {
	if c.Attach == "" {
		c.Attach = AttachAuto
	}
	if _, err := ParseAttachMode(string(c.Attach)); err != nil {
		return err
	}
	if c.MaxBindings == 0 {
		c.MaxBindings = DefaultMaxBindings
	}
	if c.MaxExactEntries == 0 {
		c.MaxExactEntries = DefaultMaxExactEntries
	}
	if c.MaxPrefixEntries == 0 {
		c.MaxPrefixEntries = DefaultMaxPrefixEntries
	}
	if c.NamespaceSharePercent > 100 {
		return fmt.Errorf("namespace share %d%% must be at most 100 (0 or 100: no per-namespace bound)", c.NamespaceSharePercent)
	}
	if c.RingBufferBytes == 0 {
		c.RingBufferBytes = DefaultRingBufferBytes
	}
	rb := c.RingBufferBytes
	if rb < uint32(os.Getpagesize()) || rb&(rb-1) != 0 {
		return fmt.Errorf("ring buffer size %d must be a power of two of at least one page", rb)
	}
	for i, p := range c.SandboxPaths {
		if err := ValidatePath(p); err != nil {
			return fmt.Errorf("sandbox path[%d]: %w", i, err)
		}
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.RuntimeMountNS == 0 {
		ns, err := MountNamespace(1)
		if err != nil {
			// PID 1 out of reach (another user namespace, no CAP_SYS_PTRACE):
			// an agent on the host shares the runtime's namespace.
			own, ownErr := MountNamespace(os.Getpid())
			if ownErr != nil {
				return fmt.Errorf("the runtime's mount namespace: PID 1's: %w; the agent's: %w", err, ownErr)
			}
			c.Logger.Warn("PID 1's mount namespace cannot be read: the runtime is taken to run in the agent's", zap.Error(err))
			ns = own
		}
		c.RuntimeMountNS = ns
	}
	return nil
}

// Enforcer is the node's handle on the kernel program and its maps.
type Enforcer struct {
	cfg    Config
	log    *zap.Logger
	attach AttachMode
	argv   bool
	// refused lists the better modes the kernel refused, best first.
	refused []AttachRefusal

	coll     *ebpf.Collection
	runtime  *ebpf.Map // runtime_files: see runtime.go
	bindings *ebpf.Map
	pins     *ebpf.Map // written by the kernel; Unbind deletes what it no longer covers
	exact    *ebpf.Map
	prefix   *ebpf.Map
	stats    *ebpf.Map
	slotInfo *ebpf.Map
	grace    *ebpf.Map // ARRAY_OF_MAPS: updating it waits for an RCU grace period
	graceIn  *ebpf.Map
	links    []link.Link // one per program in progs, attach order
	progs    []string    // the programs hooked: one, or twins (see twinPrograms)
	key      bpf.ExecgateSiphashKey
	adopted  bool
	gate     *gateSupervisor // fanotify mode only

	mu       sync.Mutex // serialises every writer of the maps below and of the state
	policies map[PolicyKey]*policyState
	slots    map[uint32]*slotState
	binds    map[uint64]bindingState
	nextSlot uint32
	nExact   int
	nPrefix  int

	retired *lru.Cache[uint32, slotMeta] // slots of replaced versions, for late events
	reader  *ringbuf.Reader
	events  chan Event
	// eventsMu orders deliveries (ring buffer reader, gate readers) before
	// the channel's close: a sender never sends on a closed channel.
	eventsMu     sync.RWMutex
	eventsClosed bool
	readerDone   chan struct{}
	bootOffset   time.Duration
	userDrops    uint64
	closeOnce    sync.Once
}

// New loads the program or adopts the one pinned in cfg.PinDir, attaches it
// and starts reading events. The kernel keeps enforcing after Close: only
// Cleanup removes the program.
func New(cfg Config) (*Enforcer, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("enforcer config: %w", err)
	}
	e := &Enforcer{
		cfg:      cfg,
		log:      cfg.Logger,
		policies: map[PolicyKey]*policyState{},
		slots:    map[uint32]*slotState{},
		binds:    map[uint64]bindingState{},
		nextSlot: 1,
		events:   make(chan Event, 4096),
	}
	e.retired, _ = lru.New[uint32, slotMeta](4096)
	if err := e.load(); err != nil {
		e.closeFDs()
		return nil, err
	}
	if err := e.adoptState(); err != nil {
		e.closeFDs()
		return nil, fmt.Errorf("adopt pinned state: %w", err)
	}
	if err := e.startEvents(); err != nil {
		e.closeFDs()
		return nil, err
	}
	if e.attach == AttachFanotify && cfg.Attach == AttachFanotify {
		if err := GateAvailable(); err != nil { // asked for explicitly: say what it costs
			e.log.Warn("fanotify mode on a kernel the gate cannot serve: denials will be kills", zap.Error(err))
		}
	}
	if e.attach == AttachFanotify {
		if err := e.startGate(); err != nil {
			if cfg.Attach != AttachAuto {
				e.Close()
				return nil, err
			}
			// exec_kill's link is already in place: only EPERM is lost.
			e.refuse(AttachFanotify, err, AttachExecKill)
			e.attach = AttachExecKill
		}
	}
	e.log.Info("enforcer ready", zap.String("attach", string(e.attach)), zap.Bool("adopted", e.adopted),
		zap.Bool("argv", e.argv), zap.String("pinDir", cfg.PinDir), zap.Int("policies", len(e.policies)),
		zap.Int("bindings", len(e.binds)))
	return e, nil
}

// CapturesArgv says whether events carry the command line: exec_kill reads
// it from the new image's memory; the other modes read the exec syscall's
// argument, which needs bpf_task_pt_regs (5.15+).
func (e *Enforcer) CapturesArgv() bool { return e.argv || e.attach == AttachExecKill }

// Adopted reports whether state was taken over from a previous process.
func (e *Enforcer) Adopted() bool { return e.adopted }

func (e *Enforcer) load() error {
	if e.cfg.PinDir != "" {
		if err := EnsureBPFFS(e.cfg.PinDir); err != nil {
			return err
		}
	}
	// Before 5.11 the kernel charges BPF maps to RLIMIT_MEMLOCK (64 KiB
	// by default): without this every map create fails with EPERM there.
	// A no-op on kernels that account maps to the memory cgroup.
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("raise RLIMIT_MEMLOCK for BPF maps: %w", err)
	}
	e.argv = kernelHasTaskPtRegs()
	var errs []error
	modes := candidateModes(e.cfg.Attach)
	for i, mode := range modes {
		err := e.loadMode(mode)
		if err == nil {
			e.attach = mode
			return nil
		}
		e.closeFDs()
		e.coll, e.links, e.progs, e.slotInfo, e.grace, e.graceIn = nil, nil, nil, nil, nil, nil
		errs = append(errs, fmt.Errorf("%s: %w", mode, err))
		if i+1 < len(modes) {
			e.refuse(mode, err, modes[i+1])
		}
	}
	return fmt.Errorf("load exec program: %w", errors.Join(errs...))
}

func (e *Enforcer) loadMode(mode AttachMode) error {
	if err := modeAvailable(mode); err != nil {
		return err
	}
	if twins := twinPrograms[mode]; twins != nil {
		err := features.HaveMapType(ebpf.TaskStorage)
		if err == nil {
			if err = e.loadPrograms(mode, twins); err == nil {
				return nil
			}
			e.closeFDs()
			e.coll, e.links, e.progs, e.slotInfo, e.grace, e.graceIn = nil, nil, nil, nil, nil, nil
		}
		e.log.Warn("one copy of the exec program: an exec that preempts another inside it on the same CPU is not decided (counted as skipped)",
			zap.String("mode", string(mode)), zap.String("reason", "twin programs need task storage: "+refusalReason(err)))
	}
	return e.loadPrograms(mode, []string{programFor[mode]})
}

func (e *Enforcer) loadPrograms(mode AttachMode, progs []string) error {
	spec, err := bpf.LoadExecgate()
	if err != nil {
		return fmt.Errorf("load program spec: %w", err)
	}
	for name := range spec.Programs {
		if !slices.Contains(progs, name) && (mode != AttachFanotify || name != bpf.ExecgateProgExecgateGate) {
			delete(spec.Programs, name)
		}
	}
	if len(progs) == 1 { // only twins stamp: a kernel before 5.11 cannot create the map
		delete(spec.Maps, bpf.ExecgateMapDecided)
	}
	if err := spec.Variables[bpf.ExecgateVarHaveTaskPtRegs].Set(e.argv && mode != AttachExecKill); err != nil {
		return fmt.Errorf("set have_task_pt_regs: %w", err)
	}
	if err := spec.Variables[bpf.ExecgateVarRuntimeMntns].Set(e.cfg.RuntimeMountNS); err != nil {
		return fmt.Errorf("set runtime_mntns: %w", err)
	}
	sizes := map[string]uint32{
		bpf.ExecgateMapBindings:    e.cfg.MaxBindings,
		bpf.ExecgateMapExactRules:  e.cfg.MaxExactEntries,
		bpf.ExecgateMapPrefixRules: e.cfg.MaxPrefixEntries,
		bpf.ExecgateMapEvents:      e.cfg.RingBufferBytes,
		bpf.ExecgateMapMntnsPins:   pinsPerBinding * e.cfg.MaxBindings,
	}
	for name, size := range sizes {
		spec.Maps[name].MaxEntries = size
	}
	opts := ebpf.CollectionOptions{}
	if e.cfg.PinDir != "" {
		opts.Maps.PinPath = e.cfg.PinDir
		for _, name := range pinned {
			spec.Maps[name].Pinning = ebpf.PinByName
			e.adoptPinnedSize(spec.Maps[name])
			if err := e.retireIfIncompatible(spec.Maps[name]); err != nil {
				return err
			}
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, opts)
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return fmt.Errorf("load program: %+v", verr)
		}
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return fmt.Errorf("pinned maps in %s do not match this agent's program (remove them with --cleanup): %w", e.cfg.PinDir, err)
		}
		return fmt.Errorf("load program: %w", err)
	}
	e.coll = coll
	e.runtime = coll.Maps[bpf.ExecgateMapRuntimeFiles]
	e.bindings = coll.Maps[bpf.ExecgateMapBindings]
	e.pins = coll.Maps[bpf.ExecgateMapMntnsPins]
	e.exact = coll.Maps[bpf.ExecgateMapExactRules]
	e.prefix = coll.Maps[bpf.ExecgateMapPrefixRules]
	e.stats = coll.Maps[bpf.ExecgateMapStats]
	// Map sizes may come from an adopted pin: the kernel's are the truth.
	e.cfg.MaxBindings = e.bindings.MaxEntries()
	e.cfg.MaxExactEntries = e.exact.MaxEntries()
	e.cfg.MaxPrefixEntries = e.prefix.MaxEntries()

	if err := e.openSlotInfo(); err != nil {
		return err
	}
	if err := e.openGrace(); err != nil {
		return err
	}
	if err := e.loadKey(coll.Maps[bpf.ExecgateMapConfig]); err != nil {
		return err
	}
	// The key must be in the map before the program can run.
	e.progs = progs
	for i, name := range progs {
		l, err := e.attachProgram(mode, coll.Programs[name], linkPins[i])
		if err != nil {
			return err
		}
		e.links = append(e.links, l)
	}
	if len(progs) == 1 && e.cfg.PinDir != "" { // a twin an earlier agent left
		if l, err := link.LoadPinnedLink(filepath.Join(e.cfg.PinDir, linkPinTwin), nil); err == nil {
			_ = l.Unpin()
			l.Close()
		}
	}
	return nil
}

// Close stops reading events and releases this process's handles. Pinned
// state stays in the kernel and keeps enforcing.
func (e *Enforcer) Close() error {
	e.closeOnce.Do(func() {
		if e.gate != nil {
			e.gate.stop()
		}
		if e.reader != nil {
			e.reader.Close()
			<-e.readerDone
		}
		e.closeFDs()
	})
	return nil
}

func (e *Enforcer) closeFDs() {
	for _, l := range e.links {
		l.Close()
	}
	for _, m := range []*ebpf.Map{e.slotInfo, e.grace, e.graceIn} {
		if m != nil {
			m.Close()
		}
	}
	if e.coll != nil {
		e.coll.Close()
	}
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
