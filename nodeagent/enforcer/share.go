package enforcer

import (
	"fmt"
	"strings"
)

// Capacity sharing (issue 14.2). The rule maps are one pool per node, so without a share
// one namespace's policies could fill them and every later policy on the node, whoever
// owns it, would fail to load. A namespace may hold at most NamespaceSharePercent of each
// of exact entries, prefix entries and slots; the check counts what the namespace's other
// policies hold plus the new version, not the version it replaces (both are loaded for
// the moment of the switch, which the node-wide limits still bound).
//
// Deny-all versions (DenyAll) are exempt from the share and may use the slots that
// ordinary policies leave free (reservedSlots): a pod whose policy does not fit must
// still be bindable to one, or it would run unenforced.

// ErrNamespaceShare reports that a namespace reached its share of a map; it wraps
// ErrCapacity.
var ErrNamespaceShare = fmt.Errorf("%w: namespace share", ErrCapacity)

// reservedSlots are the slots (of slot_info's 2*MaxBindings+64) that only deny-all versions
// may use: each needs two (union and wildcard), so 32 policies can fail closed on a node
// whose slots ordinary policies filled. A tiny slot map keeps three quarters for ordinary
// policies.
func reservedSlots(maxSlots int) int { return min(64, maxSlots/4) }

// DenyAll is the version of key that allows nothing in Protect mode: no containers, so
// every container gets the empty wildcard slot. It is version 0, which any real version
// (a generation, at least 1) replaces in place: bindings switch atomically once the
// policy fits. It needs two slots and no rule entries.
func DenyAll(key PolicyKey) PolicyVersion {
	return PolicyVersion{Key: key, Version: 0, Mode: ModeProtect}
}

func (p PolicyVersion) isDenyAll() bool {
	return p.Version == 0 && p.Mode == ModeProtect && len(p.Containers) == 0
}

// namespaceOf is the namespace of a key "namespace/name"; a key without "/" is a
// namespace of its own.
func namespaceOf(key PolicyKey) string {
	ns, _, _ := strings.Cut(string(key), "/")
	return ns
}

// checkShareLocked refuses p when its namespace would exceed its share, or when an
// ordinary policy would take the reserved slots. Called with e.mu held, before anything
// is written.
func (e *Enforcer) checkShareLocked(p PolicyVersion, nExact, nPrefix, nSlots int) error {
	if p.isDenyAll() {
		return nil
	}
	maxSlots := int(e.slotInfo.MaxEntries())
	reserved := reservedSlots(maxSlots)
	if len(e.slots)+nSlots > maxSlots-reserved {
		return fmt.Errorf("%w: policy %s needs %d slots, %d of %d in use (%d kept for pods that fail closed)",
			ErrCapacity, p.Key, nSlots, len(e.slots), maxSlots, reserved)
	}
	pct := e.cfg.NamespaceSharePercent
	if pct == 0 || pct >= 100 {
		return nil
	}
	ns := namespaceOf(p.Key)
	var exact, prefix, slots int
	for key, ps := range e.policies {
		if key == p.Key || namespaceOf(key) != ns {
			continue
		}
		for _, id := range ps.slots {
			if s := e.slots[id]; s != nil {
				exact += len(s.exact)
				prefix += len(s.prefix)
				slots++
			}
		}
	}
	for _, c := range []struct {
		what            string
		used, need, max int
	}{
		{"exact entries", exact, nExact, int(e.cfg.MaxExactEntries)},
		{"prefix entries", prefix, nPrefix, int(e.cfg.MaxPrefixEntries)},
		{"slots", slots, nSlots, maxSlots - reserved},
	} {
		limit := c.max * int(pct) / 100
		if c.need > 0 && c.used+c.need > limit {
			return fmt.Errorf("%w: policy %s needs %d %s; namespace %s holds %d of its share of %d (%d%% of %d)",
				ErrNamespaceShare, p.Key, c.need, c.what, ns, c.used, limit, pct, c.max)
		}
	}
	return nil
}
