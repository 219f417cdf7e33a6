package learn

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/execgate/execgate/api/v1alpha1"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/webhook/agents"
)

// Defaults and bounds of ProposalLearner.
const (
	// DefaultLearnFlushInterval is how often buffered Learn events are written: at most
	// one spec write and one status write per changed proposal per interval, however
	// many execs the agents reported.
	DefaultLearnFlushInterval = 5 * time.Second
	// DefaultLearnMaxPending bounds the (pod, container, executable) triples buffered
	// between two flushes. A triple took 107 bytes of Go heap with 52-byte paths and 200
	// pods, so a full buffer is about 7 MB (measured 2026-11-25 like learnSeenSize in
	// nodeagent/agent).
	// Beyond it events are dropped and counted; the agents replay what they learnt
	// (every 10 minutes), so a drop delays an executable, it does not lose it.
	DefaultLearnMaxPending = 65536
	// learnWorkloadCacheSize pods keep their resolved workload for learnWorkloadTTL, so
	// a pod's later events (and the agents' replays) cost no API read, and events of a
	// pod deleted meanwhile still land in its workload's proposal.
	learnWorkloadCacheSize = 4096
	learnWorkloadTTL       = 10 * time.Minute
	// learnCountedPodsSize bounds the (proposal, pod) pairs remembered as already counted
	// in status.observedPods.
	learnCountedPodsSize = 16384
	// learnFinalFlushTimeout bounds the flush made when Start's context ends.
	learnFinalFlushTimeout = 5 * time.Second
	// MaxProposalNameLength keeps a proposal's name valid as a WorkloadPolicy name, which
	// pods carry in the label execgate.io/policy (label values: at most 63 characters),
	// so that a proposal can be promoted under its own name.
	MaxProposalNameLength = 63
)

var (
	learnEventsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_learn_events_total",
		Help: "Learn events received from node agents, by result: buffered (new since the last flush), duplicate (already buffered), ignored (not attributable to a pod and container, or not a valid executable), dropped (buffer full).",
	}, []string{"result"})
	proposalWritesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "execgate_controller_proposal_writes_total",
		Help: "WorkloadPolicyProposal writes, by result: created, updated (spec), status, conflict (retried), failed.",
	}, []string{"result"})
	learnExecutablesOverLimit = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "execgate_controller_learn_executables_over_limit_total",
		Help: "Learnt executables not recorded because their proposal reached a limit (64 containers, 1024 executables per container, 4096 in all).",
	})
)

func init() {
	metrics.Registry.MustRegister(learnEventsTotal, proposalWritesTotal, learnExecutablesOverLimit)
}

// ProposalLearner merges the agents' Learn events into one WorkloadPolicyProposal per
// workload: the pod's top-level owner (Pod -> ReplicaSet -> Deployment, Pod -> Job ->
// CronJob, StatefulSet, DaemonSet, or the bare pod itself), named by ProposalName.
//
// HandleExecEvent only buffers (bounded by MaxPending); Start flushes the buffer every
// FlushInterval: it resolves each pod's workload (cached), merges the new executables
// into the proposal, and writes each changed proposal once (its spec, then its status:
// the status subresource needs a request of its own), retrying on conflict. An event
// that adds nothing to a proposal costs no write. It runs on the leader only.
//
// It trusts the events it gets to be about pods of the node that sent them, in Learn
// mode: agents.AgentEventStream's Origin checked that before handing them over.
//
// Concurrency: mu guards the buffer, which the agent streams' goroutines fill; every
// other field is used by the flush alone, which runs on Start's goroutine.
type ProposalLearner struct {
	// Client reads pods and proposals (an informer cache is fine) and writes proposals.
	Client client.Client
	// APIReader reads owners (ReplicaSets, Jobs: metadata only, not worth a cluster-wide
	// cache) and, after a conflict, the fresh proposal. Client if nil.
	APIReader client.Reader
	// FlushInterval defaults to DefaultLearnFlushInterval, MaxPending to
	// DefaultLearnMaxPending.
	FlushInterval time.Duration
	MaxPending    int
	Log           *zap.Logger
	// Now stamps status.lastUpdated; time.Now if nil.
	Now func() time.Time

	mu       sync.Mutex
	pending  map[podRef]map[string]map[string]struct{} // pod -> container -> executables
	nPending int
	dropped  int // since the last flush, for its log line

	initOnce  sync.Once
	workloads *lru.Cache[podRef, resolvedWorkload]
	counted   *lru.Cache[countedPod, struct{}]
}

