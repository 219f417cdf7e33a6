package policy

import (
	"context"
	"errors"
	"fmt"
	lru "github.com/hashicorp/golang-lru/v2"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/execgate/execgate/api/v1alpha1"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/webhook/agents"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// nodeConcurrency bounds the nodes one reconcile talks to at once.
	nodeConcurrency = 16
	// retryFailingAfter re-runs a policy with failing nodes or unscheduled pods.
	retryFailingAfter = 30 * time.Second
)

// PolicyReconciler rolls a WorkloadPolicy out to the nodes that run its pods and reports
// whether it is in force. It runs on the leader only. On change it pushes the current
// generation once per labelled pod, to that pod's node only (nodes without the policy's
// pods get nothing). A deleted policy is kept (finalizer) while pods bound to it run: they
// keep its last generation until they are gone (a pod's policy is fixed when it is bound),
// and condition Deleting says so; then the policy is unloaded on the nodes. Lowering the mode
// while pods run is applied and reported (condition Weakened). Both are Warning Events on the
// policy and metrics. Status is written at most once per reconcile.
type PolicyReconciler struct {
	// Client reads from the cache and writes status.
	Client      client.Client
	Agents      agents.AgentClients
	PushTimeout time.Duration
	// Recorder writes the Warning Events of a weakened or deleted policy (none if nil).
	Recorder events.EventRecorder
	Log      *zap.Logger
	// Now stamps failing nodes; time.Now if nil.
	Now func() time.Time

	// mu guards nodesByPolicy; controller-runtime runs one Reconcile per key at a time, but
	// different policies reconcile concurrently when MaxConcurrentReconciles > 1.
	mu sync.Mutex
	// nodesByPolicy remembers which nodes were sent a policy, so a delete reaches nodes
	// whose pods are already gone. It is lost on restart; the agents' own GC covers that.
	nodesByPolicy map[types.NamespacedName]map[string]bool
	// acked remembers, per pod UID, the policy generation its agent acknowledged
	// (applied or already loaded). Pod events requeue the whole policy to recount its
	// status; without this every pod event would re-push every pod of the policy, a
	// cost quadratic in the policy's pods during a rollout. Bounded; a forgotten
	// entry only costs one no-op push. An agent that lost state meanwhile is repaired
	// by its own watch of the API server.
	ackedOnce sync.Once
	acked     *lru.Cache[types.UID, ackedPush]
}

// ackedPush is what an agent acknowledged for one pod.
type ackedPush struct {
	policy     types.UID
	generation int64
	node       string
}

// maxAckedPods bounds the acknowledged-push cache (about 100 bytes an entry).
const maxAckedPods = 1 << 16

func (r *PolicyReconciler) ackCache() *lru.Cache[types.UID, ackedPush] {
	r.ackedOnce.Do(func() { r.acked, _ = lru.New[types.UID, ackedPush](maxAckedPods) })
	return r.acked
}

// SetupWithManager registers the reconciler: WorkloadPolicies, and the pods that carry
// the policy label (a new, rebound, relabelled or deleted pod changes the status).
func (r *PolicyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	err := ctrl.NewControllerManagedBy(mgr).
		Named("workloadpolicy").
		For(&v1alpha1.WorkloadPolicy{}).
		Watches(&corev1.Pod{}, podToPolicy()).
		Complete(r)
	if err != nil {
		return fmt.Errorf("set up workloadpolicy controller: %w", err)
	}
	return nil
}

