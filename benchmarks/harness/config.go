package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/execgate/execgate/benchmarks/execbench"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

// Config sizes one run. DefaultConfig is what `make bench` runs; it fits a
// 2-core machine in a few minutes.
type Config struct {
	// Samples is the number of timed execs per cgroup and kernel state,
	// split into Rounds that alternate between the enforced and the other
	// cgroup so that drift in the machine's load hits both alike.
	Samples int
	Rounds  int
	// KernelSamples is the number of execs per cgroup timed again with the
	// kernel's BPF run-time statistics on (they cost a little themselves).
	KernelSamples int

	// Modes: the attach modes execgate is timed in (empty: every mode this
	// kernel loads). A mode left out is reported as not measured, never
	// silently dropped.
	Modes []enforcer.AttachMode
	// OurPolicies: loaded pod policies for execgate's program.
	OurPolicies []int
	// PeerPolicies: policies (one program each) for the peer baseline.
	PeerPolicies []int
	// MemoryPolicies: loaded and bound pod policies at which kernel memory
	// is read, on an enforcer sized like a real node (the defaults).
	MemoryPolicies []int
	// UpdateSamples: bound policies replaced by a new version, timed.
	UpdateSamples int

	// The cluster view: ClusterWorkloads policies in the cluster, a node
	// runs PodsPerNode pods.
	ClusterWorkloads int
	PodsPerNode      int

	// Progress receives one line per step (nil: discarded).
	Progress io.Writer `json:"-"`
	// ControlPlane measures items 4-6 (nil: reported as not measured).
	ControlPlane ControlPlaneBench `json:"-"`
}

// DefaultConfig is the full run of issue 7.
func DefaultConfig() Config {
	return Config{
		Samples:          16000,
		Rounds:           16,
		KernelSamples:    4000,
		OurPolicies:      []int{1, 100, 1000, 10000},
		PeerPolicies:     []int{1, 10, 38, 100, 200},
		MemoryPolicies:   []int{0, 1, 110, 256},
		UpdateSamples:    50,
		ClusterWorkloads: 10000,
		PodsPerNode:      110,
	}
}

// measuredModes are the attach modes execgate is timed in, in run order.
var measuredModes = []enforcer.AttachMode{enforcer.AttachExecKill, enforcer.AttachFanotify, enforcer.AttachFmodRet, enforcer.AttachLSM}

// measures says whether the config asks for mode.
func (c Config) measures(mode enforcer.AttachMode) bool {
	return len(c.Modes) == 0 || slices.Contains(c.Modes, mode)
}

// QuickConfig checks that everything works, in well under a minute; its
// numbers are too small a sample to quote.
func QuickConfig() Config {
	c := DefaultConfig()
	c.Samples, c.Rounds, c.KernelSamples = 600, 3, 300
	c.OurPolicies = []int{1, 100, 1000}
	c.PeerPolicies = []int{1, 10, 38}
	c.UpdateSamples = 10
	return c
}

// Validate says what to fix in a config.
func (c Config) Validate() error {
	var errs []error
	if c.Rounds < 1 || c.Samples < c.Rounds {
		errs = append(errs, fmt.Errorf("samples (%d) must be at least rounds (%d), and rounds at least 1", c.Samples, c.Rounds))
	}
	seen := map[enforcer.AttachMode]bool{}
	for _, m := range c.Modes {
		if !slices.Contains(measuredModes, m) {
			errs = append(errs, fmt.Errorf("attach mode %q cannot be timed: want some of %v", m, measuredModes))
		}
		if seen[m] {
			errs = append(errs, fmt.Errorf("attach mode %q named twice", m))
		}
		seen[m] = true
	}
	if c.KernelSamples < 1 {
		errs = append(errs, errors.New("kernel samples must be at least 1"))
	}
	for _, l := range []struct {
		name string
		ns   []int
		min  int
	}{{"our policies", c.OurPolicies, 1}, {"peer policies", c.PeerPolicies, 1}, {"memory policies", c.MemoryPolicies, 0}} {
		if len(l.ns) == 0 || !slices.IsSorted(l.ns) || l.ns[0] < l.min {
			errs = append(errs, fmt.Errorf("%s %v must be ascending and at least %d", l.name, l.ns, l.min))
		}
	}
	if c.ClusterWorkloads < 1 || c.PodsPerNode < 1 {
		errs = append(errs, errors.New("cluster workloads and pods per node must be positive"))
	}
	if c.UpdateSamples < 0 {
		errs = append(errs, errors.New("update samples must not be negative"))
	}
	return errors.Join(errs...)
}

// ControlPlaneBench measures issue 7 items 4-6 through a real kube-apiserver,
// kube-scheduler, execgate webhook and agents (package
// benchmarks/controlplane, on the test/e2e harness).
type ControlPlaneBench interface {
	Run(ctx context.Context) (ControlPlaneResults, error)
}

// ControlPlaneResults are items 4-6.
type ControlPlaneResults struct {
	// Nodes: simulated nodes, each with a real agent, of items 4 and 5.
	Nodes int
	// PushTimeout: the controller's --push-timeout in every item.
	PushTimeout time.Duration

	// Item 4, pods bound one at a time, each with its own policy. BindToAck
	// is the pods/binding call as the binder sees it, from before the call
	// to its return: the webhook's push to the agent is synchronous inside
	// it, so the return means the agent acknowledged. BindToMap ends at the
	// agent's applied_at for the pod: its policy was in the maps.
	BindToAck execbench.Summary
	BindToMap execbench.Summary
	// BindPushMissed counts pods their agent learned of other than by the
	// webhook's push (its own API-server watch); they are in the summaries.
	BindPushMissed int
	// BindGap is the pause between two bindings.
	BindGap time.Duration

	// Item 5: pods bound per second for a burst of pods, the first scenario
	// without the webhook. SchedulerQPS is kube-scheduler's client rate
	// limit; the burst's pods carry ThroughputPolicies policies.
	Throughput         []ThroughputResult
	SchedulerQPS       int
	ThroughputPolicies int

	// Item 6: from an allowlist change (the Update call) to every one of
	// UpdateNodes agents, running UpdatePods pods of the policy, reporting
	// the new version; agents polled every UpdatePoll.
	PolicyUpdate execbench.Summary
	UpdateNodes  int
	UpdatePods   int
	UpdatePoll   time.Duration
}

// ThroughputResult is one scheduling-throughput scenario of item 5.
type ThroughputResult struct {
	Scenario      string // e.g. "no webhook", "webhook, healthy agents", "one agent dead"
	Pods          int
	PodsPerSecond float64 // Pods / Bound
	// From the first create: until the last create returned, and until the
	// last pod was seen bound.
	Created, Bound time.Duration
	// CPU is the CPU time each component (etcd, kube-apiserver, ...) used
	// from the first create until every pod was bound: they share the
	// machine, so this is where the time went.
	CPU map[string]time.Duration
}
