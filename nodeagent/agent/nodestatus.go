package agent

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"runtime/debug"
	"sort"
	"time"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/nodeagent/enforcer"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// The node status writer publishes what this node enforces as the status of the
// cluster-scoped ExecgateNode named after the node, so that users (kubectl execgate
// status, explain) can see it through the API server alone: agents' gRPC endpoints are
// not reachable from outside the cluster.
//
// Writes are cheap for the API server: the writer compares what it would write with what
// it last wrote and writes nothing when they are equal. It looks every Coalesce (2s): a
// change of attach mode, pods or policies is written at the next look, so a burst of pod
// changes becomes one write; a change of the counters alone (kernel memory, map entries,
// dropped events) waits until Interval (30s) has passed since the last write.

// ExecgateNodeResource is the resource the node status writer writes.
var ExecgateNodeResource = v1alpha1.GroupVersion.WithResource("execgatenodes")

// NodeStateSource is what the node status writer publishes: the Agent, or a fake.
type NodeStateSource interface {
	Status(ctx context.Context) (*agentv1.AgentStatus, error)
}

// NodeStatusOptions are a NodeStatusWriter's dependencies and timings.
type NodeStatusOptions struct {
	NodeName string
	Source   NodeStateSource
	// Ready, if set, holds writes back until it returns true (the agent's start-up
	// adoption, before which it would report an empty node).
	Ready func() bool
	// Kube reads the Node, whose uid the owner reference needs.
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	// Interval is the shortest time between two writes that change only counters
	// (default 30s).
	Interval time.Duration
	// Coalesce is how often the source is read; changes within it make one write
	// (default 2s).
	Coalesce time.Duration
	// AgentVersion is reported in the status (default: from the binary's build info).
	AgentVersion string
	// BPFLSMActive reports whether "bpf" is in the kernel's LSM list; read once at start
	// (default enforcer.BPFLSMActive).
	BPFLSMActive func() (bool, error)
	Logger       *zap.Logger
}

// NodeStatusWriter keeps the node's ExecgateNode status in step with the agent. Its
// fields are owned by the goroutine that calls Run.
type NodeStatusWriter struct {
	opts NodeStatusOptions
	log  *zap.Logger
	res  dynamic.ResourceInterface

	// obj is the object as the API server last returned it (nil: not read yet, or
	// gone); sent is the status last written, without LastUpdated.
	obj       *v1alpha1.ExecgateNode
	sent      *v1alpha1.ExecgateNodeStatus
	lastWrite time.Time
	lsm       bool
}

