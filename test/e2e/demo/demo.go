// Package demo is the story `make demo` tells, on a real control plane built from
// source (test/e2e/framework): a WorkloadPolicy in Protect mode, a pod the real
// scheduler binds while the webhook pushes its allowlist to the node's agent, an
// allowed exec, a denied exec and its violation event, then the policy switched to
// Monitor and the same exec allowed and reported. Run removes everything it started
// before it returns, on Ctrl-C too.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/nodeagent/enforcer"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/test/e2e/framework"
)

const (
	namespace = "demo"
	policy    = "web"
	podName   = "web-0"
	container = "web"
)

// Run tells the story on w. It returns an error if any step does not behave as told.
func Run(ctx context.Context, w io.Writer) (err error) {
	say := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	allowed, err := resolve("sleep", "echo")
	if err != nil {
		return err
	}
	forbidden, err := resolve("id")
	if err != nil {
		return err
	}

	say("execgate demo: starting etcd, kube-apiserver, kube-scheduler, the chart, the controller and one node's agent...")
	start := time.Now()
	env, err := framework.Start(ctx, framework.Options{Nodes: 1})
	if err != nil {
		return err
	}
	defer func() {
		if serr := env.Stop(); serr != nil && err == nil {
			err = serr
		}
		say("\ncleaned up: control plane, agent and controller stopped; pod cgroups and BPF pins removed")
	}()
	n := env.Nodes[0]
	st, err := n.Status(ctx)
	if err != nil {
		return err
	}
	mode := enforcer.AttachMode(st.GetAttachMode())
	say("ready in %s: node %s, agent attached in %s mode (kernel %s): a denied exec fails with %s",
		time.Since(start).Round(100*time.Millisecond), n.Name, mode, st.GetKernelVersion(), mode.Denies())
	switch mode {
	case enforcer.AttachFanotify:
		say("    (this kernel refuses BPF trampoline programs: a fanotify permission gate asks the same BPF\n" +
			"     program before the exec and makes execve fail; see README, kernel support matrix)")
	case enforcer.AttachExecKill:
		say("    (this kernel refuses BPF trampoline programs, so execve cannot return EPERM here: the denied\n" +
			"     process is killed before its first instruction instead; see README, kernel support matrix)")
	}

	if err := env.Cluster.CreateNamespace(ctx, namespace); err != nil {
		return err
	}
	wp := &v1alpha1.WorkloadPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: policy},
		Spec: v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.ModeProtect, RulesByContainer: v1alpha1.RulesByContainer{
			container: {Executables: allowed},
		}},
	}
	if err := env.Client.Create(ctx, wp); err != nil {
		return fmt.Errorf("create policy: %w", err)
	}
	say("\n[1] WorkloadPolicy %s/%s: mode Protect, container %q may run %s", namespace, policy, container, strings.Join(allowed, ", "))

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: podName, Labels: map[string]string{v1alpha1.PolicyLabel: policy}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: container, Image: "example/web:1",
			Command: []string{allowed[0], "infinity"}}}},
	}
	if err := env.Client.Create(ctx, pod); err != nil {
		return fmt.Errorf("create pod: %w", err)
	}
	bound, err := waitRunning(ctx, env.Client, pod)
	if err != nil {
		return err
	}
	ps, err := n.WaitPodEnforced(ctx, podName, 30*time.Second)
	if err != nil {
		return err
	}
	say("[2] pod %s/%s (label %s=%s) scheduled onto %s by kube-scheduler", namespace, podName, v1alpha1.PolicyLabel, policy, bound)
	if ps.GetAppliedBy() == "backstop" {
		say("    the agent's own watch loaded its allowlist (the webhook's push did not arrive in time)")
	} else {
		say("    the pods/binding webhook pushed its allowlist to the agent before the binding was committed\n    (admission request %s)", ps.GetAppliedBy())
	}

	events, stopEvents, err := n.WatchEvents(ctx, &agentv1.EventFilter{Namespace: namespace, Pod: podName})
	if err != nil {
		return err
	}
	defer stopEvents()

	out, err := n.Kubelet.Exec(ctx, namespace, podName, container, allowed[1], "hello from an allowed binary")
	if err != nil {
		return fmt.Errorf("allowed exec failed: %w: %s", err, out)
	}
	say("\n[3] kubectl exec %s -- %s 'hello from an allowed binary'\n    %s", podName, allowed[1], strings.TrimSpace(out))

	say("\n[4] kubectl exec %s -- %s", podName, forbidden[0])
	out, err = n.Kubelet.Exec(ctx, namespace, podName, container, forbidden[0])
	if !framework.IsDenial(err) {
		return fmt.Errorf("mode Protect let %s run (err %v, output %q)", forbidden[0], err, out)
	}
	say("    denied: %v", err)
	ev, err := next(ctx, events, agentv1.Action_ACTION_DENIED)
	if err != nil {
		return err
	}
	say("    violation event: %s", describe(ev))

	wp, err = env.UpdatePolicy(ctx, client.ObjectKeyFromObject(wp), func(wp *v1alpha1.WorkloadPolicy) {
		wp.Spec.Mode = v1alpha1.ModeMonitor
	})
	if err != nil {
		return fmt.Errorf("switch policy to Monitor: %w", err)
	}
	took, err := waitVersion(ctx, n, uint64(wp.Generation))
	if err != nil {
		return err
	}
	say("\n[5] policy switched to Monitor (generation %d): in force on %s %s later", wp.Generation, n.Name, took.Round(time.Millisecond))

	say("\n[6] kubectl exec %s -- %s", podName, forbidden[0])
	out, err = n.Kubelet.Exec(ctx, namespace, podName, container, forbidden[0])
	if err != nil {
		return fmt.Errorf("mode Monitor must allow %s: %w", forbidden[0], err)
	}
	say("    %s", strings.TrimSpace(out))
	ev, err = next(ctx, events, agentv1.Action_ACTION_REPORTED)
	if err != nil {
		return err
	}
	say("    allowed and reported: %s", describe(ev))
	return ctx.Err()
}