var _ agents.ExecEventSink = (*ProposalLearner)(nil)

type podRef struct{ namespace, name string }

type resolvedWorkload struct {
	ref v1alpha1.WorkloadReference
	err error // errNotLearnable: remembered too, so a pod that cannot be learnt costs one lookup
	at  time.Time
}

type countedPod struct {
	proposal types.NamespacedName
	pod      string
}

// errNotLearnable marks a pod whose workload cannot have a proposal; retrying will not
// help, and the answer is cached with the workloads. Other resolution errors (the API
// server unreachable) keep the events buffered.
var errNotLearnable = errors.New("not learnable")

// errWorkloadMismatch: a proposal of the expected name records another workload.
var errWorkloadMismatch = errors.New("proposal belongs to another workload")

// errPodGone is not cached: a pod of the same name may come back (StatefulSet).
var errPodGone = fmt.Errorf("pod is gone and its workload was not seen before: %w", errNotLearnable)

func (l *ProposalLearner) init() {
	l.initOnce.Do(func() {
		// lru.New fails only for a size <= 0; the sizes are positive constants.
		l.workloads, _ = lru.New[podRef, resolvedWorkload](learnWorkloadCacheSize)
		l.counted, _ = lru.New[countedPod, struct{}](learnCountedPodsSize)
	})
}

// HandleExecEvent implements agents.ExecEventSink. It keeps Learn events that name a pod, a
// container and a valid executable, and returns at once.
func (l *ProposalLearner) HandleExecEvent(_ context.Context, ev *agentv1.ExecEvent) {
	if ev.GetAction() != agentv1.Action_ACTION_ALLOWED_LEARN {
		return
	}
	if problem := learnEventProblem(ev); problem != "" {
		learnEventsTotal.WithLabelValues("ignored").Inc()
		l.logger().Debug("learn event ignored", zap.String("reason", problem), zap.String("node", ev.GetNode()),
			zap.String("namespace", ev.GetNamespace()), zap.String("pod", ev.GetPod()), zap.String("container", ev.GetContainer()))
		return
	}
	pod := podRef{namespace: ev.GetNamespace(), name: ev.GetPod()}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.add(pod, ev.GetContainer(), ev.GetExecutable()) {
		learnEventsTotal.WithLabelValues("buffered").Inc()
	}
}

// add buffers one triple and reports whether it is new. Caller holds mu.
func (l *ProposalLearner) add(pod podRef, container, path string) bool {
	if l.pending == nil {
		l.pending = map[podRef]map[string]map[string]struct{}{}
	}
	byContainer := l.pending[pod]
	if _, dup := byContainer[container][path]; dup {
		learnEventsTotal.WithLabelValues("duplicate").Inc()
		return false
	}
	if l.nPending >= l.maxPending() {
		learnEventsTotal.WithLabelValues("dropped").Inc()
		l.dropped++
		return false
	}
	if byContainer == nil {
		byContainer = map[string]map[string]struct{}{}
		l.pending[pod] = byContainer
	}
	if byContainer[container] == nil {
		byContainer[container] = map[string]struct{}{}
	}
	byContainer[container][path] = struct{}{}
	l.nPending++
	return true
}

// learnEventProblem says why a Learn event cannot be recorded, or "" if it can.
func learnEventProblem(ev *agentv1.ExecEvent) string {
	switch {
	case ev.GetNamespace() == "" || ev.GetPod() == "":
		return "no pod: the agent did not know the pod yet"
	case ev.GetContainer() == "":
		return "no container: the process ran in the pod cgroup, outside any container"
	case len(validation.IsDNS1123Label(ev.GetNamespace())) > 0:
		return "namespace is not a DNS label"
	case len(validation.IsDNS1123Subdomain(ev.GetPod())) > 0:
		return "pod name is not a DNS subdomain"
	case len(validation.IsDNS1123Label(ev.GetContainer())) > 0:
		return "container name is not a DNS label"
	case strings.HasSuffix(ev.GetExecutable(), "/"):
		return "executable ends in \"/\", which a policy reads as a directory prefix rule"
	}
	if err := v1alpha1.ValidateExecutable(ev.GetExecutable()); err != nil {
		return "executable cannot be allowlisted: " + err.Error()
	}
	return ""
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: one writer per cluster.
func (l *ProposalLearner) NeedLeaderElection() bool { return true }

// Start implements manager.Runnable: it flushes every FlushInterval until ctx ends, then
// once more (bounded by learnFinalFlushTimeout).
func (l *ProposalLearner) Start(ctx context.Context) error {
	if l.Client == nil {
		return errors.New("proposal learner: Client is required")
	}
	t := time.NewTicker(l.flushInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), learnFinalFlushTimeout)
			l.flush(fctx)
			cancel()
			return nil
		case <-t.C:
			l.flush(ctx)
		}
	}
}

