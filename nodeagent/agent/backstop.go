package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/nodeagent/enforcer"
	"github.com/execgate/execgate/nodeagent/podpolicy"
)

// Backstop lets the agent read pods and policies from the API server, so
// that a pod whose push was lost (webhook timed out and failed open, agent
// restarted) still gets its policy, and container names are learnt from the
// pod status.
type Backstop struct {
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	// Config is what Kube and Dynamic were made from; the secure metrics endpoint
	// reviews its clients' tokens with it.
	Config *rest.Config
	// Resync re-checks every local pod this often (default 10m).
	Resync time.Duration
}

// WorkloadPolicyResource is the resource the backstop watches.
var WorkloadPolicyResource = v1alpha1.GroupVersion.WithResource("workloadpolicies")

// backstopItem is one unit of work: a pod to reconcile (by namespace/name),
// a pod uid to remove, or a policy whose local pods to reconcile.
type backstopItem struct {
	kind backstopKind
	key  string
}

type backstopKind uint8

const (
	itemPod backstopKind = iota
	itemRemovePod
	itemPolicy
)

type backstop struct {
	a        *Agent
	pods     cache.SharedIndexInformer
	policies cache.SharedIndexInformer
	queue    workqueue.TypedRateLimitingInterface[backstopItem]
	recorder events.EventRecorder
	log      *zap.Logger
	// labelReported maps the uid of a bound pod whose policy label changed to
	// the label value last reported, so that each change is reported once
	// (resyncs and unrelated updates are not). Owned by the goroutine that
	// runs processNext; an entry goes with its pod.
	labelReported map[string]string
	// pending holds the keys of the first list's pods not reconciled yet; nil
	// once the backstop has caught up. Owned like labelReported.
	pending map[string]bool
}

// ReasonPolicyLabelChanged is the reason of the Warning Event the agent
// writes on a running pod whose execgate.io/policy label changed.
const ReasonPolicyLabelChanged = "PolicyLabelChanged"

// runBackstop watches this node's pods and the workload policies, and
// reconciles one item at a time until ctx ends.
func (a *Agent) runBackstop(ctx context.Context) error {
	bs := a.opts.Backstop
	if bs.Resync <= 0 {
		bs.Resync = 10 * time.Minute
	}
	node := a.opts.NodeName
	pf := informers.NewSharedInformerFactoryWithOptions(bs.Kube, bs.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
		}))
	df := dynamicinformer.NewDynamicSharedInformerFactory(bs.Dynamic, bs.Resync)
	b := &backstop{
		a:        a,
		pods:     pf.Core().V1().Pods().Informer(),
		policies: df.ForResource(WorkloadPolicyResource).Informer(),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[backstopItem](),
			workqueue.TypedRateLimitingQueueConfig[backstopItem]{Name: "execgate-agent-backstop"}),
		log:           a.log.Named("backstop"),
		labelReported: map[string]string{},
	}
	exists := func(namespace, name string) bool {
		_, ok, err := b.policies.GetStore().GetByKey(namespace + "/" + name)
		return ok && err == nil
	}
	defer b.queue.ShutDown()
	broadcaster := events.NewBroadcaster(NodeEventSink(bs.Kube, node))
	if err := broadcaster.StartRecordingToSinkWithContext(ctx); err != nil {
		return fmt.Errorf("backstop: start event recorder: %w", err)
	}
	defer broadcaster.Shutdown()
	b.recorder = broadcaster.NewRecorder(clientgoscheme.Scheme, "execgate-agent")
	a.events.Store(&eventSink{b.recorder})
	defer a.events.Store(nil)
	if err := b.addHandlers(); err != nil {
		return err
	}
	pf.Start(ctx.Done())
	df.Start(ctx.Done())
	defer pf.Shutdown()
	defer df.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), b.pods.HasSynced, b.policies.HasSynced) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("backstop: informer caches did not sync")
	}
	a.policyExists.Store(&exists)
	b.log.Info("backstop watching pods and workload policies", zap.Int("local_pods", len(b.pods.GetStore().ListKeys())))
	stop := context.AfterFunc(ctx, b.queue.ShutDown)
	defer stop()
	b.pending = b.firstList()
	b.reconciled(backstopItem{}) // a node with no pods has caught up already
	for b.processNext(ctx) {
	}
	return nil
}

