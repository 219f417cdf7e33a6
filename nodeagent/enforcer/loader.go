package enforcer

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/execgate/execgate/bpf"
)

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

// pinned lists the maps whose lifetime is the pin directory's, not the
// process's: everything the kernel program needs, plus slot metadata.
var pinned = []string{
	bpf.ExecgateMapBindings, bpf.ExecgateMapExactRules, bpf.ExecgateMapPrefixRules,
	bpf.ExecgateMapConfig, bpf.ExecgateMapStats, bpf.ExecgateMapEvents, bpf.ExecgateMapScratch,
	bpf.ExecgateMapMntnsPins, bpf.ExecgateMapRuntimeFiles,
}

const (
	linkPin     = "link"
	linkPinNext = "link_next" // bpffs refuses dots in names
	linkPinTwin = "link_b"    // the second twin program's link
	slotInfoMap = "slot_info"
)

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

// AttachMode reports the attach mode in use.
func (e *Enforcer) AttachMode() AttachMode { return e.attach }

// CapturesArgv says whether events carry the command line: exec_kill reads
// it from the new image's memory; the other modes read the exec syscall's
// argument, which needs bpf_task_pt_regs (5.15+).
func (e *Enforcer) CapturesArgv() bool { return e.argv || e.attach == AttachExecKill }

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

// adoptPinnedSize keeps the size of an already pinned map, so a changed flag
// does not make the pin "incompatible" and force a protection gap.
func (e *Enforcer) adoptPinnedSize(ms *ebpf.MapSpec) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(e.cfg.PinDir, ms.Name), nil)
	if err != nil {
		return
	}
	defer m.Close()
	if m.MaxEntries() != ms.MaxEntries {
		e.log.Warn("keeping the size of the pinned map; run --cleanup to resize",
			zap.String("map", ms.Name), zap.Uint32("pinned", m.MaxEntries()), zap.Uint32("requested", ms.MaxEntries))
		ms.MaxEntries = m.MaxEntries()
	}
}

// slotInfo value: metadata of one slot, read back when a new process adopts
// the pins. The kernel never reads it.
type slotInfoValue struct {
	Version   uint64
	Mode      uint8
	HasPrefix uint8
	_         [6]uint8
	Policy    [MaxPolicyKeyLen]byte
	Container [256]byte
}

func (e *Enforcer) openSlotInfo() error {
	spec := &ebpf.MapSpec{
		Name:       slotInfoMap,
		Type:       ebpf.Hash,
		KeySize:    4,
		ValueSize:  uint32(binary.Size(slotInfoValue{})),
		MaxEntries: 2*e.cfg.MaxBindings + 64,
		Flags:      unix.BPF_F_NO_PREALLOC,
	}
	opts := ebpf.MapOptions{}
	if e.cfg.PinDir != "" {
		spec.Pinning = ebpf.PinByName
		opts.PinPath = e.cfg.PinDir
		e.adoptPinnedSize(spec)
	}
	m, err := ebpf.NewMapWithOptions(spec, opts)
	if err != nil {
		return fmt.Errorf("create slot_info map: %w", err)
	}
	e.slotInfo = m
	return nil
}

func (e *Enforcer) openGrace() error {
	inner := &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	in, err := ebpf.NewMap(inner)
	if err != nil {
		return fmt.Errorf("create grace inner map: %w", err)
	}
	outer, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 1, InnerMap: inner})
	if err != nil {
		in.Close()
		return fmt.Errorf("create grace map: %w", err)
	}
	e.grace, e.graceIn = outer, in
	return nil
}

// waitGrace returns once every program run that started before the call has
// finished: the kernel calls synchronize_rcu() after a map-in-map update, and
// our program runs under rcu_read_lock.
func (e *Enforcer) waitGrace() error {
	if err := e.grace.Update(uint32(0), e.graceIn, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("wait for rcu grace period: %w", err)
	}
	return nil
}

func (e *Enforcer) loadKey(m *ebpf.Map) error {
	var k bpf.ExecgateSiphashKey
	if err := m.Lookup(uint32(0), &k); err != nil {
		return fmt.Errorf("read hash key: %w", err)
	}
	if k.K0 != 0 || k.K1 != 0 {
		e.key = k
		return nil
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return fmt.Errorf("generate hash key: %w", err)
	}
	k.K0 = binary.LittleEndian.Uint64(raw[:8])
	k.K1 = binary.LittleEndian.Uint64(raw[8:])
	if err := m.Update(uint32(0), &k, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write hash key: %w", err)
	}
	e.key = k
	return nil
}

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

// EnsureBPFFS makes dir usable for pins: it must be on a bpf filesystem; if
// /sys/fs/bpf is not mounted yet, it is mounted.
func EnsureBPFFS(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("pin directory %q must be absolute", dir)
	}
	onBPF := func(p string) bool {
		var st unix.Statfs_t
		return unix.Statfs(p, &st) == nil && st.Type == unix.BPF_FS_MAGIC
	}
	anc := dir
	for {
		if _, err := os.Stat(anc); err == nil {
			break
		}
		anc = filepath.Dir(anc)
	}
	if !onBPF(anc) {
		const std = "/sys/fs/bpf"
		if dir != std && !strings.HasPrefix(dir, std+"/") {
			return fmt.Errorf("pin directory %s is not on a bpf filesystem", dir)
		}
		if err := unix.Mount("bpf", std, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at %s: %w", std, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory: %w", err)
	}
	return nil
}

// cleanupWait bounds how long Cleanup waits for the kernel to free the link.
const cleanupWait = 10 * time.Second

// Cleanup removes every pin execgate made in dir and returns once the kernel
// has freed the link, so the program is off the exec hook: enforcement has
// stopped. The kernel frees an unpinned link from a workqueue, a moment later;
// a link another process still holds is never freed, which is an error.
func Cleanup(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read pin directory: %w", err)
	}
	// A link's last reference drops at once, but the kernel detaches it
	// from a workqueue later, and only then puts its program: so wait for
	// the programs to go, not the links.
	var progs []ebpf.ProgramID
	for _, name := range []string{linkPin, linkPinNext, linkPinTwin, linkPinTwin + "_next"} {
		if l, err := link.LoadPinnedLink(filepath.Join(dir, name), nil); err == nil {
			if info, err := l.Info(); err == nil {
				progs = append(progs, info.Program)
			}
			l.Close()
		}
	}
	var errs []error
	for _, ent := range entries {
		if err := os.Remove(filepath.Join(dir, ent.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(dir); err != nil {
		errs = append(errs, err)
	}
	deadline := time.Now().Add(cleanupWait)
	for _, id := range progs {
		for {
			p, err := ebpf.NewProgramFromID(id)
			if err != nil {
				break // freed (ErrNotExist), or not ours to see any more
			}
			p.Close()
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("exec program %d is still loaded %s after its pins were removed: another process holds it", id, cleanupWait))
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
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