// proposalDelta is what one flush adds to one proposal.
type proposalDelta struct {
	workload v1alpha1.WorkloadReference
	byPod    map[string]map[string]map[string]struct{} // pod -> container -> executables
}

// flush writes what was buffered since the last flush and returns the number of
// proposals it changed.
func (l *ProposalLearner) flush(ctx context.Context) int {
	l.init()
	l.mu.Lock()
	batch, dropped := l.pending, l.dropped
	l.pending, l.nPending, l.dropped = nil, 0, 0
	l.mu.Unlock()
	log := l.logger()
	if dropped > 0 {
		log.Warn("learn buffer full: events dropped; the agents' next replay brings them back", zap.Int("dropped", dropped), zap.Int("maxPending", l.maxPending()))
	}
	if len(batch) == 0 {
		return 0
	}

	deltas := map[types.NamespacedName]*proposalDelta{}
	memo := map[ownerKey]ownerResult{} // owners read in this flush
	for _, pod := range slices.SortedFunc(maps.Keys(batch), comparePodRefs) {
		workload, err := l.resolve(ctx, pod, memo)
		if err != nil {
			if errors.Is(err, errNotLearnable) {
				log.Info("learn events not recorded", zap.String("namespace", pod.namespace), zap.String("pod", pod.name), zap.Error(err))
			} else {
				log.Warn("resolve workload of pod; its learn events wait for the next flush", zap.String("namespace", pod.namespace), zap.String("pod", pod.name), zap.Error(err))
				l.requeue(pod, batch[pod])
			}
			continue
		}
		key := types.NamespacedName{Namespace: pod.namespace, Name: ProposalName(workload)}
		d := deltas[key]
		if d == nil {
			d = &proposalDelta{workload: workload, byPod: map[string]map[string]map[string]struct{}{}}
			deltas[key] = d
		}
		if !sameWorkload(d.workload, workload) {
			log.Error("two workloads map to one proposal name; learn events of the second are not recorded",
				zap.String("namespace", pod.namespace), zap.String("proposal", key.Name),
				zap.Any("workload", d.workload), zap.Any("other", workload))
			continue
		}
		d.byPod[pod.name] = batch[pod]
	}

	changed := 0
	for _, key := range slices.SortedFunc(maps.Keys(deltas), compareNames) {
		ok, err := l.apply(ctx, key, deltas[key])
		if err != nil {
			proposalWritesTotal.WithLabelValues("failed").Inc()
			if !retryableWriteError(err) {
				log.Error("write proposal; its learn events are dropped", zap.String("namespace", key.Namespace), zap.String("proposal", key.Name), zap.Error(err))
				continue
			}
			log.Warn("write proposal; its learn events wait for the next flush", zap.String("namespace", key.Namespace), zap.String("proposal", key.Name), zap.Error(err))
			for pod, byContainer := range deltas[key].byPod {
				l.requeue(podRef{namespace: key.Namespace, name: pod}, byContainer)
			}
			continue
		}
		if ok {
			changed++
		}
	}
	return changed
}

// retryableWriteError reports whether a failed proposal write may succeed later. A
// refusal (forbidden, namespace gone, rejected by the schema, a workload mismatch) will
// not, and retrying it every flush would only repeat the error.
func retryableWriteError(err error) bool {
	var status apierrors.APIStatus
	if errors.Is(err, errWorkloadMismatch) || (errors.As(err, &status) &&
		(apierrors.IsForbidden(err) || apierrors.IsNotFound(err) || apierrors.IsInvalid(err) || apierrors.IsBadRequest(err))) {
		return false
	}
	return true
}

// sameWorkload compares kind and name: the apiVersion of an owner reference may name
// another version of the same group.
func sameWorkload(a, b v1alpha1.WorkloadReference) bool { return a.Kind == b.Kind && a.Name == b.Name }

