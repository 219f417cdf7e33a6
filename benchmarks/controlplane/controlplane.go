package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/benchmarks/execbench"
	"github.com/execgate/execgate/benchmarks/harness"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/test/e2e/cluster"
	"github.com/execgate/execgate/test/e2e/framework"
)

// Config sizes one run of items 4-6.
type Config struct {
	// Nodes are the simulated nodes of items 4 and 5, each with a real agent;
	// at least 2, since item 5 kills one agent.
	Nodes int
	// BindPods: pods of item 4, each with its own policy, bound round robin
	// to the nodes one at a time, BindGap apart so that each binding is timed
	// on its own rather than behind the previous one's follow-up work (the
	// reconciler's re-push, the agent's watch).
	BindPods int
	BindGap  time.Duration
	// ThroughputPods are offered at once by Creators parallel creators to the
	// scheduler in each scenario of item 5, labelled round robin with
	// ThroughputPolicies policies (deployments of ThroughputPods /
	// ThroughputPolicies replicas).
	ThroughputPods     int
	ThroughputPolicies int
	Creators           int
	// SchedulerQPS is kube-scheduler's client rate limit (--kube-api-qps,
	// burst twice it) in items 4 and 5. Its default of 50 would cap every
	// scenario at the same rate and hide what the webhook costs.
	SchedulerQPS int
	// Item 6: UpdatePodsPerNode pods of one policy on each of UpdateNodes
	// nodes (kubelet simulators on, the pods run), Updates allowlist changes,
	// each agent's status polled every UpdatePoll.
	UpdateNodes       int
	UpdatePodsPerNode int
	Updates           int
	UpdatePoll        time.Duration
	// PushTimeout is the controller's --push-timeout in every item.
	PushTimeout time.Duration
	// StepTimeout bounds every wait (pods bound, agents caught up).
	StepTimeout time.Duration

	// Progress receives one line per step (nil: discarded).
	Progress io.Writer `json:"-"`
}

// DefaultConfig is the full run of `make bench`: a few minutes on the 2-core
// machine, on top of the node benchmarks.
func DefaultConfig() Config {
	return Config{
		Nodes: 3, BindPods: 200, BindGap: 10 * time.Millisecond,
		ThroughputPods: 2000, ThroughputPolicies: 20, Creators: 16, SchedulerQPS: 1000,
		UpdateNodes: 3, UpdatePodsPerNode: 2, Updates: 20, UpdatePoll: 5 * time.Millisecond,
		PushTimeout: 250 * time.Millisecond, // the chart's controller.pushTimeout
		StepTimeout: 3 * time.Minute,
	}
}

// QuickConfig checks that everything works; its numbers are too small a
// sample to quote.
func QuickConfig() Config {
	c := DefaultConfig()
	c.Nodes, c.BindPods = 2, 10
	c.ThroughputPods, c.ThroughputPolicies, c.Creators = 60, 3, 4
	c.UpdateNodes, c.UpdatePodsPerNode, c.Updates = 2, 1, 3
	return c
}

// Validate says what to fix in a config.
func (c Config) Validate() error {
	var errs []error
	positive := []struct {
		name string
		v    int
	}{
		{"bind pods", c.BindPods}, {"throughput pods", c.ThroughputPods}, {"throughput policies", c.ThroughputPolicies},
		{"creators", c.Creators}, {"scheduler QPS", c.SchedulerQPS}, {"update nodes", c.UpdateNodes},
		{"update pods per node", c.UpdatePodsPerNode}, {"updates", c.Updates},
	}
	for _, p := range positive {
		if p.v < 1 {
			errs = append(errs, fmt.Errorf("%s must be at least 1, not %d", p.name, p.v))
		}
	}
	if c.Nodes < 2 {
		errs = append(errs, fmt.Errorf("nodes must be at least 2 (item 5 kills one agent), not %d", c.Nodes))
	}
	if c.ThroughputPolicies > c.ThroughputPods {
		errs = append(errs, fmt.Errorf("throughput policies (%d) must not exceed throughput pods (%d)", c.ThroughputPolicies, c.ThroughputPods))
	}
	if c.BindGap < 0 || c.UpdatePoll <= 0 || c.PushTimeout <= 0 || c.StepTimeout <= 0 {
		errs = append(errs, errors.New("bind gap must not be negative; update poll, push timeout and step timeout must be positive"))
	}
	return errors.Join(errs...)
}

// Bench runs items 4-6; it implements harness.ControlPlaneBench.
type Bench struct {
	cfg Config
}

var _ harness.ControlPlaneBench = (*Bench)(nil)

// New checks cfg, and that this machine can run it (Preflight).
func New(cfg Config) (*Bench, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("control-plane benchmark config: %w", err)
	}
	if err := Preflight(); err != nil {
		return nil, err
	}
	return &Bench{cfg: cfg}, nil
}

