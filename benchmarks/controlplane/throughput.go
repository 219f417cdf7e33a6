package controlplane

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/benchmarks/harness"
	"github.com/execgate/execgate/test/e2e/framework"
)

const (
	burstNS = "bench-burst"
	// probeNS holds the probe pods that tell whether the API server calls the
	// webhook; they stay out of the bursts' namespace and counts.
	probeNS     = "bench-probe"
	probePolicy = "probe"
	// burstLabel marks the pods of one scenario.
	burstLabel = "bench.execgate.io/burst"
)

// Item 5's scenarios, in the order they run; the first is the reference.
const (
	ScenarioNoWebhook = "no webhook"
	ScenarioHealthy   = "webhook, healthy agents"
	ScenarioAgentDead = "webhook, one agent dead (fail-open)"
)

// throughput is item 5: a burst of pods offered at once to the real
// scheduler, timed from the first create until every pod is bound, in each
// scenario. The pods carry policy labels, so that with the webhook every
// binding pushes to the pod's node.
func (b *Bench) throughput(ctx context.Context, env *framework.Env, res *harness.ControlPlaneResults) error {
	c := b.cfg
	for _, ns := range []string{burstNS, probeNS} {
		if err := createNamespace(ctx, env, ns); err != nil {
			return err
		}
	}
	for k := range c.ThroughputPolicies {
		if err := env.Client.Create(ctx, newPolicy(burstNS, deployPolicy(k), 10000+k)); err != nil {
			return fmt.Errorf("create policy %s: %w", deployPolicy(k), err)
		}
	}
	if err := env.Client.Create(ctx, newPolicy(probeNS, probePolicy, 20000)); err != nil {
		return fmt.Errorf("create policy %s: %w", probePolicy, err)
	}
	for _, ns := range []string{burstNS, probeNS} {
		if err := waitPoliciesSeen(ctx, env, ns, c.StepTimeout); err != nil {
			return err
		}
	}
	if err := raisePodCapacity(ctx, env, c.ThroughputPods+64); err != nil {
		return err
	}
	creator, err := unlimitedClient(env.Cluster.RESTConfig)
	if err != nil {
		return err
	}
	wh, err := newWebhookSwitch(ctx, env)
	if err != nil {
		return err
	}
	dead := env.Nodes[len(env.Nodes)-1] // probes use Nodes[0]

	scenarios := []struct {
		name          string
		before, after func(context.Context) error
	}{
		{name: ScenarioNoWebhook, before: wh.remove, after: wh.restore},
		{name: ScenarioHealthy},
		{name: ScenarioAgentDead,
			before: func(context.Context) error { return dead.StopAgent() },
			after:  func(ctx context.Context) error { return dead.StartAgent(ctx) }},
	}
	for run, s := range scenarios {
		if s.before != nil {
			if err := s.before(ctx); err != nil {
				return fmt.Errorf("%s: set up: %w", s.name, err)
			}
		}
		b.logf("item 5: %s: %d pods from %d creators", s.name, c.ThroughputPods, c.Creators)
		r, err := b.burst(ctx, creator, env.Cluster.Dir, run, s.name)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		b.logf("item 5: %s: %.0f pods/s (all created after %s, all bound after %s)", s.name, r.PodsPerSecond,
			r.Created.Round(time.Millisecond), r.Bound.Round(time.Millisecond))
		res.Throughput = append(res.Throughput, r)
		if err := clearNamespace(ctx, env, burstNS, c.StepTimeout); err != nil {
			return err
		}
		if s.after != nil {
			if err := s.after(ctx); err != nil {
				return fmt.Errorf("%s: tear down: %w", s.name, err)
			}
		}
		// The reconciler catches up with the deletions before the next burst.
		if err := waitPolicyPods(ctx, env, burstNS, c.StepTimeout); err != nil {
			return err
		}
	}
	return nil
}

func deployPolicy(k int) string { return fmt.Sprintf("deploy-%d", k) }

