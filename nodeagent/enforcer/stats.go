package enforcer

import (
	"errors"
	"fmt"
	"sort"
	"sync/atomic"

	"github.com/cilium/ebpf"

	"github.com/execgate/execgate/bpf"
)

// MapStats is one map's size as the kernel accounts it.
type MapStats struct {
	Name       string
	Type       string
	MaxEntries uint32
	Entries    int    // entries in the map (-1 where not counted: arrays, ring buffer)
	Bytes      uint64 // kernel memory charged to the map (fdinfo memlock)
}

// Stats is the enforcer's view of its kernel state.
type Stats struct {
	AttachMode AttachMode
	Policies   int
	Bindings   int
	Maps       []MapStats
	// Counters are the program's own: checked, allowed, learned, reported,
	// denied, dropped (ring buffer full), untrusted (no trustworthy path),
	// scratch-busy (decided closed for want of working memory),
	// twin-decided (the second copy reused the first's verdict), runtime
	// (the container runtime's re-exec of itself, exempt) and
	// skipped (at most this many execs ran undecided: see Stats).
	Counters  map[string]uint64
	UserDrops uint64 // decoded events the consumer was too slow for
}

var counterNames = [...]string{
	bpf.ExecgateStatSTAT_CHECKED:   "checked",
	bpf.ExecgateStatSTAT_ALLOWED:   "allowed",
	bpf.ExecgateStatSTAT_LEARNED:   "learned",
	bpf.ExecgateStatSTAT_REPORTED:  "reported",
	bpf.ExecgateStatSTAT_DENIED:    "denied",
	bpf.ExecgateStatSTAT_DROPPED:   "dropped",
	bpf.ExecgateStatSTAT_UNTRUSTED: "untrusted",
	// every scratch slot of a CPU held by preempted decisions: decided
	// closed without an event (see SCRATCH_SLOTS in the program)
	bpf.ExecgateStatSTAT_SCRATCH_BUSY: "scratch-busy",
	// the second twin found the first's verdict (see twinPrograms)
	bpf.ExecgateStatSTAT_TWIN_DECIDED: "twin-decided",
	// the container runtime re-executing itself in a bound cgroup, not
	// checked (see runtime.go)
	bpf.ExecgateStatSTAT_RUNTIME: "runtime",
}

// Stats reads map sizes and the program's counters.
func (e *Enforcer) Stats() (Stats, error) {
	e.mu.Lock()
	st := Stats{AttachMode: e.attach, Policies: len(e.policies), Bindings: len(e.binds), Counters: map[string]uint64{}}
	counts := map[string]int{
		bpf.ExecgateMapBindings:    len(e.binds),
		bpf.ExecgateMapExactRules:  e.nExact,
		bpf.ExecgateMapPrefixRules: e.nPrefix,
		slotInfoMap:                len(e.slots),
	}
	e.mu.Unlock()
	// Only the kernel writes mount namespace pins: count them there.
	pins, err := e.CountEntries(bpf.ExecgateMapMntnsPins)
	if err != nil {
		return st, err
	}
	counts[bpf.ExecgateMapMntnsPins] = pins

	maps := map[string]*ebpf.Map{slotInfoMap: e.slotInfo}
	for name, m := range e.coll.Maps {
		maps[name] = m
	}
	for name, m := range maps {
		ms := MapStats{Name: name, Type: m.Type().String(), MaxEntries: m.MaxEntries(), Entries: -1}
		if n, ok := counts[name]; ok {
			ms.Entries = n
		}
		info, err := m.Info()
		if err != nil {
			return st, fmt.Errorf("map %s info: %w", name, err)
		}
		if b, ok := info.Memlock(); ok {
			ms.Bytes = b
		}
		st.Maps = append(st.Maps, ms)
	}
	sort.Slice(st.Maps, func(i, j int) bool { return st.Maps[i].Name < st.Maps[j].Name })

	var perCPU []bpf.ExecgateCounters
	if err := e.stats.Lookup(uint32(0), &perCPU); err != nil {
		return st, fmt.Errorf("read counters: %w", err)
	}
	for _, c := range perCPU {
		for i, n := range counterNames {
			st.Counters[n] += c.Count[i]
		}
	}
	st.UserDrops = atomic.LoadUint64(&e.userDrops)
	// The kernel skips a tracing program (fmod_ret, tp_btf; never lsm)
	// when the same program is already running on the CPU: on a
	// preemptible kernel, an exec that preempts another exec inside the
	// program. Only the kernel counts those (5.12+). With twins an exec
	// goes undecided only when both skip it, so the smaller count bounds
	// the undecided execs from above.
	if e.coll != nil {
		for i, name := range e.progs {
			prog := e.coll.Programs[name]
			if prog == nil {
				continue
			}
			ps, err := prog.Stats()
			if err != nil {
				break
			}
			if i == 0 || ps.RecursionMisses < st.Counters["skipped"] {
				st.Counters["skipped"] = ps.RecursionMisses
			}
		}
	}
	return st, nil
}

// CountEntries counts a map's entries by iterating it in the kernel: the
// ground truth that tests compare with the enforcer's own bookkeeping.
func (e *Enforcer) CountEntries(name string) (int, error) {
	m := e.coll.Maps[name]
	if name == slotInfoMap {
		m = e.slotInfo
	}
	if m == nil {
		return 0, fmt.Errorf("no map %q", name)
	}
	keySize := int(m.KeySize())
	key := make([]byte, keySize)
	n := 0
	var (
		next = make([]byte, keySize)
		prev any
	)
	for {
		if err := m.NextKey(prev, &next); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return n, nil
			}
			return n, fmt.Errorf("iterate %s: %w", name, err)
		}
		n++
		copy(key, next)
		prev = key
	}
}
