package enforcer

import (
	"errors"
	"fmt"
	"math/bits"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/dchest/siphash"
	"go.uber.org/zap"

	"github.com/execgate/execgate/bpf"
)

// WildcardContainer names the rules for containers a policy does not list.
const WildcardContainer = "*"

// slotMeta is what an event needs to name the policy that decided it.
type slotMeta struct {
	key       PolicyKey
	version   uint64
	mode      Mode
	container string
}

type slotState struct {
	id        uint32
	meta      slotMeta
	hasPrefix bool
	exact     []bpf.ExecgateExactKey
	prefix    []bpf.ExecgatePrefixKey
}

type policyState struct {
	key     PolicyKey
	version uint64
	digest  string // "" when adopted from pinned maps: the content is not recorded there
	mode    Mode
	slots   map[string]uint32 // container name ("" = union) -> slot
}

type bindingState struct {
	key       PolicyKey
	container string
}

// PutPolicy loads a policy version. An older version, or the loaded version
// with the loaded digest, is a no-op (applied=false): late or repeated pushes
// never roll back. The loaded version with another digest replaces the
// loaded content: the same generation can only differ when one sender had
// part of it, and ignoring it would keep the part. A version adopted from
// the pins has no digest: the first one pushed is taken without a swap when
// the kernel maps hold exactly its content, else it replaces them. For a
// loaded policy every bound cgroup switches to the new content atomically.
func (e *Enforcer) PutPolicy(p PolicyVersion) (applied bool, err error) {
	if err := p.Validate(); err != nil {
		return false, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()

	cur := e.policies[p.Key]
	if cur != nil && (p.Version < cur.version || (p.Version == cur.version && p.Digest == cur.digest)) {
		return false, nil
	}
	if cur != nil && p.Version == cur.version && cur.digest == "" && e.holdsLocked(cur, p) {
		// Adopted after a restart (pins record no digest) and the kernel already
		// holds exactly this content: it is this digest, nothing to swap.
		cur.digest = p.Digest
		return false, nil
	}
	next, err := e.buildSlots(p)
	if err != nil {
		return false, err
	}
	if cur != nil {
		if err := e.switchBindings(p.Key, next); err != nil {
			e.dropSlots(next.slots)
			return false, err
		}
		if err := e.retire(cur); err != nil {
			// The new version is in force; the old entries leak until the
			// next sweep. Report, but do not undo a finished switch.
			e.log.Error("delete replaced policy version", zap.String("policy", string(p.Key)), zap.Error(err))
		}
	}
	e.policies[p.Key] = next
	return true, nil
}

// holdsLocked reports whether the loaded slots of cur are exactly p's content: the same
// mode, the same slots by container, and in each the same entries, compared by the keys
// the kernel maps hold (the paths themselves are not pinned, their keyed hashes are).
func (e *Enforcer) holdsLocked(cur *policyState, p PolicyVersion) bool {
	compiled := compileSlots(p, e.cfg.SandboxPaths)
	if cur.mode != p.Mode || len(compiled) != len(cur.slots) {
		return false
	}
	for name, c := range compiled {
		s := e.slots[cur.slots[name]]
		if s == nil || len(s.exact) != len(c.exact) || len(s.prefix) != len(c.prefixes) {
			return false
		}
		exact := make(map[bpf.ExecgateExactKey]bool, len(s.exact))
		for _, k := range s.exact {
			exact[k] = true
		}
		for _, path := range c.exact {
			if !exact[bpf.ExecgateExactKey{Slot: s.id, Hash: e.hashPath(path)}] {
				return false
			}
		}
		prefix := make(map[bpf.ExecgatePrefixKey]bool, len(s.prefix))
		for _, k := range s.prefix {
			prefix[k] = true
		}
		for _, path := range c.prefixes {
			if !prefix[prefixKey(s.id, path)] {
				return false
			}
		}
	}
	return true
}

// ErrInvalid wraps every validation error.
var ErrInvalid = errors.New("invalid input")

// ErrNotFound reports an unknown policy or binding.
var ErrNotFound = errors.New("not found")

// ErrInUse reports a policy that cgroups are still bound to.
var ErrInUse = errors.New("policy still bound")

// buildSlots writes every slot of p beside whatever is loaded. On error
// nothing it wrote remains.
func (e *Enforcer) buildSlots(p PolicyVersion) (*policyState, error) {
	compiled := compileSlots(p, e.cfg.SandboxPaths)
	names := make([]string, 0, len(compiled))
	nExact, nPrefix := 0, 0
	for name, c := range compiled {
		names = append(names, name)
		nExact += len(c.exact)
		nPrefix += len(c.prefixes)
	}
	sort.Strings(names)
	if err := e.checkShareLocked(p, nExact, nPrefix, len(names)); err != nil {
		return nil, err
	}
	if e.nExact+nExact > int(e.cfg.MaxExactEntries) {
		return nil, fmt.Errorf("%w: policy %s needs %d exact entries, %d of %d in use", ErrCapacity, p.Key, nExact, e.nExact, e.cfg.MaxExactEntries)
	}
	if e.nPrefix+nPrefix > int(e.cfg.MaxPrefixEntries) {
		return nil, fmt.Errorf("%w: policy %s needs %d prefix entries, %d of %d in use", ErrCapacity, p.Key, nPrefix, e.nPrefix, e.cfg.MaxPrefixEntries)
	}
	if len(e.slots)+len(names) > int(e.slotInfo.MaxEntries()) {
		return nil, fmt.Errorf("%w: %d allowlist slots in use", ErrCapacity, len(e.slots))
	}
	ps := &policyState{key: p.Key, version: p.Version, digest: p.Digest, mode: p.Mode, slots: map[string]uint32{}}
	for _, name := range names {
		s := &slotState{id: e.allocSlot(), meta: slotMeta{key: p.Key, version: p.Version, mode: p.Mode, container: name}}
		if err := e.writeSlot(s, compiled[name]); err != nil {
			e.deleteSlotEntries(s)
			e.dropSlots(ps.slots)
			return nil, fmt.Errorf("load policy %s container %q: %w", p.Key, name, err)
		}
		e.slots[s.id] = s
		ps.slots[name] = s.id
	}
	return ps, nil
}

func (e *Enforcer) allocSlot() uint32 {
	for {
		id := e.nextSlot
		e.nextSlot++
		if e.nextSlot == 0 {
			e.nextSlot = 1
		}
		if id == 0 {
			continue // 0 is never a slot: a zeroed binding matches nothing
		}
		if _, used := e.slots[id]; !used {
			return id
		}
	}
}

func (e *Enforcer) writeSlot(s *slotState, c compiledRules) error {
	one := uint8(1)
	for _, p := range c.exact {
		k := bpf.ExecgateExactKey{Slot: s.id, Hash: e.hashPath(p)}
		if err := e.exact.Update(&k, &one, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write exact entry %q: %w", p, err)
		}
		s.exact = append(s.exact, k)
		e.nExact++
	}
	for _, p := range c.prefixes {
		k := prefixKey(s.id, p)
		if err := e.prefix.Update(&k, &one, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write prefix entry %q: %w", p, err)
		}
		s.prefix = append(s.prefix, k)
		e.nPrefix++
	}
	s.hasPrefix = len(s.prefix) > 0
	info := slotInfoValue{Version: s.meta.version, Mode: uint8(s.meta.mode)}
	if s.hasPrefix {
		info.HasPrefix = 1
	}
	copy(info.Policy[:], s.meta.key)
	copy(info.Container[:], s.meta.container)
	if err := e.slotInfo.Update(s.id, &info, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write slot info: %w", err)
	}
	return nil
}

// HashPath is the SipHash-2-4 of a path under this node's key: the value the
// kernel program computes for the file being executed.
func (e *Enforcer) hashPath(p string) uint64 {
	return siphash.Hash(e.key.K0, e.key.K1, []byte(p))
}

func prefixKey(slot uint32, p string) bpf.ExecgatePrefixKey {
	k := bpf.ExecgatePrefixKey{Prefixlen: uint32(32 + 8*len(p))}
	// LPM keys compare bytes in order, so the slot is stored big endian.
	k.SlotBe = bits.ReverseBytes32(slot)
	copy(k.Path[:], p)
	return k
}

func (e *Enforcer) deleteSlotEntries(s *slotState) {
	for i := range s.exact {
		if err := e.exact.Delete(&s.exact[i]); err == nil {
			e.nExact--
		}
	}
	for i := range s.prefix {
		if err := e.prefix.Delete(&s.prefix[i]); err == nil {
			e.nPrefix--
		}
	}
	s.exact, s.prefix = nil, nil
	_ = e.slotInfo.Delete(s.id)
}

func (e *Enforcer) dropSlots(slots map[string]uint32) {
	for _, id := range slots {
		if s := e.slots[id]; s != nil {
			e.deleteSlotEntries(s)
			delete(e.slots, id)
		}
	}
}

// slotFor picks the slot a container of policy ps is bound to: its own
// rules, else the wildcard rules (which compileSlots always creates, empty
// when the policy has none: an unlisted container may run nothing).
func (ps *policyState) slotFor(container string) uint32 {
	if id, ok := ps.slots[container]; ok {
		return id
	}
	return ps.slots[WildcardContainer]
}

func (e *Enforcer) bindingValue(ps *policyState, container string) bpf.ExecgateBinding {
	id := ps.slotFor(container)
	v := bpf.ExecgateBinding{Slot: id, Mode: uint8(ps.mode)}
	if s := e.slots[id]; s != nil && s.hasPrefix {
		v.Flags = uint8(bpf.ExecgateBindingFlagsBINDING_HAS_PREFIX)
	}
	return v
}

// switchBindings points every cgroup bound to key at next. Each map update
// replaces one value atomically; on error the switched ones are put back.
func (e *Enforcer) switchBindings(key PolicyKey, next *policyState) error {
	cur := e.policies[key]
	var done []uint64
	for cg, b := range e.binds {
		if b.key != key {
			continue
		}
		v := e.bindingValue(next, b.container)
		if err := e.bindings.Update(cg, &v, ebpf.UpdateExist); err != nil {
			for _, back := range done {
				old := e.bindingValue(cur, e.binds[back].container)
				_ = e.bindings.Update(back, &old, ebpf.UpdateExist)
			}
			return fmt.Errorf("switch cgroup %d to policy %s version %d: %w", cg, key, next.version, err)
		}
		done = append(done, cg)
	}
	return nil
}

// retire deletes a replaced or removed version once no program run can
// still be using it.
func (e *Enforcer) retire(ps *policyState) error {
	if err := e.waitGrace(); err != nil {
		return err
	}
	for _, id := range ps.slots {
		if s := e.slots[id]; s != nil {
			e.retired.Add(id, s.meta)
			e.deleteSlotEntries(s)
			delete(e.slots, id)
		}
	}
	return nil
}

// DeletePolicy removes a policy that no cgroup is bound to.
func (e *Enforcer) DeletePolicy(key PolicyKey) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	ps := e.policies[key]
	if ps == nil {
		return fmt.Errorf("policy %s: %w", key, ErrNotFound)
	}
	for cg, b := range e.binds {
		if b.key == key {
			return fmt.Errorf("policy %s: cgroup %d: %w", key, cg, ErrInUse)
		}
	}
	if err := e.retire(ps); err != nil {
		return err
	}
	delete(e.policies, key)
	return nil
}

