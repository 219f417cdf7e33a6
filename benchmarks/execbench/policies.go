package execbench

import (
	"fmt"

	"github.com/execgate/execgate/nodeagent/enforcer"
)

// PathsPerPolicy is the size of every synthetic policy: the issue's "pod
// policy of 50 paths".
const PathsPerPolicy = 50

// Container is the one container of every synthetic pod.
const Container = "app"

// entriesPerPolicy: the enforcer writes a container's paths twice, once in
// the container's slot and once in the pod's union slot.
const entriesPerPolicy = 2 * PathsPerPolicy

// PolicyKey names the i-th synthetic policy.
func PolicyKey(i int) enforcer.PolicyKey { return enforcer.PolicyKey(fmt.Sprintf("bench/p%d", i)) }

// PodPolicy is the i-th synthetic policy in Protect mode: the allowed paths
// first (the programs a benchmark runs), then made-up paths up to
// PathsPerPolicy, distinct per policy so no two policies share entries.
func PodPolicy(i int, version uint64, allowed ...string) enforcer.PolicyVersion {
	paths := make([]string, 0, PathsPerPolicy)
	paths = append(paths, allowed...)
	for j := len(paths); j < PathsPerPolicy; j++ {
		paths = append(paths, fmt.Sprintf("/opt/app%d/bin/tool%d", i, j))
	}
	return enforcer.PolicyVersion{
		Key: PolicyKey(i), Version: version, Mode: enforcer.ModeProtect,
		Containers: map[string]enforcer.Rules{Container: {Paths: paths}},
	}
}

// EnforcerConfig sizes an enforcer for n synthetic pods: every policy's
// entries, and a pod plus a container binding per pod, with room to spare.
func EnforcerConfig(pinDir string, attach enforcer.AttachMode, n int) enforcer.Config {
	return enforcer.Config{
		PinDir:          pinDir,
		Attach:          attach,
		MaxExactEntries: uint32(n*entriesPerPolicy + 1024),
		MaxBindings:     uint32(2*n + 64),
	}
}

// LoadPolicies puts synthetic policies [from, to) into e, each allowing
// allowed plus its own made-up paths.
func LoadPolicies(e *enforcer.Enforcer, from, to int, allowed ...string) error {
	for i := from; i < to; i++ {
		if _, err := e.PutPolicy(PodPolicy(i, 1, allowed...)); err != nil {
			return fmt.Errorf("load policy %d: %w", i, err)
		}
	}
	return nil
}

// SyntheticCgroupID is the cgroup id of pod i's pod cgroup (container=false)
// or its container cgroup: ids no real cgroup has, for benchmarks that
// measure map state rather than run processes.
func SyntheticCgroupID(i int, container bool) uint64 {
	id := uint64(1)<<40 | uint64(i)<<1
	if container {
		id |= 1
	}
	return id
}

// BindSyntheticPods binds the pod and container cgroups of synthetic pods
// [from, to) to their policies, as the agent does for a real pod.
func BindSyntheticPods(e *enforcer.Enforcer, from, to int) error {
	for i := from; i < to; i++ {
		if err := e.Bind(SyntheticCgroupID(i, false), PolicyKey(i), enforcer.UnionContainer); err != nil {
			return fmt.Errorf("bind pod %d: %w", i, err)
		}
		if err := e.Bind(SyntheticCgroupID(i, true), PolicyKey(i), Container); err != nil {
			return fmt.Errorf("bind container of pod %d: %w", i, err)
		}
	}
	return nil
}

// MapBytes is the kernel memory charged to all of an enforcer's maps.
func MapBytes(st enforcer.Stats) uint64 {
	var total uint64
	for _, m := range st.Maps {
		total += m.Bytes
	}
	return total
}