func resolve(names ...string) ([]string, error) {
	var out []string
	for _, name := range names {
		p, err := exec.LookPath(name)
		if err != nil {
			return nil, fmt.Errorf("the demo runs %s: %w", name, err)
		}
		if p, err = filepath.EvalSymlinks(p); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func poll(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("%s: %w (last error: %v)", what, ctx.Err(), err)
			}
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func waitRunning(ctx context.Context, c client.Client, pod *corev1.Pod) (node string, err error) {
	err = poll(ctx, 60*time.Second, "pod running", func() (bool, error) {
		var p corev1.Pod
		if err := c.Get(ctx, client.ObjectKeyFromObject(pod), &p); err != nil {
			return false, err
		}
		node = p.Spec.NodeName
		return p.Status.Phase == corev1.PodRunning, nil
	})
	return node, err
}

func waitVersion(ctx context.Context, n *framework.Node, version uint64) (time.Duration, error) {
	start := time.Now()
	err := poll(ctx, 30*time.Second, "new policy version on the node", func() (bool, error) {
		st, err := n.Status(ctx)
		if err != nil {
			return false, err
		}
		for _, p := range st.GetPolicies() {
			if p.GetName() == policy && p.GetVersion() == version {
				return true, nil
			}
		}
		return false, nil
	})
	return time.Since(start), err
}

func next(ctx context.Context, ch <-chan *agentv1.ExecEvent, action agentv1.Action) (*agentv1.ExecEvent, error) {
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return nil, errors.New("event stream ended")
			}
			if ev.GetAction() == action {
				return ev, nil
			}
		case <-timeout:
			return nil, fmt.Errorf("no %s event within 10s", action)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func describe(ev *agentv1.ExecEvent) string {
	return fmt.Sprintf("%s %s in %s/%s container %s (policy %s, %s), pid %d, parent %s, argv %q",
		strings.TrimPrefix(ev.GetAction().String(), "ACTION_"), ev.GetExecutable(), ev.GetNamespace(), ev.GetPod(),
		ev.GetContainer(), ev.GetPolicy(), strings.TrimPrefix(ev.GetMode().String(), "MODE_"), ev.GetPid(),
		ev.GetParentExecutable(), ev.GetArgv())
}