// NewNodeStatusWriter checks opts and fills in defaults.
func NewNodeStatusWriter(opts NodeStatusOptions) (*NodeStatusWriter, error) {
	switch {
	case opts.NodeName == "":
		return nil, errors.New("node status: node name is required")
	case opts.Source == nil:
		return nil, errors.New("node status: state source is required")
	case opts.Kube == nil || opts.Dynamic == nil:
		return nil, errors.New("node status: kubernetes clients are required")
	case opts.Interval < 0 || opts.Coalesce < 0:
		return nil, errors.New("node status: intervals must not be negative")
	}
	if opts.Interval == 0 {
		opts.Interval = 30 * time.Second
	}
	if opts.Coalesce == 0 {
		opts.Coalesce = 2 * time.Second
	}
	if opts.Coalesce > opts.Interval {
		opts.Coalesce = opts.Interval
	}
	if opts.AgentVersion == "" {
		opts.AgentVersion = buildVersion()
	}
	if opts.BPFLSMActive == nil {
		opts.BPFLSMActive = enforcer.BPFLSMActive
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	return &NodeStatusWriter{
		opts: opts,
		log:  opts.Logger.Named("nodestatus").With(zap.String("node", opts.NodeName)),
		res:  opts.Dynamic.Resource(ExecgateNodeResource),
	}, nil
}

// Run writes the status until ctx ends. A failed write is retried with a backoff of up
// to Interval and logged once per run of failures; it never stops the agent.
func (w *NodeStatusWriter) Run(ctx context.Context) error {
	lsm, err := w.opts.BPFLSMActive()
	if err != nil {
		w.log.Warn("cannot tell whether the BPF LSM is active; reporting it inactive", zap.Error(err))
	}
	w.lsm = lsm
	tick := time.NewTicker(w.opts.Coalesce)
	defer tick.Stop()
	var (
		failures int
		retryAt  time.Time
	)
	for {
		if (w.opts.Ready == nil || w.opts.Ready()) && !time.Now().Before(retryAt) {
			if err := w.sync(ctx); err != nil && ctx.Err() == nil {
				if failures == 0 {
					w.log.Warn("cannot write ExecgateNode status; retrying", zap.Error(err))
				}
				failures++
				retryAt = time.Now().Add(backoff(w.opts.Coalesce, w.opts.Interval, failures))
			} else if err == nil && failures > 0 {
				w.log.Info("ExecgateNode status written again", zap.Int("failed_attempts", failures))
				failures, retryAt = 0, time.Time{}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// backoff doubles from base for each failure, up to limit.
func backoff(base, limit time.Duration, failures int) time.Duration {
	d := base
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// sync reads the source and writes the status if it is due.
func (w *NodeStatusWriter) sync(ctx context.Context) error {
	st, err := w.opts.Source.Status(ctx)
	if err != nil {
		return fmt.Errorf("read agent status: %w", err)
	}
	want := nodeStatusFromAgent(st, w.lsm, w.opts.AgentVersion)
	if w.sent != nil {
		if reflect.DeepEqual(*w.sent, want) {
			return nil
		}
		if reflect.DeepEqual(withoutCounters(*w.sent), withoutCounters(want)) && time.Since(w.lastWrite) < w.opts.Interval {
			return nil
		}
	}
	return w.write(ctx, want)
}

// write replaces the status with want. It reads or creates the object first when it
// has none, and once more when the object changed or went away under it (a conflict:
// someone else wrote it; not found: deleted, or collected with a recreated Node).
func (w *NodeStatusWriter) write(ctx context.Context, want v1alpha1.ExecgateNodeStatus) error {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		if w.obj == nil {
			if w.obj, err = w.getOrCreate(ctx); err != nil {
				return err
			}
			// A restarted agent, or a conflicting writer, may find its status written.
			current := w.obj.Status
			current.LastUpdated = nil
			if reflect.DeepEqual(current, want) {
				w.sent, w.lastWrite = &want, time.Now()
				return nil
			}
		}
		obj := w.obj.DeepCopy()
		obj.Status = want
		now := metav1.NewTime(time.Now().Truncate(time.Second))
		obj.Status.LastUpdated = &now
		var got *v1alpha1.ExecgateNode
		got, err = w.update(ctx, obj)
		if err == nil {
			w.obj, w.sent, w.lastWrite = got, &want, time.Now()
			return nil
		}
		w.obj = nil
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			break
		}
	}
	w.sent = nil
	return err
}

func (w *NodeStatusWriter) update(ctx context.Context, obj *v1alpha1.ExecgateNode) (*v1alpha1.ExecgateNode, error) {
	u, err := toUnstructured(obj)
	if err != nil {
		return nil, err
	}
	out, err := w.res.UpdateStatus(ctx, u, metav1.UpdateOptions{FieldManager: "execgate-agent"})
	if err != nil {
		return nil, fmt.Errorf("update status of execgatenode %s: %w", obj.Name, err)
	}
	return fromUnstructured(out)
}

// getOrCreate returns the node's ExecgateNode, created if missing, owned by the Node.
func (w *NodeStatusWriter) getOrCreate(ctx context.Context) (*v1alpha1.ExecgateNode, error) {
	owner, ownerErr := w.nodeOwner(ctx)
	if ownerErr != nil {
		// Still worth reporting; the next (re)creation tries again.
		w.log.Warn("ExecgateNode written without an owner reference: it will not be deleted with the node", zap.Error(ownerErr))
	}
	u, err := w.res.Get(ctx, w.opts.NodeName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		obj := &v1alpha1.ExecgateNode{ObjectMeta: metav1.ObjectMeta{Name: w.opts.NodeName}}
		if owner != nil {
			obj.OwnerReferences = []metav1.OwnerReference{*owner}
		}
		nu, err := toUnstructured(obj)
		if err != nil {
			return nil, err
		}
		created, err := w.res.Create(ctx, nu, metav1.CreateOptions{FieldManager: "execgate-agent"})
		if err != nil {
			return nil, fmt.Errorf("create execgatenode %s: %w", w.opts.NodeName, err)
		}
		return fromUnstructured(created)
	case err != nil:
		return nil, fmt.Errorf("get execgatenode %s: %w", w.opts.NodeName, err)
	}
	obj, err := fromUnstructured(u)
	if err != nil {
		return nil, err
	}
	if owner == nil || hasOwner(obj.OwnerReferences, owner.UID) {
		return obj, nil
	}
	// Left by an earlier Node of the same name, or written without an owner.
	obj.OwnerReferences = append(withoutNodeOwners(obj.OwnerReferences), *owner)
	if u, err = toUnstructured(obj); err != nil {
		return nil, err
	}
	updated, err := w.res.Update(ctx, u, metav1.UpdateOptions{FieldManager: "execgate-agent"})
	if err != nil {
		return nil, fmt.Errorf("set owner of execgatenode %s: %w", w.opts.NodeName, err)
	}
	return fromUnstructured(updated)
}

// nodeOwner is an owner reference to this node's Node. It does not block the Node's
// deletion: that would need update on nodes/finalizers, which the agent has no use for.
func (w *NodeStatusWriter) nodeOwner(ctx context.Context) (*metav1.OwnerReference, error) {
	node, err := w.opts.Kube.CoreV1().Nodes().Get(ctx, w.opts.NodeName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get node %s: %w", w.opts.NodeName, err)
	}
	return &metav1.OwnerReference{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}, nil
}

func hasOwner(refs []metav1.OwnerReference, uid types.UID) bool {
	for _, r := range refs {
		if r.APIVersion == "v1" && r.Kind == "Node" && r.UID == uid {
			return true
		}
	}
	return false
}

func withoutNodeOwners(refs []metav1.OwnerReference) []metav1.OwnerReference {
	var kept []metav1.OwnerReference
	for _, r := range refs {
		if !(r.APIVersion == "v1" && r.Kind == "Node") {
			kept = append(kept, r)
		}
	}
	return kept
}

func knownAttachMode(m v1alpha1.AttachMode) bool {
	switch m {
	case v1alpha1.AttachLSM, v1alpha1.AttachFmodRet, v1alpha1.AttachFanotify, v1alpha1.AttachExecKill:
		return true
	}
	return false
}

// nodeStatusFromAgent turns the agent's status into an ExecgateNode status, without
// LastUpdated.
func nodeStatusFromAgent(st *agentv1.AgentStatus, bpfLSMActive bool, agentVersion string) v1alpha1.ExecgateNodeStatus {
	out := v1alpha1.ExecgateNodeStatus{
		Kernel:        truncate(st.GetKernelVersion(), 64),
		BPFLSMActive:  bpfLSMActive,
		AgentVersion:  truncate(agentVersion, 128),
		EventsDropped: clampInt64(st.GetEventsDropped()),
	}
	if m := v1alpha1.AttachMode(st.GetAttachMode()); knownAttachMode(m) {
		out.AttachMode = m
	}
	if id := st.GetContainerIdentity(); id == IdentityNRI || id == IdentityPodStatus {
		out.ContainerIdentity = id
	}
	for _, r := range st.GetAttachRefusals() {
		if m := v1alpha1.AttachMode(r.GetMode()); knownAttachMode(m) && len(out.AttachRefusals) < 4 {
			out.AttachRefusals = append(out.AttachRefusals, v1alpha1.AttachRefusal{Mode: m, Reason: truncate(r.GetReason(), 512)})
		}
	}
	for _, p := range st.GetPods() {
		switch p.GetState() {
		case agentv1.PodState_POD_STATE_ENFORCED:
			out.PodsInForce++
		case agentv1.PodState_POD_STATE_PENDING:
			out.PodsPending++
		}
	}
	policies := make([]v1alpha1.NodePolicy, 0, len(st.GetPolicies()))
	for _, p := range st.GetPolicies() {
		policies = append(policies, v1alpha1.NodePolicy{
			Namespace: p.GetNamespace(), Name: p.GetName(),
			Version: clampInt64(p.GetVersion()), Mode: modeOf(p.GetMode()),
		})
	}
	sort.Slice(policies, func(i, j int) bool {
		if policies[i].Namespace != policies[j].Namespace {
			return policies[i].Namespace < policies[j].Namespace
		}
		return policies[i].Name < policies[j].Name
	})
	out.PolicyCount = int32(min(len(policies), math.MaxInt32))
	if len(policies) > v1alpha1.MaxNodePolicies {
		policies, out.PoliciesTruncated = policies[:v1alpha1.MaxNodePolicies], true
	}
	if len(policies) > 0 {
		out.Policies = policies
	}
	var bytes, entries uint64
	for _, m := range st.GetMaps() {
		bytes += m.GetBytes()
		entries += m.GetEntries()
	}
	out.KernelMemoryBytes, out.MapEntries = clampInt64(bytes), clampInt64(entries)
	return out
}

// withoutCounters keeps what must be written soon after it changes.
func withoutCounters(s v1alpha1.ExecgateNodeStatus) v1alpha1.ExecgateNodeStatus {
	s.KernelMemoryBytes, s.MapEntries, s.EventsDropped = 0, 0, 0
	return s
}

func modeOf(m agentv1.Mode) v1alpha1.Mode {
	switch m {
	case agentv1.Mode_MODE_LEARN:
		return v1alpha1.ModeLearn
	case agentv1.Mode_MODE_MONITOR:
		return v1alpha1.ModeMonitor
	case agentv1.Mode_MODE_PROTECT:
		return v1alpha1.ModeProtect
	}
	return ""
}

func clampInt64(n uint64) int64 { return int64(min(n, math.MaxInt64)) }

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// buildVersion is the main module's version, or its VCS revision for a development
// build.
func buildVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return "devel"
	}
	return "devel-" + truncate(rev, 12) + dirty
}

func toUnstructured(obj *v1alpha1.ExecgateNode) (*unstructured.Unstructured, error) {
	obj.APIVersion, obj.Kind = v1alpha1.GroupVersion.String(), "ExecgateNode"
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("encode execgatenode %s: %w", obj.Name, err)
	}
	return &unstructured.Unstructured{Object: m}, nil
}

func fromUnstructured(u *unstructured.Unstructured) (*v1alpha1.ExecgateNode, error) {
	var obj v1alpha1.ExecgateNode
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &obj); err != nil {
		return nil, fmt.Errorf("decode execgatenode %s: %w", u.GetName(), err)
	}
	return &obj, nil
}