// podToPolicy enqueues the policy a pod names, on create and delete, and on an update
// that moves it to a node, changes its label or ends it (other pod updates are frequent
// and change nothing here).
func podToPolicy() handler.EventHandler {
	enqueue := func(q workqueue.TypedRateLimitingInterface[reconcile.Request], obj client.Object) {
		if name := obj.GetLabels()[v1alpha1.PolicyLabel]; name != "" {
			q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: obj.GetNamespace(), Name: name}})
		}
	}
	return handler.Funcs{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(q, e.Object)
		},
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(q, e.Object)
		},
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			oldPod, ok1 := e.ObjectOld.(*corev1.Pod)
			newPod, ok2 := e.ObjectNew.(*corev1.Pod)
			if !ok1 || !ok2 {
				return
			}
			if oldPod.Spec.NodeName == newPod.Spec.NodeName &&
				oldPod.Labels[v1alpha1.PolicyLabel] == newPod.Labels[v1alpha1.PolicyLabel] &&
				terminal(oldPod) == terminal(newPod) {
				return
			}
			enqueue(q, oldPod)
			enqueue(q, newPod)
		},
	}
}

func terminal(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

// nodeResult is what one node did with the policy's pods.
type nodeResult struct {
	node        string
	podsInForce int
	failure     string // empty when every pod's push succeeded
}

// Event reasons recorded on WorkloadPolicies.
const (
	ReasonPolicyWeakened     = "PolicyWeakened"
	ReasonPolicyDeletedInUse = "PolicyDeletedInUse"
)

// modeStrength orders the modes: lowering it weakens the policy's pods.
func modeStrength(m v1alpha1.Mode) int {
	switch m {
	case v1alpha1.ModeProtect:
		return 2
	case v1alpha1.ModeMonitor:
		return 1
	}
	return 0
}

// Reconcile implements reconcile.Reconciler.
func (r *PolicyReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	log := r.logger().With(zap.String("namespace", req.Namespace), zap.String("policy", req.Name))
	var policy v1alpha1.WorkloadPolicy
	if err := r.Client.Get(ctx, req.NamespacedName, &policy); err != nil {
		if apierrors.IsNotFound(err) {
			return reconcile.Result{}, r.removeEverywhere(ctx, req.NamespacedName, log)
		}
		return reconcile.Result{}, fmt.Errorf("get policy %s: %w", req.NamespacedName, err)
	}
	log = log.With(zap.Int64("generation", policy.Generation))

	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(req.Namespace), client.MatchingLabels{v1alpha1.PolicyLabel: req.Name}); err != nil {
		return reconcile.Result{}, fmt.Errorf("list pods of policy %s: %w", req.NamespacedName, err)
	}
	if policy.DeletionTimestamp != nil {
		return r.reconcileDeleted(ctx, &policy, pods.Items, log)
	}
	if !controllerutil.ContainsFinalizer(&policy, v1alpha1.PodsEnforcedFinalizer) && len(pods.Items) > 0 {
		patch := client.MergeFrom(policy.DeepCopy())
		controllerutil.AddFinalizer(&policy, v1alpha1.PodsEnforcedFinalizer)
		if err := r.Client.Patch(ctx, &policy, patch); err != nil {
			return reconcile.Result{}, fmt.Errorf("add finalizer to policy %s: %w", req.NamespacedName, err)
		}
	}
	byNode := map[string][]*corev1.Pod{}
	total, unscheduled := 0, 0
	var writableRoot []string
	for i := range pods.Items {
		pod := &pods.Items[i]
		if terminal(pod) {
			continue
		}
		total++
		if rw := agents.WritableRootContainers(pod); len(rw) > 0 {
			writableRoot = append(writableRoot, pod.Name+" ("+strings.Join(rw, ", ")+")")
		}
		if pod.Spec.NodeName == "" {
			unscheduled++ // the binding webhook pushes it when it gets a node
			continue
		}
		byNode[pod.Spec.NodeName] = append(byNode[pod.Spec.NodeName], pod)
	}

	status := v1alpha1.WorkloadPolicyStatus{ObservedGeneration: policy.Generation, Mode: policy.Spec.Mode, PodsTotal: int32(total), Conditions: slices.Clone(policy.Status.Conditions)}
	var results []nodeResult
	if err := policy.Validate(); err != nil {
		log.Warn("policy is invalid; nodes keep the last valid generation", zap.Error(err))
		setCondition(&status, v1alpha1.ConditionReady, false, v1alpha1.ReasonInvalidPolicy, err.Error())
		setCondition(&status, v1alpha1.ConditionDegraded, false, v1alpha1.ReasonNoFailures, "no node was asked to enforce an invalid generation")
	} else {
		r.remember(req.NamespacedName, slices.Collect(maps.Keys(byNode)))
		results = r.pushAll(ctx, &policy, byNode, log)
		r.summarise(&status, &policy, results, total, unscheduled)
		r.checkWeakened(&status, &policy, total, log)
	}
	setWritableRoot(&status, &policy, writableRoot)
	if err := r.writeStatus(ctx, &policy, status); err != nil {
		return reconcile.Result{}, err
	}
	if status.FailingNodesTotal > 0 || unscheduled > 0 {
		return reconcile.Result{RequeueAfter: retryFailingAfter}, nil
	}
	return reconcile.Result{}, nil
}

