package webhook

import (
	"context"
	"errors"
	"fmt"
	lru "github.com/hashicorp/golang-lru/v2"
	"maps"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/execgate/execgate/api/v1alpha1"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
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
// pods get nothing); on delete it unbinds the pods and unloads the policy on those nodes.
// Status is written at most once per reconcile.
type PolicyReconciler struct {
	// Client reads from the cache and writes status.
	Client      client.Client
	Agents      AgentClients
	PushTimeout time.Duration
	Log         *zap.Logger
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
	byNode := map[string][]*corev1.Pod{}
	total, unscheduled := 0, 0
	for i := range pods.Items {
		pod := &pods.Items[i]
		if terminal(pod) {
			continue
		}
		total++
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
	}
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
	pusher := &Pusher{Agents: r.Agents, Timeout: r.pushTimeout()}
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
				req, err := CompilePodPolicy(pod, node, policy, "")
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

// removeEverywhere handles a deleted policy: unbind its pods, then unload it, on every node
// that has (or had) them. Errors are returned so the key is retried with backoff.
func (r *PolicyReconciler) removeEverywhere(ctx context.Context, key types.NamespacedName, log *zap.Logger) error {
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(key.Namespace), client.MatchingLabels{v1alpha1.PolicyLabel: key.Name}); err != nil {
		return fmt.Errorf("list pods of deleted policy %s: %w", key, err)
	}
	podsByNode := map[string][]string{}
	for _, node := range r.rememberedNodes(key) {
		podsByNode[node] = nil
	}
	for _, pod := range pods.Items {
		if pod.Spec.NodeName != "" {
			podsByNode[pod.Spec.NodeName] = append(podsByNode[pod.Spec.NodeName], string(pod.UID))
		}
	}
	var (
		g    errgroup.Group
		mu   sync.Mutex
		errs []error
	)
	g.SetLimit(nodeConcurrency)
	for node, uids := range podsByNode {
		g.Go(func() error {
			if err := r.removeFromNode(ctx, node, key, uids); err != nil {
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

func (r *PolicyReconciler) removeFromNode(ctx context.Context, node string, key types.NamespacedName, podUIDs []string) error {
	agent, err := r.Agents.Client(node)
	if errors.Is(err, ErrNoAgent) {
		return nil // no agent, nothing loaded; a new agent starts from the API server's state
	}
	if err != nil {
		return fmt.Errorf("node %s: %w", node, err)
	}
	for _, uid := range podUIDs {
		cctx, cancel := context.WithTimeout(ctx, r.pushTimeout())
		_, err := agent.RemovePod(cctx, &agentv1.RemovePodRequest{PodUid: uid})
		cancel()
		if err != nil {
			return fmt.Errorf("node %s: remove pod %s: %w", node, uid, err)
		}
	}
	cctx, cancel := context.WithTimeout(ctx, r.pushTimeout())
	defer cancel()
	if _, err := agent.RemovePolicy(cctx, &agentv1.RemovePolicyRequest{Namespace: key.Namespace, Name: key.Name}); err != nil {
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