// firstList returns the keys of the pods of the synced informers' first list:
// the backstop has caught up once each has been reconciled without error.
func (b *backstop) firstList() map[string]bool {
	keys := map[string]bool{}
	for _, k := range b.pods.GetStore().ListKeys() {
		keys[k] = true
	}
	return keys
}

// reconciled records that a pod item reconciled without error and marks the
// agent caught up once none of the first list is left.
func (b *backstop) reconciled(item backstopItem) {
	if b.pending == nil {
		return
	}
	if item.kind == itemPod {
		delete(b.pending, item.key)
	}
	if len(b.pending) == 0 {
		b.pending = nil
		b.a.backstopCaughtUp.Store(true)
		b.log.Info("backstop caught up: every pod bound to this node has had its policy applied once")
	}
}

// NodeEventSink writes the agent's events.k8s.io Events with reportingInstance
// "execgate-agent-<node>" (the events library would put the pod's host name there): the
// chart's admission policy agent-node-guard accepts an agent's Event only when it names the
// node of the agent's service account token (issue 14.8), so every Event says which node
// wrote it.
func NodeEventSink(kube kubernetes.Interface, node string) events.EventSink {
	return &nodeEventSink{EventSink: &events.EventSinkImpl{Interface: kube.EventsV1()}, instance: "execgate-agent-" + node}
}

type nodeEventSink struct {
	events.EventSink
	instance string
}

func (s *nodeEventSink) Create(ctx context.Context, ev *eventsv1.Event) (*eventsv1.Event, error) {
	ev = ev.DeepCopy()
	ev.ReportingInstance = s.instance
	return s.EventSink.Create(ctx, ev)
}

func (s *nodeEventSink) Update(ctx context.Context, ev *eventsv1.Event) (*eventsv1.Event, error) {
	ev = ev.DeepCopy()
	ev.ReportingInstance = s.instance
	return s.EventSink.Update(ctx, ev)
}

func (b *backstop) addHandlers() error {
	enqueuePod := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			b.queue.Add(backstopItem{kind: itemPod, key: key})
		}
	}
	if _, err := b.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueuePod,
		UpdateFunc: func(_, obj any) { enqueuePod(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if pod, ok := obj.(*corev1.Pod); ok {
				b.queue.Add(backstopItem{kind: itemRemovePod, key: string(pod.UID)})
			}
		},
	}); err != nil {
		return fmt.Errorf("backstop: watch pods: %w", err)
	}
	enqueuePolicy := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			b.a.setArgvPolicy(enforcer.PolicyKey(key), argvSpec(obj), true)
			b.queue.Add(backstopItem{kind: itemPolicy, key: key})
		}
	}
	if _, err := b.policies.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueuePolicy,
		UpdateFunc: func(_, obj any) { enqueuePolicy(obj) },
		DeleteFunc: func(obj any) {
			if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
				b.a.setArgvPolicy(enforcer.PolicyKey(key), nil, false)
			}
		},
	}); err != nil {
		return fmt.Errorf("backstop: watch workload policies: %w", err)
	}
	return nil
}

func (b *backstop) processNext(ctx context.Context) bool {
	item, shutdown := b.queue.Get()
	if shutdown {
		return false
	}
	defer b.queue.Done(item)
	err := b.reconcile(ctx, item)
	if err == nil {
		b.queue.Forget(item)
		b.reconciled(item)
		return true
	}
	if ctx.Err() != nil {
		return false
	}
	b.log.Error("backstop reconcile failed; will retry", zap.String("key", item.key), zap.Int("retries", b.queue.NumRequeues(item)), zap.Error(err))
	b.queue.AddRateLimited(item)
	return true
}

