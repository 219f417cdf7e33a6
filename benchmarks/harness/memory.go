package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"

	"github.com/execgate/execgate/benchmarks/execbench"
	"github.com/execgate/execgate/bpf"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

// memory reads the kernel memory of an enforcer sized as on a real node
// (the agent's defaults) with MemoryPolicies pods loaded and bound, times
// loading a pod, and times replacing a bound policy with a new version.
func (m *meter) memory(ctx context.Context) (err error) {
	mem := &m.res.Memory
	dir := filepath.Join(pinRoot, fmt.Sprintf("memory-%d", os.Getpid()))
	e, err := enforcer.New(enforcer.Config{PinDir: dir})
	if err != nil {
		return fmt.Errorf("start enforcer: %w", err)
	}
	defer func() {
		e.Close()
		if cerr := enforcer.Cleanup(dir); cerr != nil && err == nil {
			err = fmt.Errorf("remove pins: %w", cerr)
		}
	}()
	mem.AttachMode = e.AttachMode()
	mem.Config = enforcer.Config{
		MaxBindings: enforcer.DefaultMaxBindings, MaxExactEntries: enforcer.DefaultMaxExactEntries,
		MaxPrefixEntries: enforcer.DefaultMaxPrefixEntries, RingBufferBytes: enforcer.DefaultRingBufferBytes,
	}
	if mem.PerCPUBytesPerCPU, err = perCPUBytes(); err != nil {
		return err
	}

	var loads []time.Duration
	loaded := 0
	for _, n := range m.cfg.MemoryPolicies {
		if err := ctx.Err(); err != nil {
			return err
		}
		for ; loaded < n; loaded++ {
			start := time.Now()
			if err := execbench.LoadPolicies(e, loaded, loaded+1); err != nil {
				return err
			}
			if err := execbench.BindSyntheticPods(e, loaded, loaded+1); err != nil {
				return err
			}
			loads = append(loads, time.Since(start))
		}
		st, err := e.Stats()
		if err != nil {
			return err
		}
		p := MemoryPoint{Policies: n, Bindings: st.Bindings, Bytes: execbench.MapBytes(st), Maps: st.Maps}
		mem.Points = append(mem.Points, p)
		m.logf("memory: %d pod policies, %d bindings: %d bytes", n, p.Bindings, p.Bytes)
	}
	mem.LoadPerPolicy = execbench.Summarize(loads)

	var updates []time.Duration
	for i := 0; i < min(m.cfg.UpdateSamples, loaded); i++ {
		start := time.Now()
		applied, err := e.PutPolicy(execbench.PodPolicy(i, 2))
		if err != nil {
			return fmt.Errorf("update policy %d: %w", i, err)
		}
		if !applied {
			return fmt.Errorf("update policy %d: version 2 not applied", i)
		}
		updates = append(updates, time.Since(start))
	}
	mem.Update = execbench.Summarize(updates)
	m.logf("memory: load per pod median %v; update of a bound policy median %v p99 %v",
		mem.LoadPerPolicy.Median, mem.Update.Median, mem.Update.P99)
	return nil
}

// perCPUBytes is what execgate's per-CPU maps cost for each possible CPU:
// the part of the fixed cost that grows with the node's size.
func perCPUBytes() (uint64, error) {
	spec, err := bpf.LoadExecgate()
	if err != nil {
		return 0, fmt.Errorf("load program spec: %w", err)
	}
	var total uint64
	for _, ms := range spec.Maps {
		switch ms.Type {
		case ebpf.PerCPUArray, ebpf.PerCPUHash, ebpf.LRUCPUHash:
			total += ((uint64(ms.ValueSize) + 7) &^ 7) * uint64(ms.MaxEntries)
		}
	}
	return total, nil
}
