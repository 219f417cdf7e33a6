package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/enforcer"
	"github.com/execgate/execgate/nodeagent/nri"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	"github.com/execgate/execgate/nodeagent/server"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// Options are an Agent's dependencies and limits.
type Options struct {
	NodeName string
	Enforcer *enforcer.Enforcer
	// Layout says where the kubelet creates pod and container cgroups.
	Layout cgroups.Layout
	// MaxPending bounds the pods accepted before their cgroup exists
	// (default 256); the least recently pushed one is dropped beyond it.
	MaxPending int
	// PendingTTL is how long a pod may wait for its cgroup (default 10m).
	PendingTTL time.Duration
	// NRIConnected, if set, reports whether the runtime's NRI connection is
	// up (Status says which source of container names is in force).
	NRIConnected func() bool
	// GCInterval is the period of the sweep (default 30s).
	GCInterval time.Duration
	// SubscriberBuffer is each event subscriber's queue length (default 256).
	SubscriberBuffer int
	Logger           *zap.Logger
	// Backstop, if set, watches the API server for pods and policies.
	Backstop *Backstop
	// Registry receives the agent's metrics (none registered if nil).
	Registry prometheus.Registerer
	// LoaderCheckInterval is how often the roots of Monitor and Protect pods are
	// inspected for dynamic loaders at allowed paths (default 1s; loaders.go). A
	// binding also starts an inspection at once.
	LoaderCheckInterval time.Duration
}

// Agent implements server.Backend on top of an Enforcer and a cgroup watcher.
type Agent struct {
	// policyExists, once the backstop's caches synced, says whether a
	// WorkloadPolicy exists (namespace, name): NRI waits only for those.
	policyExists atomic.Pointer[func(namespace, name string) bool]

	opts    Options
	enf     *enforcer.Enforcer
	layout  cgroups.Layout
	watcher *cgroups.Watcher
	log     *zap.Logger
	metrics *metrics
	kernel  string

	mu      sync.Mutex
	pods    map[string]*podState // pod uid -> state
	owners  map[uint64]owner     // bound cgroup id -> pod and container
	pending *lru.Cache[string, time.Time]
	// gone remembers the UIDs of pods deleted from the API server. UIDs are
	// never reused, so a push that arrives after the deletion (a reconciler
	// or webhook call still in flight) is refused instead of re-adding a pod
	// that no event would ever remove again.
	gone *lru.Cache[string, struct{}]
	// policyUIDs remembers the object uid of each policy key, to refuse a
	// recreated policy (whose generation restarts at 1) silently losing.
	policyUIDs map[enforcer.PolicyKey]string
	// argv holds each policy's spec.argv (argv.go), as the backstop's watch of
	// WorkloadPolicies last saw it; a policy it lacks reports command lines in full.
	argv map[enforcer.PolicyKey]argvPolicy

	subs subscribers
	// learn dedupes and replays Learn events (learn.go); guarded by mu.
	learn learnState
	// loaders records the policies' paths refused as dynamic loaders
	// (loaders.go); guarded by mu. loaderWake starts an inspection.
	loaders    loaderState
	loaderWake chan struct{}
	// learnFileCheck tells whether a Learn event's file is a loader; nil is
	// learnIsLoader (reads the file). Unit tests of synthetic events replace it.
	learnFileCheck func(p *podState, pid uint32, cgroupID uint64, path string) (loader, known bool)

	ready atomic.Bool
	// backstopCaughtUp: the backstop has reconciled every pod and policy of its
	// first list (EnforcingAll).
	backstopCaughtUp atomic.Bool
	runCalled        atomic.Bool
	// events is the backstop's Event recorder while it runs (capacity.go).
	events atomic.Pointer[eventSink]
}

var _ server.Backend = (*Agent)(nil)