// pushAll pushes the policy to every pod, nodes in parallel (bounded), pods of one node
// one after the other.
func (r *PolicyReconciler) pushAll(ctx context.Context, policy *v1alpha1.WorkloadPolicy, byNode map[string][]*corev1.Pod, log *zap.Logger) []nodeResult {
	nodes := slices.Sorted(maps.Keys(byNode))
	results := make([]nodeResult, len(nodes))
	pusher := &agents.Pusher{Agents: r.Agents, Timeout: r.pushTimeout()}
	var g errgroup.Group
	g.SetLimit(nodeConcurrency)
	for i, node := range nodes {
		g.Go(func() error {
			res := nodeResult{node: node}
			want := ackedPush{policy: policy.UID, generation: policy.Generation, node: node}
			for _, pod := range byNode[node] {
				if got, ok := r.ackCache().Get(pod.UID); ok && got == want {
					res.podsInForce++
					continue
				}
				req, err := agents.CompilePodPolicy(pod, node, policy, "")
				if err == nil {
					_, err = pusher.Push(ctx, node, req)
				}
				if err == nil {
					r.ackCache().Add(pod.UID, want)
				}
				if err != nil {
					if res.failure == "" {
						res.failure = err.Error()
					}
					log.Warn("push failed", zap.String("node", node), zap.String("pod", pod.Name), zap.Error(err))
					continue
				}
				res.podsInForce++
			}
			results[i] = res // each goroutine writes its own index
			return nil
		})
	}
	_ = g.Wait() // the goroutines return nil: failures are in results
	return results
}

func (r *PolicyReconciler) summarise(status *v1alpha1.WorkloadPolicyStatus, policy *v1alpha1.WorkloadPolicy, results []nodeResult, total, unscheduled int) {
	now := metav1.NewTime(r.now())
	previous := map[string]v1alpha1.NodeFailure{}
	for _, f := range policy.Status.FailingNodes {
		previous[f.Node] = f
	}
	for _, res := range results {
		status.PodsInForce += int32(res.podsInForce)
		if res.failure == "" {
			status.NodesInForce++
			continue
		}
		status.FailingNodesTotal++
		if len(status.FailingNodes) >= v1alpha1.MaxFailingNodes {
			continue
		}
		f := v1alpha1.NodeFailure{Node: res.node, Reason: truncate(res.failure, 1024), LastTransitionTime: now}
		if old, ok := previous[res.node]; ok && old.Reason == f.Reason {
			f.LastTransitionTime = old.LastTransitionTime
		}
		status.FailingNodes = append(status.FailingNodes, f)
	}
	switch {
	case status.FailingNodesTotal > 0:
		msg := fmt.Sprintf("%d node(s) failed to enforce generation %d; see status.failingNodes", status.FailingNodesTotal, policy.Generation)
		setCondition(status, v1alpha1.ConditionReady, false, v1alpha1.ReasonNodesFailing, msg)
		setCondition(status, v1alpha1.ConditionDegraded, true, v1alpha1.ReasonNodesFailing, msg)
	case total == 0:
		setCondition(status, v1alpha1.ConditionReady, true, v1alpha1.ReasonNoPods, "no pod carries the label "+v1alpha1.PolicyLabel+"="+policy.Name)
	case unscheduled > 0:
		setCondition(status, v1alpha1.ConditionReady, false, v1alpha1.ReasonRollingOut, fmt.Sprintf("%d of %d pods are not scheduled yet", unscheduled, total))
	default:
		setCondition(status, v1alpha1.ConditionReady, true, v1alpha1.ReasonInForce, fmt.Sprintf("generation %d is in force for all %d pods", policy.Generation, total))
	}
	if status.FailingNodesTotal == 0 {
		setCondition(status, v1alpha1.ConditionDegraded, false, v1alpha1.ReasonNoFailures, "no node reported a failure")
	}
	for i := range status.Conditions {
		status.Conditions[i].ObservedGeneration = policy.Generation
	}
}