// Preflight says what this machine lacks for Run, before anything is
// measured: root, the go toolchain (the framework builds the agent and the
// controller) and the control-plane binaries of `make tools`.
func Preflight() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	if _, err := exec.LookPath("go"); err != nil {
		missing = append(missing, "the go toolchain on PATH")
	}
	dir, err := cluster.BinDir()
	if err != nil {
		missing = append(missing, err.Error())
	} else {
		for _, b := range []string{"etcd", "kube-apiserver", "kube-scheduler", "helm"} {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				missing = append(missing, fmt.Sprintf("%s in %s (`make tools`, or set %s)", b, dir, cluster.BinDirEnv))
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the control-plane benchmarks (items 4-6) need %s; -control-plane=false skips them", strings.Join(missing, ", "))
	}
	return nil
}

// Run measures items 4 and 5 in one environment without kubelet simulators
// (thousands of bound pods start no process), then item 6 in another whose
// pods run.
func (b *Bench) Run(ctx context.Context) (harness.ControlPlaneResults, error) {
	c := b.cfg
	res := harness.ControlPlaneResults{
		Nodes: c.Nodes, PushTimeout: c.PushTimeout, BindGap: c.BindGap, SchedulerQPS: c.SchedulerQPS,
		ThroughputPolicies: c.ThroughputPolicies,
		UpdateNodes:        c.UpdateNodes, UpdatePods: c.UpdateNodes * c.UpdatePodsPerNode, UpdatePoll: c.UpdatePoll,
	}
	burstOpts := framework.Options{
		Nodes: c.Nodes, PushTimeout: c.PushTimeout, NoKubelets: true,
		// Every pod of a burst may land on one node; the agent holds it pending
		// (no cgroup ever appears), which --max-pods bounds.
		AgentArgs: []string{"--max-pods=" + strconv.Itoa(max(c.ThroughputPods, c.BindPods)+64)},
		Cluster: cluster.Options{ExtraSchedulerArgs: []string{
			"--kube-api-qps=" + strconv.Itoa(c.SchedulerQPS), "--kube-api-burst=" + strconv.Itoa(2*c.SchedulerQPS)}},
	}
	err := b.withEnv(ctx, "items 4-5", burstOpts, func(ctx context.Context, env *framework.Env) error {
		if err := b.bindLatency(ctx, env, &res); err != nil {
			return fmt.Errorf("item 4, bind-to-kernel latency: %w", err)
		}
		if err := b.throughput(ctx, env, &res); err != nil {
			return fmt.Errorf("item 5, scheduling throughput: %w", err)
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	err = b.withEnv(ctx, "item 6", framework.Options{Nodes: c.UpdateNodes, PushTimeout: c.PushTimeout},
		func(ctx context.Context, env *framework.Env) error {
			if err := b.policyUpdate(ctx, env, &res); err != nil {
				return fmt.Errorf("item 6, policy update: %w", err)
			}
			return nil
		})
	return res, err
}

// withEnv starts an environment, runs fn in it and stops it, whatever fn did.
func (b *Bench) withEnv(ctx context.Context, what string, opts framework.Options, fn func(context.Context, *framework.Env) error) (err error) {
	b.logf("%s: starting etcd, kube-apiserver, kube-scheduler, the controller and %d agents", what, opts.Nodes)
	opts.Logger = zap.NewNop()
	start := time.Now()
	env, err := framework.Start(ctx, opts)
	if err != nil {
		return fmt.Errorf("%s: start the environment: %w", what, err)
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, logTails(env))
		}
		if stopErr := env.Stop(); stopErr != nil && err == nil {
			err = fmt.Errorf("%s: stop the environment: %w", what, stopErr)
		}
	}()
	b.logf("%s: environment up in %s", what, time.Since(start).Round(100*time.Millisecond))
	return fn(ctx, env)
}

func logTails(env *framework.Env) string {
	var b strings.Builder
	fmt.Fprintf(&b, "--- controller log ---\n%s\n", env.ControllerLog(20))
	for _, n := range env.Nodes {
		fmt.Fprintf(&b, "--- agent %s log ---\n%s\n", n.Name, n.AgentLog(10))
	}
	return b.String()
}

func (b *Bench) logf(format string, args ...any) {
	if b.cfg.Progress != nil {
		fmt.Fprintf(b.cfg.Progress, "  control plane: "+format+"\n", args...)
	}
}

// manualScheduler is a scheduler name nobody serves: the benchmark binds such
// pods itself, with the pods/binding call the webhook sits in.
const manualScheduler = "execgate-bench-manual"

// benchContainer is the one container of every pod, named as in the
// synthetic policies.
const benchContainer = execbench.Container

// newPolicy is a Protect policy for benchContainer: allowed first, then
// made-up paths up to execbench.PathsPerPolicy, distinct per seed so that no
// two policies share map entries.
func newPolicy(ns, name string, seed int, allowed ...string) *v1alpha1.WorkloadPolicy {
	paths := execbench.PodPolicy(seed, 1, allowed...).Containers[benchContainer].Paths
	return &v1alpha1.WorkloadPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.ModeProtect, RulesByContainer: v1alpha1.RulesByContainer{
			benchContainer: {Executables: paths},
		}},
	}
}