// burst creates ThroughputPods pods from Creators goroutines and returns when
// an informer has seen every one of them bound, with the CPU time each
// component of the environment in dir used meanwhile.
func (b *Bench) burst(ctx context.Context, cs kubernetes.Interface, dir string, run int, scenario string) (harness.ThroughputResult, error) {
	c := b.cfg
	runLabel := strconv.Itoa(run)
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(burstNS),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = burstLabel + "=" + runLabel }))
	inf := factory.Core().V1().Pods().Informer()
	allBound := make(chan time.Time, 1)
	var boundCount atomic.Int64
	seen := map[string]bool{} // only the informer's one handler goroutine touches it
	onPod := func(obj any) {
		p, ok := obj.(*corev1.Pod)
		if !ok || p.Spec.NodeName == "" || seen[p.Name] {
			return
		}
		seen[p.Name] = true
		if boundCount.Add(1) == int64(c.ThroughputPods) {
			allBound <- time.Now()
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onPod, UpdateFunc: func(_, obj any) { onPod(obj) },
	}); err != nil {
		return harness.ThroughputResult{}, fmt.Errorf("watch pods: %w", err)
	}
	stop := make(chan struct{})
	defer factory.Shutdown()
	defer close(stop)
	factory.Start(stop)
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return harness.ThroughputResult{}, errors.New("pod informer did not sync")
	}

	cpuBefore, err := cpuTimes(dir)
	if err != nil {
		return harness.ThroughputResult{}, err
	}
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for w := range c.Creators {
		g.Go(func() error {
			for i := w; i < c.ThroughputPods; i += c.Creators {
				pod := newPod(burstNS, fmt.Sprintf("r%d-%d", run, i), deployPolicy(i%c.ThroughputPolicies), "", "/bin/true")
				pod.Labels[burstLabel] = runLabel
				if _, err := cs.CoreV1().Pods(burstNS).Create(gctx, pod, metav1.CreateOptions{}); err != nil {
					return fmt.Errorf("create pod %s: %w", pod.Name, err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return harness.ThroughputResult{}, err
	}
	created := time.Since(start)
	select {
	case at := <-allBound:
		cpuAfter, err := cpuTimes(dir)
		if err != nil {
			return harness.ThroughputResult{}, err
		}
		bound := at.Sub(start)
		return harness.ThroughputResult{Scenario: scenario, Pods: c.ThroughputPods,
			PodsPerSecond: float64(c.ThroughputPods) / bound.Seconds(), Created: created, Bound: bound,
			CPU: cpuSince(cpuBefore, cpuAfter)}, nil
	case <-ctx.Done():
		return harness.ThroughputResult{}, ctx.Err()
	case <-time.After(c.StepTimeout):
		return harness.ThroughputResult{}, fmt.Errorf("%d of %d pods bound after %s", boundCount.Load(), c.ThroughputPods, time.Since(start).Round(time.Second))
	}
}

// unlimitedClient is an admin client without client-side rate limiting, so
// that the creators offer pods as fast as the API server takes them.
func unlimitedClient(cfg *rest.Config) (kubernetes.Interface, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = -1, 0 // a negative QPS turns the rate limiter off
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creator client: %w", err)
	}
	return cs, nil
}

// raisePodCapacity lets every node take pods pods: the simulated nodes
// register with 110, a kubelet's default.
func raisePodCapacity(ctx context.Context, env *framework.Env, pods int) error {
	q := resource.MustParse(strconv.Itoa(pods))
	nodes := env.Cluster.Client.CoreV1().Nodes()
	for _, n := range env.Nodes {
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			node, err := nodes.Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			node.Status.Capacity[corev1.ResourcePods] = q
			node.Status.Allocatable[corev1.ResourcePods] = q
			_, err = nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			return fmt.Errorf("raise the pod capacity of %s to %d: %w", n.Name, pods, err)
		}
	}
	return nil
}

// waitPolicyPods waits until the reconciler has written every policy of ns
// with no pods: it is done with the deleted pods.
func waitPolicyPods(ctx context.Context, env *framework.Env, ns string, timeout time.Duration) error {
	return poll(ctx, 200*time.Millisecond, timeout, "the reconciler catches up with deleted pods", func(ctx context.Context) (bool, string, error) {
		var l v1alpha1.WorkloadPolicyList
		if err := env.Client.List(ctx, &l, client.InNamespace(ns)); err != nil {
			return false, err.Error(), nil
		}
		for _, p := range l.Items {
			if p.Status.PodsTotal != 0 {
				return false, fmt.Sprintf("policy %s still counts %d pods", p.Name, p.Status.PodsTotal), nil
			}
		}
		return true, "", nil
	})
}

// webhookSwitch takes the chart's ValidatingWebhookConfiguration out of the
// API server and puts it back, and proves each: a probe pod bound to the
// first node must reach its agent by the webhook's push, or must not.
type webhookSwitch struct {
	env   *framework.Env
	saved *admissionv1.ValidatingWebhookConfiguration
	probe int // probe pods so far, for their names
}

func newWebhookSwitch(ctx context.Context, env *framework.Env) (*webhookSwitch, error) {
	name := ""
	for _, o := range env.Manifests {
		if o.GetKind() == "ValidatingWebhookConfiguration" {
			name = o.GetName()
		}
	}
	if name == "" {
		return nil, errors.New("the chart renders no ValidatingWebhookConfiguration")
	}
	vwc, err := env.Cluster.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read webhook configuration %s: %w", name, err)
	}
	return &webhookSwitch{env: env, saved: vwc}, nil
}

func (w *webhookSwitch) remove(ctx context.Context) error {
	vwcs := w.env.Cluster.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	if err := vwcs.Delete(ctx, w.saved.Name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete webhook configuration %s: %w", w.saved.Name, err)
	}
	return w.await(ctx, false)
}

func (w *webhookSwitch) restore(ctx context.Context) error {
	vwc := w.saved.DeepCopy()
	vwc.ResourceVersion, vwc.UID = "", ""
	vwcs := w.env.Cluster.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	if _, err := vwcs.Create(ctx, vwc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("re-create webhook configuration %s: %w", vwc.Name, err)
	}
	return w.await(ctx, true)
}

// await probes until the API server calls the webhook (want) or does not.
func (w *webhookSwitch) await(ctx context.Context, want bool) error {
	return poll(ctx, 100*time.Millisecond, time.Minute, fmt.Sprintf("the API server calls the webhook: %v", want), func(ctx context.Context) (bool, string, error) {
		pushed, err := w.probeOnce(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		return pushed == want, fmt.Sprintf("probe pod pushed by the webhook: %v", pushed), nil
	})
}

// probeOnce binds a labelled pod to the first node and reports whether the
// webhook's push brought it to the agent.
func (w *webhookSwitch) probeOnce(ctx context.Context) (bool, error) {
	w.probe++
	name := fmt.Sprintf("probe-%d", w.probe)
	n := w.env.Nodes[0]
	if err := w.env.Client.Create(ctx, newPod(probeNS, name, probePolicy, manualScheduler, "/bin/true")); err != nil {
		return false, fmt.Errorf("create probe pod: %w", err)
	}
	zero := int64(0)
	defer func() {
		_ = w.env.Cluster.Client.CoreV1().Pods(probeNS).Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	}()
	if err := bind(ctx, w.env, probeNS, name, n.Name); err != nil {
		return false, err
	}
	pushed := false
	err := poll(ctx, 20*time.Millisecond, 30*time.Second, "probe pod "+name+" on its agent", func(ctx context.Context) (bool, string, error) {
		pods, err := agentPods(ctx, n, probeNS)
		if err != nil {
			return false, err.Error(), nil
		}
		p, ok := pods[name]
		if ok {
			pushed = pushedByWebhook(p)
		}
		return ok, "not on the agent yet", nil
	})
	return pushed, err
}
