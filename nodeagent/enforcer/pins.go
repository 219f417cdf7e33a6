package enforcer

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/execgate/execgate/bpf"
)

// Pins: what outlives the agent in bpffs, and taking it over.

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

// disposable are the pinned maps whose content a new agent may lose: counters
// (Prometheus sees a reset), working memory, the event ring, and the runtime
// executables (looked up again at start). Their layout changes with the
// program (a new counter); an old pin of another layout is replaced, not a
// reason to stop. Bindings, rules, pins and the key are state: an
// incompatible one still stops the load.
var disposable = map[string]bool{
	bpf.ExecgateMapStats: true, bpf.ExecgateMapScratch: true, bpf.ExecgateMapEvents: true,
	bpf.ExecgateMapRuntimeFiles: true,
}

// retireIfIncompatible unpins a disposable map whose pinned layout is not
// ms's, so the load creates and pins a new one. The running program keeps
// its own until its link is replaced.
func (e *Enforcer) retireIfIncompatible(ms *ebpf.MapSpec) error {
	if !disposable[ms.Name] {
		return nil
	}
	path := filepath.Join(e.cfg.PinDir, ms.Name)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		return nil // none pinned (or unreadable: the load says so)
	}
	defer m.Close()
	cerr := ms.Compatible(m)
	if cerr == nil {
		return nil
	}
	e.log.Warn("replacing a pinned map of an older layout (its content is disposable)", zap.String("map", ms.Name), zap.Error(cerr))
	if err := m.Unpin(); err != nil {
		return fmt.Errorf("unpin %s of an older layout: %w", path, err)
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