// newPod is a pod of benchContainer running argv, labelled with its policy.
// An empty scheduler leaves it to kube-scheduler.
func newPod(ns, name, policy, scheduler string, argv ...string) *corev1.Pod {
	zero := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{v1alpha1.PolicyLabel: policy}},
		Spec: corev1.PodSpec{
			SchedulerName:                 scheduler,
			Containers:                    []corev1.Container{{Name: benchContainer, Image: "registry.invalid/bench:1", Command: argv}},
			TerminationGracePeriodSeconds: &zero,
		},
	}
}

// bind assigns a pod to node with the pods/binding call the scheduler makes.
func bind(ctx context.Context, env *framework.Env, ns, pod, node string) error {
	binding := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pod},
		Target: corev1.ObjectReference{Kind: "Node", Name: node}}
	if err := env.Cluster.Client.CoreV1().Pods(ns).Bind(ctx, binding, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("bind %s/%s to %s: %w", ns, pod, node, err)
	}
	return nil
}

func createNamespace(ctx context.Context, env *framework.Env, ns string) error {
	if err := env.Cluster.CreateNamespace(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// waitPoliciesSeen waits until the controller has reconciled every policy
// (its status names the generation): the webhook reads policies from the
// same cache, so a binding after this finds them.
func waitPoliciesSeen(ctx context.Context, env *framework.Env, ns string, timeout time.Duration) error {
	return poll(ctx, 50*time.Millisecond, timeout, "the controller sees every policy", func(ctx context.Context) (bool, string, error) {
		var l v1alpha1.WorkloadPolicyList
		if err := env.Client.List(ctx, &l, client.InNamespace(ns)); err != nil {
			return false, err.Error(), nil
		}
		unseen := 0
		for _, p := range l.Items {
			if p.Status.ObservedGeneration != p.Generation {
				unseen++
			}
		}
		return unseen == 0, fmt.Sprintf("%d of %d policies not reconciled yet", unseen, len(l.Items)), nil
	})
}

// agentPods is every pod of ns the node's agent holds, by name.
func agentPods(ctx context.Context, n *framework.Node, ns string) (map[string]*agentv1.PodStatus, error) {
	st, err := n.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("status of the agent on %s: %w", n.Name, err)
	}
	pods := map[string]*agentv1.PodStatus{}
	for _, p := range st.GetPods() {
		if p.GetNamespace() == ns {
			pods[p.GetName()] = p
		}
	}
	return pods, nil
}

// clearNamespace deletes every pod of ns at once (grace period 0) and waits
// until the API server and every running agent are rid of them.
func clearNamespace(ctx context.Context, env *framework.Env, ns string, timeout time.Duration) error {
	zero := int64(0)
	pods := env.Cluster.Client.CoreV1().Pods(ns)
	if err := pods.DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{}); err != nil {
		return fmt.Errorf("delete the pods of %s: %w", ns, err)
	}
	return poll(ctx, 100*time.Millisecond, timeout, "pods of "+ns+" gone from the API server and the agents", func(ctx context.Context) (bool, string, error) {
		l, err := pods.List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		if len(l.Items) > 0 {
			return false, fmt.Sprintf("%d pods left in the API server", len(l.Items)), nil
		}
		for _, n := range env.Nodes {
			if n.AgentPID() == 0 {
				continue
			}
			held, err := agentPods(ctx, n, ns)
			if err != nil {
				return false, err.Error(), nil
			}
			if len(held) > 0 {
				return false, fmt.Sprintf("the agent on %s still holds %d pods", n.Name, len(held)), nil
			}
		}
		return true, "", nil
	})
}

// poll calls cond every interval until it holds, ctx ends or timeout passes;
// the error carries cond's last reason.
func poll(ctx context.Context, interval, timeout time.Duration, what string, cond func(context.Context) (bool, string, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := "never checked"
	for {
		ok, why, err := cond(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		if ctx.Err() == nil { // a reason cut short by the deadline says nothing
			last = why
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not within %s (last: %s)", what, timeout, last)
		case <-time.After(interval):
		}
	}
}