// podState is one pod the node enforces. Guarded by Agent.mu.
type podState struct {
	uid, namespace, name string
	qos                  cgroups.QoS
	policy               enforcer.PolicyKey
	// names maps a container id (without "<runtime>://") to its name.
	names map[string]string
	// podCgroup is the bound pod cgroup id, 0 while none is bound.
	podCgroup uint64
	// containers maps a container id to its cgroup id, for every container
	// cgroup seen; it is bound with its own rules when its name is known.
	containers map[string]uint64
	// appliedBy and appliedAt record the request that first brought the pod
	// (a push's request id, or "backstop"), for GetStatus.
	appliedBy string
	appliedAt time.Time
	// capacityHold is set while the pod's policy does not fit on the node and the pod
	// runs the deny-all or an older version instead (capacity.go).
	capacityHold *capacityHold
}

type owner struct {
	uid       string
	container string // "" for the pod cgroup
}

func (p *podState) clone() *podState {
	c := *p
	c.names = cloneMap(p.names)
	c.containers = cloneMap(p.containers)
	return &c
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// New returns an agent; call Run to start watching cgroups and events.
func New(opts Options) (*Agent, error) {
	if opts.Enforcer == nil {
		return nil, errors.New("agent: enforcer is required")
	}
	if opts.NodeName == "" {
		return nil, errors.New("agent: node name is required")
	}
	if opts.Layout.Root() == "" {
		return nil, errors.New("agent: cgroup layout is required")
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = 256
	}
	if opts.PendingTTL <= 0 {
		opts.PendingTTL = 10 * time.Minute
	}
	if opts.GCInterval <= 0 {
		opts.GCInterval = 30 * time.Second
	}
	if opts.SubscriberBuffer <= 0 {
		opts.SubscriberBuffer = 256
	}
	if opts.LoaderCheckInterval <= 0 {
		opts.LoaderCheckInterval = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	gone, err := lru.New[string, struct{}](goneCapacity)
	if err != nil {
		return nil, err
	}
	pending, err := lru.New[string, time.Time](opts.MaxPending)
	if err != nil {
		return nil, fmt.Errorf("agent: pending set: %w", err)
	}
	log := opts.Logger.With(zap.String("node", opts.NodeName))
	a := &Agent{
		opts:       opts,
		enf:        opts.Enforcer,
		layout:     opts.Layout,
		watcher:    cgroups.NewWatcher(opts.Layout, log.Named("cgroups")),
		log:        log,
		kernel:     kernelRelease(),
		pods:       map[string]*podState{},
		owners:     map[uint64]owner{},
		pending:    pending,
		gone:       gone,
		policyUIDs: map[enforcer.PolicyKey]string{},
		loaderWake: make(chan struct{}, 1),
		argv:       map[enforcer.PolicyKey]argvPolicy{},
	}
	a.subs.init()
	a.loaders.init()
	if opts.Registry != nil {
		m, err := newMetrics(a, opts.Registry)
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		a.metrics = m
	}
	return a, nil
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// Ready reports whether the initial adoption scan is done.
func (a *Agent) Ready() bool { return a.ready.Load() }

// EnforcingAll reports whether every pod the API server has bound to this node
// has had its policy applied once: the agent is Ready and, where it watches the
// API server, the backstop has reconciled its whole first list. A node may take
// new pods from then on (StartupTaintRemover).
func (a *Agent) EnforcingAll() bool {
	return a.Ready() && (a.opts.Backstop == nil || a.backstopCaughtUp.Load())
}

// ApplyPodPolicy implements server.Backend.
func (a *Agent) ApplyPodPolicy(ctx context.Context, pp *podpolicy.PodPolicy) (applied bool, loaded uint64, err error) {
	start := time.Now()
	defer func() { a.metrics.observeApply(time.Since(start), err) }()
	if err := ctx.Err(); err != nil {
		return false, 0, err
	}
	if err := cgroups.ValidatePodUID(pp.Pod.UID); err != nil {
		return false, 0, kernelError(fmt.Errorf("%w: %w", enforcer.ErrInvalid, err))
	}
	qos := cgroups.QoS(pp.Pod.QoSClass)
	if a.layout.PodCgroupPath(pp.Pod.UID, qos) == "" {
		return false, 0, kernelError(fmt.Errorf("%w: pod %s: qos class %q has no cgroup", enforcer.ErrInvalid, pp.Pod.UID, pp.Pod.QoSClass))
	}
	pv := policyVersion(&pp.Policy)

	a.mu.Lock()
	defer a.mu.Unlock()
	if a.gone.Contains(pp.Pod.UID) {
		return false, 0, fmt.Errorf("pod %s/%s (uid %s) was deleted: %w", pp.Pod.Namespace, pp.Pod.Name, pp.Pod.UID, podpolicy.ErrConflict)
	}
	if prev := a.pods[pp.Pod.UID]; prev != nil && prev.policy != pv.Key {
		// A pod's policy is fixed when it is bound (issue 14): a changed label
		// must not unbind or weaken a running pod. The pod runs under prev
		// until it is gone; its replacement gets the new policy.
		return false, 0, fmt.Errorf("pod %s/%s (uid %s) is bound to policy %s until it is deleted; refusing policy %s: %w",
			pp.Pod.Namespace, pp.Pod.Name, pp.Pod.UID, prev.policy, pv.Key, podpolicy.ErrConflict)
	}
	if uid, ok := a.policyUIDs[pv.Key]; ok && pp.Policy.UID != "" && uid != "" && uid != pp.Policy.UID {
		if a.policyUsersLocked(pv.Key, "") > 0 {
			return false, 0, fmt.Errorf("policy %s was recreated (uid %s, loaded %s) while pods still use it: %w", pv.Key, pp.Policy.UID, uid, podpolicy.ErrConflict)
		}
		// Nobody uses the old object's policy any more: drop it so the
		// recreated one (whose generation restarted) can load.
		if err := a.enf.DeletePolicy(pv.Key); err != nil && !errors.Is(err, enforcer.ErrNotFound) {
			return false, 0, kernelError(fmt.Errorf("replace recreated policy %s: %w", pv.Key, err))
		}
	}
	cur, existed := a.enf.PolicyVersionOf(pv.Key)
	curDigest, _ := a.enf.PolicyDigestOf(pv.Key)
	// Paths found to be dynamic loaders on this node stay out (loaders.go).
	putApplied, loadErr := a.enf.PutPolicy(a.withoutRefusedLocked(pv))
	held := ""
	if loadErr != nil {
		loadErr = kernelError(fmt.Errorf("load policy %s version %d: %w", pv.Key, pv.Version, loadErr))
		if held = a.holdOnLoadFailureLocked(pv, cur, existed, loadErr); held == loadUnenforced {
			return false, 0, loadErr
		}
	}
	if putApplied && existed && cur == pv.Version && curDigest != "" {
		a.metrics.contentReplaced(pp.Policy.Namespace, string(pv.Key))
		a.log.Warn("policy generation pushed again with other content; the pushed content replaced the loaded one",
			zap.String("policy", string(pv.Key)), zap.Uint64("version", pv.Version), zap.String("loaded_digest", curDigest),
			zap.String("digest", pv.Digest), zap.String("request_id", pp.RequestID))
	}
	if src, ok := a.loaders.sources[pv.Key]; putApplied || !ok || src.Version < pv.Version {
		if v, _ := a.enf.PolicyVersionOf(pv.Key); v == pv.Version {
			a.loaders.sources[pv.Key] = pv
		}
	}
	loaded, _ = a.enf.PolicyVersionOf(pv.Key)
	if pp.Policy.UID != "" {
		a.policyUIDs[pv.Key] = pp.Policy.UID
	}

	prev := a.pods[pp.Pod.UID]
	var next *podState
	if prev != nil {
		next = prev.clone()
	} else {
		next = &podState{uid: pp.Pod.UID, names: map[string]string{}, containers: map[string]uint64{},
			appliedBy: pp.RequestID, appliedAt: time.Now()}
	}
	next.namespace, next.name, next.qos = pp.Pod.Namespace, pp.Pod.Name, qos
	next.policy = pv.Key
	for _, c := range pp.Pod.Containers {
		if id := containerIDOf(c.ContainerID); id != "" {
			next.names[id] = c.Name
		}
	}
	podChanged := prev == nil

	if err := a.commitPodLocked(prev, next); err != nil {
		if !existed {
			a.releasePolicyLocked(pv.Key)
		}
		return false, 0, err
	}
	if loadErr != nil {
		a.capacityHeldLocked(next, pv, held, loadErr)
		return false, loaded, errHeld(pp, held, loadErr)
	}
	a.releaseCapacityHoldLocked(pv.Key, loaded)
	return putApplied || podChanged, loaded, nil
}

// commitPodLocked installs next as the pod's state and binds whatever of its
// cgroups exist. On failure the pod's bindings and state are put back as
// prev had them (prev nil: the pod is forgotten).
func (a *Agent) commitPodLocked(prev, next *podState) error {
	a.pods[next.uid] = next
	if err := a.bindExistingLocked(next); err != nil {
		a.rollbackLocked(prev, next)
		return err
	}
	if next.podCgroup == 0 {
		a.markPendingLocked(next.uid)
	} else {
		a.pending.Remove(next.uid)
	}
	if err := a.watcher.AddPod(next.uid); err != nil {
		a.rollbackLocked(prev, next)
		return fmt.Errorf("%w: %w", enforcer.ErrInvalid, err)
	}
	return nil
}

func (a *Agent) rollbackLocked(prev, next *podState) {
	restore := map[uint64]owner{}
	if prev != nil {
		if prev.podCgroup != 0 {
			restore[prev.podCgroup] = owner{uid: prev.uid}
		}
		for id, cg := range prev.containers {
			if name, ok := prev.names[id]; ok {
				restore[cg] = owner{uid: prev.uid, container: name}
			}
		}
	}
	for cg, o := range a.owners {
		if o.uid != next.uid {
			continue
		}
		if old, ok := restore[cg]; ok {
			if err := a.enf.Bind(cg, prev.policy, old.container); err != nil {
				a.log.Error("roll back cgroup binding", zap.Uint64("cgroup_id", cg), zap.Error(err))
			}
			a.owners[cg] = old
			continue
		}
		if err := a.enf.Unbind(cg); err != nil {
			a.log.Error("roll back cgroup binding", zap.Uint64("cgroup_id", cg), zap.Error(err))
		}
		delete(a.owners, cg)
	}
	if prev != nil {
		a.pods[prev.uid] = prev
	} else {
		delete(a.pods, next.uid)
	}
}

// bindExistingLocked binds the pod cgroup (union rules) and every container
// cgroup with a known name, if they exist now.
func (a *Agent) bindExistingLocked(p *podState) error {
	path := a.layout.PodCgroupPath(p.uid, p.qos)
	id, err := cgroups.ID(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pod %s: %w", p.uid, err)
	}
	if err := a.bindPodCgroupLocked(p, id); err != nil {
		return err
	}
	entries, err := os.ReadDir(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("list container cgroups of pod %s: %w", p.uid, err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		_, cid, ok := a.layout.ParseContainerCgroup(e.Name())
		if !ok {
			continue
		}
		cg, err := cgroups.ID(filepath.Join(path, e.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("pod %s container %s: %w", p.uid, cid, err)
		}
		if err := a.bindContainerLocked(p, cid, cg); err != nil {
			return err
		}
	}
	return nil
}

func (a *Agent) bindPodCgroupLocked(p *podState, id uint64) error {
	if p.podCgroup != 0 && p.podCgroup != id {
		// The kubelet recreated the pod cgroup: the old id is dead.
		a.unbindLocked(p.podCgroup)
	}
	if err := a.enf.Bind(id, p.policy, enforcer.UnionContainer); err != nil {
		return kernelError(fmt.Errorf("bind pod %s cgroup %d to policy %s: %w", p.uid, id, p.policy, err))
	}
	p.podCgroup = id
	a.owners[id] = owner{uid: p.uid}
	a.learnBoundLocked(p)
	a.wakeLoaderCheck()
	return nil
}

// bindContainerLocked records a container cgroup and binds it with the
// container's own rules once its name is known; until then the pod binding
// covers it through the kernel's ancestor walk.
func (a *Agent) bindContainerLocked(p *podState, cid string, cg uint64) error {
	p.containers[cid] = cg
	name, ok := p.names[cid]
	if !ok {
		return nil
	}
	if err := a.enf.Bind(cg, p.policy, name); err != nil {
		return kernelError(fmt.Errorf("bind pod %s container %s cgroup %d to policy %s: %w", p.uid, name, cg, p.policy, err))
	}
	a.owners[cg] = owner{uid: p.uid, container: name}
	a.learnBoundLocked(p)
	a.wakeLoaderCheck()
	return nil
}

func (a *Agent) unbindLocked(cg uint64) {
	if err := a.enf.Unbind(cg); err != nil {
		a.log.Error("unbind cgroup", zap.Uint64("cgroup_id", cg), zap.Error(err))
		return
	}
	delete(a.owners, cg)
}

// markPendingLocked records that the pod waits for its cgroup. Beyond
// MaxPending the oldest waiting pod is forgotten.
func (a *Agent) markPendingLocked(uid string) {
	if !a.pending.Contains(uid) && a.pending.Len() >= a.opts.MaxPending {
		if old, _, ok := a.pending.GetOldest(); ok {
			a.log.Warn("too many pods waiting for their cgroup; forgetting the oldest", zap.String("pod_uid", old), zap.Int("max_pending", a.opts.MaxPending))
			if err := a.forgetPodLocked(old); err != nil {
				a.log.Error("forget the oldest waiting pod", zap.String("pod_uid", old), zap.Error(err))
			}
		}
	}
	a.pending.Add(uid, time.Now())
}

// LearnContainers tells the agent the names of a pod's containers (from the
// pod's status); container cgroups already seen are bound with their rules.
func (a *Agent) LearnContainers(uid string, containers []podpolicy.Container) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pods[uid]
	if p == nil {
		return nil
	}
	for _, c := range containers {
		id := containerIDOf(c.ContainerID)
		if id == "" || p.names[id] == c.Name {
			continue
		}
		p.names[id] = c.Name
		if cg, ok := p.containers[id]; ok {
			if err := a.bindContainerLocked(p, id, cg); err != nil {
				return err
			}
		}
	}
	return nil
}

// goneCapacity bounds the deleted-pod UIDs remembered: far more deletions than
// can happen on one node while a push is in flight.
const goneCapacity = 16384

// PodDeleted forgets a pod the API server deleted (or that reached a terminal
// phase) and refuses any later push for it.
func (a *Agent) PodDeleted(ctx context.Context, uid string) (bool, error) {
	return a.removePod(ctx, uid, true)
}

// RemovePod implements server.Backend: the controller (over mTLS) unbinds a
// pod. The backstop never calls it for a running pod whose label changed
// (it keeps the binding, see backstop.labelChanged). No tombstone is kept.
func (a *Agent) RemovePod(ctx context.Context, uid string) (bool, error) {
	return a.removePod(ctx, uid, false)
}

func (a *Agent) removePod(ctx context.Context, uid string, deleted bool) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if deleted {
		a.gone.Add(uid, struct{}{})
	}
	if a.pods[uid] == nil {
		return false, nil
	}
	return true, a.forgetPodLocked(uid)
}

// forgetPodLocked unbinds every cgroup of the pod, forgets it, and unloads
// its policy when no other pod uses it.
func (a *Agent) forgetPodLocked(uid string) error {
	p := a.pods[uid]
	a.pending.Remove(uid)
	if p == nil {
		return nil
	}
	var errs []error
	for cg, o := range a.owners {
		if o.uid != uid {
			continue
		}
		if err := a.enf.Unbind(cg); err != nil {
			errs = append(errs, fmt.Errorf("pod %s: %w", uid, err))
			continue
		}
		delete(a.owners, cg)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	_ = a.watcher.RemovePod(uid) // uid was validated when the pod was added
	delete(a.pods, uid)
	delete(a.loaders.checked, uid)
	a.releasePolicyLocked(p.policy)
	return nil
}

// policyUsersLocked counts the pods that use key, other than skipUID.
func (a *Agent) policyUsersLocked(key enforcer.PolicyKey, skipUID string) int {
	n := 0
	for uid, p := range a.pods {
		if p.policy == key && uid != skipUID {
			n++
		}
	}
	return n
}

// releasePolicyLocked unloads key if no pod uses it any more.
func (a *Agent) releasePolicyLocked(key enforcer.PolicyKey) {
	if a.policyUsersLocked(key, "") > 0 {
		return
	}
	err := a.enf.DeletePolicy(key)
	switch {
	case err == nil:
		delete(a.policyUIDs, key)
		delete(a.loaders.sources, key)
		a.retryCapacityHoldsLocked() // the space it held may fit a held pod's policy
	case errors.Is(err, enforcer.ErrNotFound):
		delete(a.policyUIDs, key)
		delete(a.loaders.sources, key)
	case errors.Is(err, enforcer.ErrInUse):
		// Bindings the agent does not own (left by an earlier run); the
		// sweep unbinds them once their cgroups are gone.
		a.log.Debug("policy unused by pods but still bound", zap.String("policy", string(key)), zap.Error(err))
	default:
		a.log.Error("unload unused policy", zap.String("policy", string(key)), zap.Error(err))
	}
}

// RemovePolicy implements server.Backend.
func (a *Agent) RemovePolicy(ctx context.Context, ref podpolicy.PolicyRef) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	key := enforcer.PolicyKey(ref.Key())
	a.mu.Lock()
	defer a.mu.Unlock()
	if uid := a.policyUIDs[key]; ref.UID != "" && uid != "" && uid != ref.UID {
		return false, fmt.Errorf("policy %s: loaded uid is %s, not %s: %w", key, uid, ref.UID, podpolicy.ErrConflict)
	}
	if n := a.policyUsersLocked(key, ""); n > 0 {
		return false, fmt.Errorf("policy %s is used by %d pods on this node: %w", key, n, podpolicy.ErrConflict)
	}
	err := a.enf.DeletePolicy(key)
	switch {
	case err == nil:
		delete(a.policyUIDs, key)
		a.retryCapacityHoldsLocked()
		return true, nil
	case errors.Is(err, enforcer.ErrNotFound):
		delete(a.policyUIDs, key)
		return false, nil
	case errors.Is(err, enforcer.ErrInUse):
		return false, fmt.Errorf("%w: %w", err, podpolicy.ErrConflict)
	}
	return false, kernelError(fmt.Errorf("unload policy %s: %w", key, err))
}

// Status implements server.Backend.
func (a *Agent) Status(ctx context.Context) (*agentv1.AgentStatus, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := a.enf.Stats()
	if err != nil {
		return nil, fmt.Errorf("read enforcer stats: %w", err)
	}
	loaded := map[enforcer.PolicyKey]enforcer.LoadedPolicy{}
	out := &agentv1.AgentStatus{
		NodeName:          a.opts.NodeName,
		AttachMode:        string(a.enf.AttachMode()),
		KernelVersion:     a.kernel,
		EventsDropped:     st.Counters["dropped"] + st.UserDrops + a.subs.dropped.Load(),
		ContainerIdentity: IdentityPodStatus,
	}
	if a.opts.NRIConnected != nil && a.opts.NRIConnected() {
		out.ContainerIdentity = IdentityNRI
	}
	for _, r := range a.enf.AttachRefusals() {
		out.AttachRefusals = append(out.AttachRefusals, &agentv1.AttachRefusal{Mode: string(r.Mode), Reason: r.Reason})
	}
	for _, lp := range a.enf.Policies() {
		loaded[lp.Key] = lp
		ns, name, _ := strings.Cut(string(lp.Key), "/")
		out.Policies = append(out.Policies, &agentv1.PolicyStatus{
			Namespace: ns, Name: name, Version: lp.Version, Mode: agentv1.Mode(lp.Mode),
			Slots: uint32(lp.Slots), Entries: uint64(lp.Entries), Digest: lp.Digest,
		})
	}
	for _, m := range st.Maps {
		ms := &agentv1.MapStatus{Name: m.Name, MaxEntries: uint64(m.MaxEntries), Bytes: m.Bytes}
		if m.Entries > 0 {
			ms.Entries = uint64(m.Entries)
		}
		out.Maps = append(out.Maps, ms)
	}
	a.mu.Lock()
	bound := map[string]uint32{}
	for _, o := range a.owners {
		bound[o.uid]++
	}
	for _, p := range a.pods {
		lp := loaded[p.policy]
		ps := &agentv1.PodStatus{
			Uid: p.uid, Namespace: p.namespace, Name: p.name, Policy: string(p.policy),
			Version: lp.Version, Mode: agentv1.Mode(lp.Mode), CgroupsBound: bound[p.uid],
			State: agentv1.PodState_POD_STATE_PENDING, AppliedBy: p.appliedBy,
		}
		if !p.appliedAt.IsZero() {
			ps.AppliedAt = timestamppb.New(p.appliedAt)
		}
		if p.podCgroup != 0 {
			ps.State = agentv1.PodState_POD_STATE_ENFORCED
		}
		out.Pods = append(out.Pods, ps)
	}
	a.mu.Unlock()
	sort.Slice(out.Pods, func(i, j int) bool { return out.Pods[i].Uid < out.Pods[j].Uid })
	return out, nil
}

// boundPolicy is the policy the agent enforces for pod uid, if any.
func (a *Agent) boundPolicy(uid string) (enforcer.PolicyKey, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p := a.pods[uid]; p != nil {
		return p.policy, true
	}
	return "", false
}

// podsUsing lists the namespace/name of the pods that run under key.
func (a *Agent) podsUsing(key enforcer.PolicyKey) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, p := range a.pods {
		if p.policy == key && p.name != "" {
			out = append(out, p.namespace+"/"+p.name)
		}
	}
	return out
}

// counts reports the pods and policies the agent holds (for metrics).
func (a *Agent) counts() (pods, policies int) {
	a.mu.Lock()
	pods = len(a.pods)
	a.mu.Unlock()
	return pods, len(a.enf.Policies())
}

func policyVersion(p *podpolicy.Policy) enforcer.PolicyVersion {
	pv := enforcer.PolicyVersion{
		Key: enforcer.PolicyKey(p.Key()), Version: p.Version, Digest: p.Digest(), Mode: enforcer.Mode(p.Mode),
		Containers: make(map[string]enforcer.Rules, len(p.RulesByContainer)),
	}
	for name, paths := range p.RulesByContainer {
		pv.Containers[name] = enforcer.Rules{Paths: paths}
	}
	return pv
}

// containerIDOf strips "<runtime>://" from a status container id.
func containerIDOf(s string) string {
	if _, id, ok := strings.Cut(s, "://"); ok {
		return id
	}
	return s
}

// kernelError maps enforcer errors onto what the server reports.
func kernelError(err error) error {
	switch {
	case errors.Is(err, enforcer.ErrCapacity):
		return fmt.Errorf("%w: %w", err, podpolicy.ErrLimitExceeded)
	case errors.Is(err, enforcer.ErrInUse):
		return fmt.Errorf("%w: %w", err, podpolicy.ErrConflict)
	case errors.Is(err, enforcer.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return err
}

// ContainerCreating implements nri.Backend: the runtime names a container of
// the pod before its cgroup exists, so the watcher's report of that cgroup
// binds it with its own rules at once. A pod the agent does not enforce is
// ignored.
func (a *Agent) ContainerCreating(pod nri.Pod, cid, name string) error {
	if pod.UID == "" || cid == "" || name == "" {
		return fmt.Errorf("%w: container without pod uid, id or name", enforcer.ErrInvalid)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	_, err := a.nameContainerLocked(pod.UID, cid, name)
	return err
}

// nameContainerLocked records a container's name and binds its cgroup if
// the watcher reported it; known says whether the agent enforces the pod.
func (a *Agent) nameContainerLocked(uid, cid, name string) (known bool, err error) {
	p := a.pods[uid]
	if p == nil {
		return false, nil
	}
	p.names[cid] = name
	if cg, ok := p.containers[cid]; ok {
		return true, a.bindContainerLocked(p, cid, cg)
	}
	return true, nil
}

// Where container names come from (AgentStatus.container_identity).
const (
	IdentityNRI       = "nri"
	IdentityPodStatus = "pod-status"
)

// nriPolicyWait bounds how long a labelled pod's container start waits for
// the pod's policy (the push before binding, or the backstop), lock waits
// included; below the runtime's NRI request timeout (containerd: 2 s), which
// would let the start go ahead without the plugin.
const nriPolicyWait = 1500 * time.Millisecond

// waitsForPolicy: a container of an unknown pod labelled for policy waits only
// when the backstop knows the policy exists. A label naming no policy leaves
// the pod unenforced, as the webhook says (it is not a reason to block the
// node's container starts), and without the backstop nothing could bring it.
func (a *Agent) waitsForPolicy(pod nri.Pod) bool {
	f := a.policyExists.Load()
	return pod.Policy != "" && f != nil && (*f)(pod.Namespace, pod.Policy)
}

// ContainerStarting implements nri.Backend: the container's cgroup exists
// (runc create is done) and its first exec has not happened (runc start has
// not run). When this returns nil the cgroup is bound with the container's
// own rules (a cgroup the watcher has not reported yet is looked up here), or
// the pod is not one the agent enforces. A pod labelled for a policy the agent
// has not received yet waits for it, and past nriPolicyWait the start fails:
// the kubelet retries it, and the pod's events say why.
func (a *Agent) ContainerStarting(ctx context.Context, pod nri.Pod, cid, name string) error {
	return a.containerStarted(ctx, pod, cid, name, true)
}

// ContainerRunning implements nri.Backend: a container that already runs
// (the runtime's Synchronize) is named and bound like a starting one, without
// waiting for a policy that has not arrived: Synchronize must answer within
// the runtime's registration timeout, and the backstop binds the pod later.
func (a *Agent) ContainerRunning(pod nri.Pod, cid, name string) error {
	return a.containerStarted(context.Background(), pod, cid, name, false)
}

func (a *Agent) containerStarted(ctx context.Context, pod nri.Pod, cid, name string, wait bool) error {
	if pod.UID == "" || cid == "" || name == "" {
		return fmt.Errorf("%w: container without pod uid, id or name", enforcer.ErrInvalid)
	}
	deadline := time.Now().Add(nriPolicyWait)
	if d, ok := ctx.Deadline(); ok && time.Until(d) < nriPolicyWait+200*time.Millisecond {
		deadline = d.Add(-200 * time.Millisecond)
	}
	wait = wait && a.waitsForPolicy(pod)
	for {
		// The lock is waited for within the same budget: a long ApplyPodPolicy
		// (an RCU grace period) must not push the answer past the runtime's timeout.
		for !a.mu.TryLock() {
			if time.Now().After(deadline) {
				return fmt.Errorf("execgate: container %s of pod %s/%s not bound: the agent is busy past the runtime's deadline", name, pod.Namespace, pod.Name)
			}
			time.Sleep(time.Millisecond)
		}
		known, err := a.nameContainerLocked(pod.UID, cid, name)
		if known && err == nil {
			err = a.bindStartingLocked(pod.UID, cid, name)
		}
		a.mu.Unlock()
		if known || err != nil || !wait {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("execgate: policy %s/%s of pod %s/%s is not on node %s yet: container %s not started (retried by the kubelet)",
				pod.Namespace, pod.Policy, pod.Namespace, pod.Name, a.opts.NodeName, name)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (a *Agent) bindStartingLocked(uid, cid, name string) error {
	p := a.pods[uid]
	if _, ok := p.containers[cid]; ok {
		return nil
	}
	for _, rt := range []cgroups.Runtime{cgroups.RuntimeContainerd, cgroups.RuntimeCRIO, cgroups.RuntimeUnspecified} {
		path := a.layout.ContainerCgroupPath(uid, p.qos, rt, cid)
		if path == "" {
			continue
		}
		cg, err := cgroups.ID(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("pod %s container %s: %w", uid, name, err)
		}
		return a.bindContainerLocked(p, cid, cg)
	}
	return fmt.Errorf("pod %s container %s (%s): no cgroup under %s", uid, name, cid, a.layout.PodCgroupPath(uid, p.qos))
}