// checkWeakened reports a mode lowered (from the mode of the last observed generation)
// while pods ran under the policy. It is applied: this is how a Protect rollout that breaks
// a workload is relaxed, so it must be seen, not refused.
func (r *PolicyReconciler) checkWeakened(status *v1alpha1.WorkloadPolicyStatus, policy *v1alpha1.WorkloadPolicy, pods int, log *zap.Logger) {
	from, to := policy.Status.Mode, policy.Spec.Mode
	switch {
	case to == v1alpha1.ModeProtect:
		if meta.FindStatusCondition(status.Conditions, v1alpha1.ConditionWeakened) != nil {
			setCondition(status, v1alpha1.ConditionWeakened, false, v1alpha1.ReasonProtectRestored, "the mode is Protect")
		}
	case from != "" && policy.Status.ObservedGeneration != policy.Generation && modeStrength(to) < modeStrength(from) && pods > 0:
		msg := fmt.Sprintf("mode lowered from %s to %s at generation %d while %d pod(s) ran under it: executables outside the allowlist are no longer denied", from, to, policy.Generation, pods)
		if to == v1alpha1.ModeLearn {
			msg = fmt.Sprintf("mode lowered from %s to Learn at generation %d while %d pod(s) ran under it: everything runs and is recorded", from, policy.Generation, pods)
		}
		setCondition(status, v1alpha1.ConditionWeakened, true, v1alpha1.ReasonModeLowered, msg)
		policyWeakenedTotal.WithLabelValues(policy.Namespace, policy.Name, string(from), string(to)).Inc()
		r.event(policy, ReasonPolicyWeakened, "Weaken", msg)
		log.Warn("policy mode lowered while pods run under it", zap.String("from", string(from)), zap.String("to", string(to)), zap.Int("pods", pods))
	}
}

// reconcileDeleted keeps a deleted policy, without pushing anything, while pods bound to
// it before the deletion run: the agents keep enforcing its last generation for them. Pods
// created after the deletion are not bound to it (the webhook treats a policy being deleted
// as missing). With the last of them gone the finalizer is removed; the NotFound reconcile
// that follows unloads the policy on its nodes.
func (r *PolicyReconciler) reconcileDeleted(ctx context.Context, policy *v1alpha1.WorkloadPolicy, pods []corev1.Pod, log *zap.Logger) (reconcile.Result, error) {
	if !controllerutil.ContainsFinalizer(policy, v1alpha1.PodsEnforcedFinalizer) {
		return reconcile.Result{}, nil // another finalizer holds it; nothing of ours to do
	}
	inUse := 0
	for i := range pods {
		pod := &pods[i]
		if !terminal(pod) && pod.Spec.NodeName != "" && pod.CreationTimestamp.Before(policy.DeletionTimestamp) {
			inUse++
		}
	}
	if inUse == 0 {
		patch := client.MergeFrom(policy.DeepCopy())
		controllerutil.RemoveFinalizer(policy, v1alpha1.PodsEnforcedFinalizer)
		if err := r.Client.Patch(ctx, policy, patch); err != nil && !apierrors.IsNotFound(err) {
			return reconcile.Result{}, fmt.Errorf("remove finalizer of policy %s/%s: %w", policy.Namespace, policy.Name, err)
		}
		return reconcile.Result{}, nil
	}
	status := *policy.Status.DeepCopy()
	first := !meta.IsStatusConditionTrue(status.Conditions, v1alpha1.ConditionDeleting)
	msg := fmt.Sprintf("deleted while %d pod(s) bound to it run: they keep enforcing generation %d (mode %s) until they are deleted; the policy goes with the last of them, pods created since run without it",
		inUse, policy.Status.ObservedGeneration, policy.Status.Mode)
	setCondition(&status, v1alpha1.ConditionDeleting, true, v1alpha1.ReasonPodsStillEnforced, msg)
	if first {
		policyDeletionsInUseTotal.WithLabelValues(policy.Namespace, policy.Name).Inc()
		r.event(policy, ReasonPolicyDeletedInUse, "Delete", msg)
		log.Warn("policy deleted while pods use it; they keep enforcing it", zap.Int("pods", inUse))
	}
	if err := r.writeStatus(ctx, policy, status); err != nil {
		return reconcile.Result{}, err
	}
	return reconcile.Result{RequeueAfter: retryFailingAfter}, nil
}

