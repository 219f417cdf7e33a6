package enforcer

import (
	"errors"
	"fmt"
	"math/bits"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"

	"github.com/execgate/execgate/bpf"
)

// adoptState rebuilds the in-memory view from pinned maps after a restart,
// and finishes whatever a killed predecessor left half done: entries of
// slots it never recorded are deleted, and cgroups still bound to an older
// version of a policy move to the newest one.
func (e *Enforcer) adoptState() error {
	var (
		id   uint32
		info slotInfoValue
	)
	it := e.slotInfo.Iterate()
	for it.Next(&id, &info) {
		e.slots[id] = &slotState{id: id, hasPrefix: info.HasPrefix == 1, meta: slotMeta{
			key: PolicyKey(cString(info.Policy[:])), version: info.Version,
			mode: Mode(info.Mode), container: cString(info.Container[:]),
		}}
		if id >= e.nextSlot {
			e.nextSlot = id + 1
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate slot_info: %w", err)
	}
	if err := e.adoptEntries(); err != nil {
		return err
	}

	// The newest version of each key is current.
	for _, s := range e.slots {
		ps := e.policies[s.meta.key]
		if ps == nil || s.meta.version > ps.version {
			ps = &policyState{key: s.meta.key, version: s.meta.version, mode: s.meta.mode, slots: map[string]uint32{}}
			e.policies[s.meta.key] = ps
		}
	}
	for _, s := range e.slots {
		// Two slots of one version and container: a predecessor killed while
		// it replaced that version's content (same generation, another
		// digest). The later one wins: slot ids are allocated increasing.
		if ps := e.policies[s.meta.key]; ps.version == s.meta.version {
			if cur, ok := ps.slots[s.meta.container]; !ok || s.id > cur {
				ps.slots[s.meta.container] = s.id
			}
		}
	}

	var (
		cg uint64
		b  bpf.ExecgateBinding
	)
	bit := e.bindings.Iterate()
	var stale []uint64
	for bit.Next(&cg, &b) {
		s := e.slots[b.Slot]
		if s == nil {
			e.log.Error("pinned binding points at an unknown allowlist; keeping it until the agent rebinds or sweeps it",
				zap.Uint64("cgroup", cg), zap.Uint32("slot", b.Slot))
			e.binds[cg] = bindingState{}
			continue
		}
		e.binds[cg] = bindingState{key: s.meta.key, container: s.meta.container}
		if e.policies[s.meta.key].slotFor(s.meta.container) != b.Slot {
			stale = append(stale, cg)
		}
	}
	if err := bit.Err(); err != nil {
		return fmt.Errorf("iterate bindings: %w", err)
	}
	for _, cg := range stale {
		bs := e.binds[cg]
		v := e.bindingValue(e.policies[bs.key], bs.container)
		if err := e.bindings.Update(cg, &v, ebpf.UpdateExist); err != nil {
			return fmt.Errorf("move cgroup %d to the newest version of %s: %w", cg, bs.key, err)
		}
	}
	// Pins a predecessor killed inside Unbind left behind.
	if err := e.prunePinsLocked(0); err != nil {
		return fmt.Errorf("prune mount namespace pins: %w", err)
	}
	var old []*policyState
	for _, s := range e.slots {
		if ps := e.policies[s.meta.key]; ps.slots[s.meta.container] != s.id {
			old = append(old, &policyState{key: s.meta.key, version: s.meta.version, slots: map[string]uint32{s.meta.container: s.id}})
		}
	}
	for _, ps := range old {
		if err := e.retire(ps); err != nil {
			return err
		}
	}
	return nil
}

func (e *Enforcer) adoptEntries() error {
	var (
		ek    bpf.ExecgateExactKey
		pk    bpf.ExecgatePrefixKey
		val   uint8
		drop  []bpf.ExecgateExactKey
		dropP []bpf.ExecgatePrefixKey
	)
	it := e.exact.Iterate()
	for it.Next(&ek, &val) {
		if s := e.slots[ek.Slot]; s != nil {
			s.exact = append(s.exact, ek)
			e.nExact++
		} else {
			drop = append(drop, ek)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate exact rules: %w", err)
	}
	pit := e.prefix.Iterate()
	for pit.Next(&pk, &val) {
		slot := bits.ReverseBytes32(pk.SlotBe)
		if s := e.slots[slot]; s != nil {
			s.prefix = append(s.prefix, pk)
			e.nPrefix++
		} else {
			dropP = append(dropP, pk)
		}
	}
	if err := pit.Err(); err != nil {
		return fmt.Errorf("iterate prefix rules: %w", err)
	}
	// Entries without slot metadata were written by a process killed before
	// it recorded the slot: no binding can point at them.
	for i := range drop {
		if err := e.exact.Delete(&drop[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete orphan entry: %w", err)
		}
	}
	for i := range dropP {
		if err := e.prefix.Delete(&dropP[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete orphan prefix: %w", err)
		}
	}
	if len(drop)+len(dropP) > 0 {
		e.log.Info("deleted orphan allowlist entries", zap.Int("exact", len(drop)), zap.Int("prefix", len(dropP)))
	}
	return nil
}