// Bind makes cgroupID (and, through the ancestor walk, every cgroup below
// it) run under policy key with the rules of container ("" = the union of
// all containers, for a pod-level cgroup). Rebinding replaces atomically.
func (e *Enforcer) Bind(cgroupID uint64, key PolicyKey, container string) error {
	if cgroupID <= 1 {
		return fmt.Errorf("%w: cgroup id %d is the root or invalid: binding it would cover the whole node", ErrInvalid, cgroupID)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	ps := e.policies[key]
	if ps == nil {
		return fmt.Errorf("bind cgroup %d: policy %s: %w", cgroupID, key, ErrNotFound)
	}
	if _, exists := e.binds[cgroupID]; !exists && len(e.binds) >= int(e.cfg.MaxBindings) {
		return fmt.Errorf("%w: %d cgroups bound", ErrCapacity, len(e.binds))
	}
	v := e.bindingValue(ps, container)
	if err := e.bindings.Update(cgroupID, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("bind cgroup %d: %w", cgroupID, err)
	}
	e.binds[cgroupID] = bindingState{key: key, container: container}
	return nil
}

// Unbind removes a cgroup's binding and its mount namespace pin, and for a
// pod-level binding the pins of the cgroups it covered; an unknown cgroup is
// not an error. Bound again, a cgroup pins the namespace of its next exec.
func (e *Enforcer) Unbind(cgroupID uint64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.bindings.Delete(cgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unbind cgroup %d: %w", cgroupID, err)
	}
	b, wasBound := e.binds[cgroupID]
	delete(e.binds, cgroupID)
	var err error
	if wasBound && b.container == UnionContainer {
		err = e.prunePinsLocked(cgroupID)
	} else if err = e.pins.Delete(cgroupID); errors.Is(err, ebpf.ErrKeyNotExist) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("unbind cgroup %d: mount namespace pins: %w", cgroupID, err)
	}
	return nil
}