// requeue puts a pod's events back for the next flush, within MaxPending.
func (l *ProposalLearner) requeue(pod podRef, byContainer map[string]map[string]struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for container, paths := range byContainer {
		for path := range paths {
			l.add(pod, container, path)
		}
	}
}

// apply merges d into its proposal (created if missing) and reports whether the
// proposal changed. A conflict re-reads the proposal from the API server and merges
// again; the merge is a set union, so it is safe to repeat.
func (l *ProposalLearner) apply(ctx context.Context, key types.NamespacedName, d *proposalDelta) (bool, error) {
	var (
		reader   client.Reader = l.Client
		wrote    bool          // the spec gained executables in an earlier attempt
		newPods  []string
		attempts int
	)
	err := retry.OnError(retry.DefaultRetry, func(err error) bool {
		return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err)
	}, func() error {
		if attempts++; attempts > 1 {
			proposalWritesTotal.WithLabelValues("conflict").Inc()
			reader = l.apiReader()
		}
		var p v1alpha1.WorkloadPolicyProposal
		err := reader.Get(ctx, key, &p)
		exists := err == nil
		switch {
		case apierrors.IsNotFound(err):
			p = v1alpha1.WorkloadPolicyProposal{
				ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name},
				Spec:       v1alpha1.WorkloadPolicyProposalSpec{Workload: d.workload},
			}
		case err != nil:
			return fmt.Errorf("get proposal: %w", err)
		case !sameWorkload(p.Spec.Workload, d.workload):
			return fmt.Errorf("proposal %s records %s %s, not %s %s: delete it or rename that workload: %w",
				key, p.Spec.Workload.Kind, p.Spec.Workload.Name, d.workload.Kind, d.workload.Name, errWorkloadMismatch)
		}
		merged, contributors, overLimit := mergeRules(p.Spec.RulesByContainer, d.byPod)
		if overLimit > 0 {
			learnExecutablesOverLimit.Add(float64(overLimit))
			l.logger().Warn("proposal is full; executables not recorded", zap.String("namespace", key.Namespace), zap.String("proposal", key.Name),
				zap.Int("notRecorded", overLimit), zap.Int("maxContainers", v1alpha1.MaxContainers), zap.Int("maxPerContainer", v1alpha1.MaxExecutablesPerContainer), zap.Int("maxPerPolicy", v1alpha1.MaxExecutablesPerPolicy))
		}
		if len(contributors) > 0 {
			// Each added path was validated when it arrived; entries already there are
			// the API server's business (validation ratcheting keeps old ones).
			p.Spec.RulesByContainer = merged
			if exists {
				if err := l.Client.Update(ctx, &p); err != nil {
					return fmt.Errorf("update proposal: %w", err)
				}
				proposalWritesTotal.WithLabelValues("updated").Inc()
			} else {
				if err := l.Client.Create(ctx, &p); err != nil {
					return fmt.Errorf("create proposal: %w", err)
				}
				proposalWritesTotal.WithLabelValues("created").Inc()
			}
			wrote, newPods = true, contributors
		}
		total := int32(countExecutables(p.Spec.RulesByContainer))
		if !wrote && (!exists || p.Status.ExecutablesObserved == total) {
			return nil
		}
		// Also reached when nothing was added but the count is off (an earlier status
		// write failed, or someone edited the spec).
		status := p.Status
		if wrote {
			now := metav1.NewTime(l.now())
			status.LastUpdated = &now
		}
		status.ExecutablesObserved = total
		for _, pod := range newPods {
			if !l.counted.Contains(countedPod{proposal: key, pod: pod}) {
				status.ObservedPods++
			}
		}
		p.Status = status
		if err := l.Client.Status().Update(ctx, &p); err != nil {
			return fmt.Errorf("update proposal status: %w", err)
		}
		proposalWritesTotal.WithLabelValues("status").Inc()
		for _, pod := range newPods {
			l.counted.Add(countedPod{proposal: key, pod: pod}, struct{}{})
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	return wrote, nil
}

// mergeRules adds byPod's executables to rules (a copy) and returns the result, the
// pods that added at least one executable, and how many did not fit the limits.
// Existing entries keep their order; new ones follow, sorted.
func mergeRules(rules v1alpha1.RulesByContainer, byPod map[string]map[string]map[string]struct{}) (v1alpha1.RulesByContainer, []string, int) {
	out := rules.DeepCopy()
	if out == nil {
		out = v1alpha1.RulesByContainer{}
	}
	have := map[string]map[string]bool{}
	for c, r := range out {
		have[c] = map[string]bool{}
		for _, p := range r.Executables {
			have[c][p] = true
		}
	}
	var contributors []string
	overLimit, total := 0, countExecutables(out)
	for _, pod := range slices.Sorted(maps.Keys(byPod)) {
		added := false
		for _, c := range slices.Sorted(maps.Keys(byPod[pod])) {
			for _, path := range slices.Sorted(maps.Keys(byPod[pod][c])) {
				if have[c][path] {
					continue
				}
				if (have[c] == nil && len(out) >= v1alpha1.MaxContainers) || len(out[c].Executables) >= v1alpha1.MaxExecutablesPerContainer ||
					total >= v1alpha1.MaxExecutablesPerPolicy {
					overLimit++
					continue
				}
				if have[c] == nil {
					have[c] = map[string]bool{}
				}
				have[c][path] = true
				r := out[c]
				r.Executables = append(r.Executables, path)
				out[c] = r
				total++
				added = true
			}
		}
		if added {
			contributors = append(contributors, pod)
		}
	}
	return out, contributors, overLimit
}

func countExecutables(rules v1alpha1.RulesByContainer) int {
	n := 0
	for _, r := range rules {
		n += len(r.Executables)
	}
	return n
}

// ProposalName is the name of a workload's proposal: "<kind in lower case>-<name>",
// such as "deployment-web" or "cronjob-backup". A name longer than
// MaxProposalNameLength is cut and ends in "-" and 10 hexadecimal digits of a hash of
// the kind and full name, so that it stays unique and deterministic.
func ProposalName(w v1alpha1.WorkloadReference) string {
	name := strings.ToLower(w.Kind) + "-" + w.Name
	if len(name) <= MaxProposalNameLength && len(validation.IsDNS1123Subdomain(name)) == 0 {
		return name
	}
	sum := sha256.Sum256([]byte(w.Kind + "/" + w.Name))
	suffix := "-" + hex.EncodeToString(sum[:])[:10]
	// Workload names are DNS subdomains: cutting may leave a trailing "-" or ".", which
	// cannot end a label.
	head := strings.TrimRight(name[:min(len(name), MaxProposalNameLength-len(suffix))], "-.")
	return head + suffix
}

// ownerKey names an owner object read during one flush.
type ownerKey struct {
	gvk             schema.GroupVersionKind
	namespace, name string
}

type ownerResult struct {
	controller *metav1.OwnerReference
	err        error
}

// resolve returns the workload of a pod: from the cache, or by following controller
// references from the pod (read from Client, then APIReader if the cache misses it).
func (l *ProposalLearner) resolve(ctx context.Context, pod podRef, memo map[ownerKey]ownerResult) (v1alpha1.WorkloadReference, error) {
	if r, ok := l.workloads.Get(pod); ok && l.now().Sub(r.at) < learnWorkloadTTL {
		return r.ref, r.err
	}
	ref, err := l.resolveUncached(ctx, pod, memo)
	if err == nil || (errors.Is(err, errNotLearnable) && !errors.Is(err, errPodGone)) {
		l.workloads.Add(pod, resolvedWorkload{ref: ref, err: err, at: l.now()})
	}
	return ref, err
}

func (l *ProposalLearner) resolveUncached(ctx context.Context, pod podRef, memo map[ownerKey]ownerResult) (v1alpha1.WorkloadReference, error) {
	var p corev1.Pod
	key := types.NamespacedName{Namespace: pod.namespace, Name: pod.name}
	err := l.Client.Get(ctx, key, &p)
	if apierrors.IsNotFound(err) && l.APIReader != nil {
		err = l.APIReader.Get(ctx, key, &p)
	}
	if apierrors.IsNotFound(err) {
		return v1alpha1.WorkloadReference{}, errPodGone
	}
	if err != nil {
		return v1alpha1.WorkloadReference{}, fmt.Errorf("get pod: %w", err)
	}
	owner := metav1.GetControllerOf(&p)
	if owner == nil {
		return v1alpha1.WorkloadReference{APIVersion: "v1", Kind: "Pod", Name: p.Name}, nil
	}
	group := ownerGroup(owner)
	switch {
	case group == "apps" && (owner.Kind == "StatefulSet" || owner.Kind == "DaemonSet"):
		return workloadOf(owner), nil
	case group == "apps" && owner.Kind == "ReplicaSet":
		top, err := l.controllerOf(ctx, pod.namespace, owner, memo)
		if err != nil {
			return v1alpha1.WorkloadReference{}, err
		}
		if top == nil || ownerGroup(top) != "apps" || top.Kind != "Deployment" {
			return v1alpha1.WorkloadReference{}, fmt.Errorf("ReplicaSet %s is not controlled by a Deployment; Learn records Deployments, StatefulSets, DaemonSets, CronJobs, Jobs and pods without a controller: %w", owner.Name, errNotLearnable)
		}
		return workloadOf(top), nil
	case group == "batch" && owner.Kind == "Job":
		top, err := l.controllerOf(ctx, pod.namespace, owner, memo)
		if err != nil {
			return v1alpha1.WorkloadReference{}, err
		}
		if top == nil {
			return workloadOf(owner), nil
		}
		if ownerGroup(top) != "batch" || top.Kind != "CronJob" {
			return v1alpha1.WorkloadReference{}, fmt.Errorf("job %s is controlled by %s %s, not a CronJob: %w", owner.Name, top.Kind, top.Name, errNotLearnable)
		}
		return workloadOf(top), nil
	}
	return v1alpha1.WorkloadReference{}, fmt.Errorf("controlled by %s %s (%s); Learn records Deployments, StatefulSets, DaemonSets, CronJobs, Jobs and pods without a controller: %w",
		owner.Kind, owner.Name, owner.APIVersion, errNotLearnable)
}

// controllerOf reads an owner's metadata and returns its controller reference (nil if
// it has none). Owners are read once per flush.
func (l *ProposalLearner) controllerOf(ctx context.Context, namespace string, ref *metav1.OwnerReference, memo map[ownerKey]ownerResult) (*metav1.OwnerReference, error) {
	gv, err := schema.ParseGroupVersion(ref.APIVersion)
	if err != nil {
		return nil, fmt.Errorf("owner %s %s: apiVersion %q: %v: %w", ref.Kind, ref.Name, ref.APIVersion, err, errNotLearnable)
	}
	key := ownerKey{gvk: gv.WithKind(ref.Kind), namespace: namespace, name: ref.Name}
	if r, ok := memo[key]; ok {
		return r.controller, r.err
	}
	obj := &metav1.PartialObjectMetadata{}
	obj.SetGroupVersionKind(key.gvk)
	err = l.apiReader().Get(ctx, types.NamespacedName{Namespace: namespace, Name: ref.Name}, obj)
	var r ownerResult
	switch {
	case apierrors.IsNotFound(err):
		r.err = fmt.Errorf("%s %s is gone: %w", ref.Kind, ref.Name, errNotLearnable)
	case err != nil:
		return nil, fmt.Errorf("get %s %s: %w", ref.Kind, ref.Name, err) // not memoized: may be transient
	case obj.UID != ref.UID && ref.UID != "":
		r.err = fmt.Errorf("%s %s was replaced by another object of that name: %w", ref.Kind, ref.Name, errNotLearnable)
	default:
		r.controller = metav1.GetControllerOfNoCopy(obj)
	}
	memo[key] = r
	return r.controller, r.err
}

func ownerGroup(ref *metav1.OwnerReference) string {
	gv, err := schema.ParseGroupVersion(ref.APIVersion)
	if err != nil {
		return ""
	}
	return gv.Group
}

func workloadOf(ref *metav1.OwnerReference) v1alpha1.WorkloadReference {
	return v1alpha1.WorkloadReference{APIVersion: ref.APIVersion, Kind: ref.Kind, Name: ref.Name}
}

func comparePodRefs(a, b podRef) int {
	if c := strings.Compare(a.namespace, b.namespace); c != 0 {
		return c
	}
	return strings.Compare(a.name, b.name)
}

func compareNames(a, b types.NamespacedName) int {
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

func (l *ProposalLearner) apiReader() client.Reader {
	if l.APIReader != nil {
		return l.APIReader
	}
	return l.Client
}

func (l *ProposalLearner) flushInterval() time.Duration {
	if l.FlushInterval > 0 {
		return l.FlushInterval
	}
	return DefaultLearnFlushInterval
}

func (l *ProposalLearner) maxPending() int {
	if l.MaxPending > 0 {
		return l.MaxPending
	}
	return DefaultLearnMaxPending
}

func (l *ProposalLearner) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

func (l *ProposalLearner) logger() *zap.Logger {
	if l.Log == nil {
		return zap.NewNop()
	}
	return l.Log
}