func (b *backstop) reconcile(ctx context.Context, item backstopItem) error {
	switch item.kind {
	case itemRemovePod:
		delete(b.labelReported, item.key)
		_, err := b.a.PodDeleted(ctx, item.key)
		return err
	case itemPolicy:
		ns, name, err := cache.SplitMetaNamespaceKey(item.key)
		if err != nil {
			return nil
		}
		for _, obj := range b.pods.GetStore().List() {
			pod := obj.(*corev1.Pod)
			if pod.Namespace == ns && pod.Labels[v1alpha1.PolicyLabel] == name {
				b.queue.Add(backstopItem{kind: itemPod, key: ns + "/" + pod.Name})
			}
		}
		// Pods bound to it whose label was changed since still follow it.
		for _, key := range b.a.podsUsing(enforcer.PolicyKey(item.key)) {
			b.queue.Add(backstopItem{kind: itemPod, key: key})
		}
		return nil
	}
	obj, exists, err := b.pods.GetStore().GetByKey(item.key)
	if err != nil || !exists {
		return err // a deleted pod arrives as itemRemovePod
	}
	return b.reconcilePod(ctx, obj.(*corev1.Pod))
}

// reconcilePod applies the pod's policy as the API server has it (a no-op
// when the push already loaded that generation) and learns its containers.
func (b *backstop) reconcilePod(ctx context.Context, pod *corev1.Pod) error {
	uid := string(pod.UID)
	if pod.Spec.NodeName != b.a.opts.NodeName {
		return nil // the field selector should have kept it out
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		delete(b.labelReported, uid)
		_, err := b.a.PodDeleted(ctx, uid) // every container has exited for good
		return err
	}
	name, labelled := pod.Labels[v1alpha1.PolicyLabel]
	bound, isBound := b.a.boundPolicy(uid)
	if isBound {
		if !labelled || enforcer.PolicyKey(pod.Namespace+"/"+name) != bound {
			// Removing or changing the label of a running pod must not
			// unbind or weaken it: the pod keeps its policy until deleted.
			b.labelChanged(pod, bound, name, labelled)
			_, name, _ = strings.Cut(string(bound), "/")
			labelled = true
		} else {
			delete(b.labelReported, uid) // label put back: a new change is news
		}
	}
	if !labelled {
		return nil // never bound, not opted in
	}
	// A terminating pod (deletionTimestamp set) keeps its enforcement: its
	// containers run until the kubelet stops them, preStop hooks included.
	// It is forgotten when the API server deletes it or its cgroups vanish.
	obj, exists, err := b.policies.GetStore().GetByKey(pod.Namespace + "/" + name)
	if err != nil {
		return err
	}
	if !exists {
		// Not (yet) created: nothing to enforce from here; a later policy
		// event requeues the pod.
		return nil
	}
	if u, ok := obj.(*unstructured.Unstructured); ok && u.GetDeletionTimestamp() != nil && !isBound {
		// Kept only for the pods bound to it before its deletion; the webhook
		// does not bind a new pod to it either.
		return nil
	}
	pol, err := policyFromObject(obj)
	if err != nil {
		b.log.Warn("workload policy not usable; pod keeps what it has", zap.String("namespace", pod.Namespace),
			zap.String("pod", pod.Name), zap.String("policy", pod.Namespace+"/"+name), zap.Error(err))
		return nil // retrying will not fix the object; its next update requeues
	}
	containers := podContainers(pod)
	pp := &podpolicy.PodPolicy{
		Pod: podpolicy.Pod{UID: uid, Namespace: pod.Namespace, Name: pod.Name, NodeName: pod.Spec.NodeName,
			QoSClass: podQoS(pod), Containers: containers},
		Policy:    pol,
		RequestID: "backstop",
	}
	applied, loaded, err := b.a.ApplyPodPolicy(ctx, pp)
	if err != nil {
		return fmt.Errorf("apply policy %s to pod %s/%s: %w", pol.Key(), pod.Namespace, pod.Name, err)
	}
	if applied {
		b.log.Info("pod policy applied from the API server", zap.String("namespace", pod.Namespace), zap.String("pod", pod.Name),
			zap.String("policy", pol.Key()), zap.Uint64("version", loaded))
	}
	return nil
}