// prunePinsLocked deletes the pin of cgroup unbound and every pin that no
// binding covers any more: neither its own cgroup nor the one whose binding
// decided it is bound. Those cgroups are not checked, so nothing reads the
// pins; a pin taken while Unbind ran is caught by the next scan. A scan
// visits every bucket of the map, so only pod-level unbinds and adoption
// make one.
func (e *Enforcer) prunePinsLocked(unbound uint64) error {
	var (
		cg    uint64
		pin   bpf.ExecgateMntnsPin
		stale []uint64
	)
	it := e.pins.Iterate()
	for it.Next(&cg, &pin) {
		_, own := e.binds[cg]
		_, decider := e.binds[pin.BoundCgroupId]
		if cg == unbound || (!own && !decider) {
			stale = append(stale, cg)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate: %w", err)
	}
	for _, cg := range stale {
		if err := e.pins.Delete(cg); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete the pin of cgroup %d: %w", cg, err)
		}
	}
	return nil
}

// Binding says what a cgroup is bound to.
type Binding struct {
	CgroupID  uint64
	Policy    PolicyKey
	Container string
}

// Bindings lists every bound cgroup.
func (e *Enforcer) Bindings() []Binding {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Binding, 0, len(e.binds))
	for cg, b := range e.binds {
		out = append(out, Binding{CgroupID: cg, Policy: b.key, Container: b.container})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CgroupID < out[j].CgroupID })
	return out
}

// LoadedPolicy describes one loaded policy version.
type LoadedPolicy struct {
	Key     PolicyKey
	Version uint64
	Digest  string
	Mode    Mode
	Slots   int
	Entries int
}

// Policies lists the loaded policies.
func (e *Enforcer) Policies() []LoadedPolicy {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]LoadedPolicy, 0, len(e.policies))
	for _, ps := range e.policies {
		lp := LoadedPolicy{Key: ps.key, Version: ps.version, Digest: ps.digest, Mode: ps.mode, Slots: len(ps.slots)}
		for _, id := range ps.slots {
			if s := e.slots[id]; s != nil {
				lp.Entries += len(s.exact) + len(s.prefix)
			}
		}
		out = append(out, lp)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// PolicyDigestOf reports the digest of the loaded version of key.
func (e *Enforcer) PolicyDigestOf(key PolicyKey) (string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ps := e.policies[key]; ps != nil {
		return ps.digest, true
	}
	return "", false
}

// PolicyVersionOf reports the loaded version of key.
func (e *Enforcer) PolicyVersionOf(key PolicyKey) (uint64, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ps := e.policies[key]; ps != nil {
		return ps.version, true
	}
	return 0, false
}