// setWritableRoot reports the Protect pods whose containers have a writable root
// filesystem (at most 5 named), where an allowed path can be overwritten.
func setWritableRoot(status *v1alpha1.WorkloadPolicyStatus, policy *v1alpha1.WorkloadPolicy, pods []string) {
	if policy.Spec.Mode != v1alpha1.ModeProtect {
		meta.RemoveStatusCondition(&status.Conditions, v1alpha1.ConditionWritableRootFilesystem)
		return
	}
	if len(pods) == 0 {
		setCondition(status, v1alpha1.ConditionWritableRootFilesystem, false, v1alpha1.ReasonReadOnlyRoot, "every container of the policy's pods has a read-only root filesystem")
		return
	}
	slices.Sort(pods)
	named := pods
	if len(named) > 5 {
		named = named[:5]
	}
	msg := fmt.Sprintf("%d pod(s) have containers with a writable root filesystem, where an allowed path can be overwritten with another program that then runs as the allowed one: %s", len(pods), strings.Join(named, "; "))
	if len(pods) > len(named) {
		msg += fmt.Sprintf("; and %d more", len(pods)-len(named))
	}
	setCondition(status, v1alpha1.ConditionWritableRootFilesystem, true, v1alpha1.ReasonWritableRoot, msg+". Set securityContext.readOnlyRootFilesystem: true")
}

func (r *PolicyReconciler) event(policy *v1alpha1.WorkloadPolicy, reason, action, note string) {
	if r.Recorder != nil {
		r.Recorder.Eventf(policy, nil, corev1.EventTypeWarning, reason, action, "%s", note)
	}
}

func setCondition(status *v1alpha1.WorkloadPolicyStatus, typ string, ok bool, reason, msg string) {
	s := metav1.ConditionFalse
	if ok {
		s = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{Type: typ, Status: s, Reason: reason, Message: truncate(msg, 32768), ObservedGeneration: status.ObservedGeneration})
}

// writeStatus patches the status once, and not at all when nothing changed.
func (r *PolicyReconciler) writeStatus(ctx context.Context, policy *v1alpha1.WorkloadPolicy, status v1alpha1.WorkloadPolicyStatus) error {
	if statusEqual(policy.Status, status) {
		return nil
	}
	patch := client.MergeFrom(policy.DeepCopy())
	policy.Status = status
	if err := r.Client.Status().Patch(ctx, policy, patch); err != nil {
		return fmt.Errorf("write status of policy %s/%s: %w", policy.Namespace, policy.Name, err)
	}
	return nil
}