// labelChanged reports, once per change, that a bound pod's label no longer
// names the policy it runs under: a log line, a Warning Event on the pod and
// execgate_agent_policy_label_changes_total.
func (b *backstop) labelChanged(pod *corev1.Pod, bound enforcer.PolicyKey, label string, labelled bool) {
	uid := string(pod.UID)
	seen := "\x00removed" // no label value can contain NUL
	if labelled {
		seen = label
	}
	if prev, ok := b.labelReported[uid]; ok && prev == seen {
		return
	}
	b.labelReported[uid] = seen
	change := "removed"
	note := fmt.Sprintf("label %s was removed from this running pod: it stays bound to WorkloadPolicy %s until it is deleted (recreate the pod to change its policy)", v1alpha1.PolicyLabel, bound)
	if labelled {
		change = "changed"
		note = fmt.Sprintf("label %s was changed to %q on this running pod: it stays bound to WorkloadPolicy %s until it is deleted (recreate the pod to change its policy)", v1alpha1.PolicyLabel, label, bound)
	}
	b.a.metrics.labelChanged(pod.Namespace, string(bound), change)
	b.log.Warn("policy label of a bound pod changed; keeping its binding", zap.String("namespace", pod.Namespace), zap.String("pod", pod.Name),
		zap.String("policy", string(bound)), zap.String("change", change), zap.String("label", label))
	if b.recorder != nil {
		b.recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonPolicyLabelChanged, "KeepBinding", "%s", note)
	}
}

// argvSpec is the spec.argv of a WorkloadPolicy from the watch. An object that does not
// decode reports no command line (Capture None): its masks are unknown.
func argvSpec(obj any) *v1alpha1.ArgvCapture {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return &v1alpha1.ArgvCapture{Capture: v1alpha1.ArgvCaptureNone}
	}
	var wp v1alpha1.WorkloadPolicy
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &wp); err != nil {
		return &v1alpha1.ArgvCapture{Capture: v1alpha1.ArgvCaptureNone}
	}
	return wp.Spec.Argv
}

// policyFromObject converts and validates a WorkloadPolicy from the watch.
func policyFromObject(obj any) (podpolicy.Policy, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return podpolicy.Policy{}, fmt.Errorf("unexpected object %T", obj)
	}
	var wp v1alpha1.WorkloadPolicy
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &wp); err != nil {
		return podpolicy.Policy{}, fmt.Errorf("decode workload policy: %w", err)
	}
	if err := wp.Validate(); err != nil {
		return podpolicy.Policy{}, err
	}
	mode, err := enforcer.ParseMode(string(wp.Spec.Mode))
	if err != nil {
		return podpolicy.Policy{}, err
	}
	if wp.Generation <= 0 {
		return podpolicy.Policy{}, apierrors.NewBadRequest("workload policy has no generation")
	}
	p := podpolicy.Policy{UID: string(wp.UID), Namespace: wp.Namespace, Name: wp.Name, Version: uint64(wp.Generation),
		Mode: podpolicy.Mode(mode), RulesByContainer: map[string][]string{}}
	for name, rules := range wp.Spec.RulesByContainer {
		p.RulesByContainer[name] = rules.Executables
	}
	return p, nil
}

func podContainers(pod *corev1.Pod) []podpolicy.Container {
	var out []podpolicy.Container
	for _, list := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses, pod.Status.EphemeralContainerStatuses} {
		for _, s := range list {
			out = append(out, podpolicy.Container{Name: s.Name, ContainerID: s.ContainerID})
		}
	}
	return out
}

// podQoS is status.qosClass, which the API server sets at creation; the
// fallback follows the kubelet's rule closely enough for cgroup naming.
func podQoS(pod *corev1.Pod) podpolicy.QoSClass {
	if pod.Status.QOSClass != "" {
		return podpolicy.QoSClass(pod.Status.QOSClass)
	}
	guaranteed, any := true, false
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, hasReq := c.Resources.Requests[r]
			lim, hasLim := c.Resources.Limits[r]
			any = any || hasReq || hasLim
			if !hasLim || (hasReq && req.Cmp(lim) != 0) {
				guaranteed = false
			}
		}
	}
	switch {
	case !any:
		return podpolicy.QoSBestEffort
	case guaranteed:
		return podpolicy.QoSGuaranteed
	}
	return podpolicy.QoSBurstable
}