func statusEqual(a, b v1alpha1.WorkloadPolicyStatus) bool {
	return a.ObservedGeneration == b.ObservedGeneration && a.Mode == b.Mode && a.PodsInForce == b.PodsInForce &&
		a.PodsTotal == b.PodsTotal && a.NodesInForce == b.NodesInForce && a.FailingNodesTotal == b.FailingNodesTotal &&
		slices.EqualFunc(a.FailingNodes, b.FailingNodes, func(x, y v1alpha1.NodeFailure) bool {
			return x.Node == y.Node && x.Reason == y.Reason && x.LastTransitionTime.Equal(&y.LastTransitionTime)
		}) &&
		slices.EqualFunc(a.Conditions, b.Conditions, func(x, y metav1.Condition) bool {
			return x.Type == y.Type && x.Status == y.Status && x.Reason == y.Reason && x.Message == y.Message &&
				x.ObservedGeneration == y.ObservedGeneration && x.LastTransitionTime.Equal(&y.LastTransitionTime)
		})
}

// removeEverywhere handles a policy that is gone: unload it on every node that has (or had)
// its pods. Pods still bound to it are not unbound: a running pod keeps its policy until it
// is deleted, and its agent unloads the policy with its last pod. Errors are returned so the
// key is retried with backoff.
func (r *PolicyReconciler) removeEverywhere(ctx context.Context, key types.NamespacedName, log *zap.Logger) error {
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(key.Namespace), client.MatchingLabels{v1alpha1.PolicyLabel: key.Name}); err != nil {
		return fmt.Errorf("list pods of deleted policy %s: %w", key, err)
	}
	podsByNode := map[string]int{}
	for _, node := range r.rememberedNodes(key) {
		podsByNode[node] = 0
	}
	for _, pod := range pods.Items {
		if pod.Spec.NodeName != "" {
			podsByNode[pod.Spec.NodeName]++
		}
	}
	var (
		g    errgroup.Group
		mu   sync.Mutex
		errs []error
	)
	g.SetLimit(nodeConcurrency)
	for node := range podsByNode {
		g.Go(func() error {
			if err := r.removeFromNode(ctx, node, key); err != nil {
				log.Warn("remove deleted policy from node", zap.String("node", node), zap.Error(err))
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
			return nil
		})
	}
	_ = g.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove deleted policy %s: %w", key, err)
	}
	r.forget(key)
	if len(podsByNode) > 0 {
		log.Info("deleted policy removed from nodes", zap.Int("nodes", len(podsByNode)))
	}
	return nil
}

func (r *PolicyReconciler) removeFromNode(ctx context.Context, node string, key types.NamespacedName) error {
	agent, err := r.Agents.Client(node)
	if errors.Is(err, agents.ErrNoAgent) {
		return nil // no agent, nothing loaded; a new agent starts from the API server's state
	}
	if err != nil {
		return fmt.Errorf("node %s: %w", node, err)
	}
	cctx, cancel := context.WithTimeout(ctx, r.pushTimeout())
	defer cancel()
	_, err = agent.RemovePolicy(cctx, &agentv1.RemovePolicyRequest{Namespace: key.Namespace, Name: key.Name})
	if status.Code(err) == codes.FailedPrecondition {
		return nil // pods there still run under it: the agent unloads it after the last one
	}
	if err != nil {
		return fmt.Errorf("node %s: remove policy: %w", node, err)
	}
	return nil
}

func (r *PolicyReconciler) remember(key types.NamespacedName, nodes []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.nodesByPolicy == nil {
		r.nodesByPolicy = map[types.NamespacedName]map[string]bool{}
	}
	if r.nodesByPolicy[key] == nil {
		r.nodesByPolicy[key] = map[string]bool{}
	}
	for _, n := range nodes {
		r.nodesByPolicy[key][n] = true
	}
}

func (r *PolicyReconciler) rememberedNodes(key types.NamespacedName) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Collect(maps.Keys(r.nodesByPolicy[key]))
}

func (r *PolicyReconciler) forget(key types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.nodesByPolicy, key)
}

func (r *PolicyReconciler) pushTimeout() time.Duration {
	if r.PushTimeout <= 0 {
		return time.Second
	}
	return r.PushTimeout
}

func (r *PolicyReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *PolicyReconciler) logger() *zap.Logger {
	if r.Log == nil {
		return zap.NewNop()
	}
	return r.Log
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
