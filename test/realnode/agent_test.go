//go:build realnode

package realnode

// The agent on the real node. What it found first (issue 15): under Protect,
// runc's own re-exec ("runc init", through a detached mount of the runc binary)
// runs inside the pod's cgroup tree, the pod's rules denied it, and no sandbox
// ever started ("waiting for init preliminary setup: read init-p: connection
// reset by peer"). The kernel program now exempts the runtime's re-exec of
// itself (docs/threat-model.md), and the sandbox's /pause is in the pod-level
// rules.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/test/e2e/cluster"
)

// agentConfig: the agent's serving certificate names the node (what the
// controller's dialer checks), its clients must chain to the cluster CA, and
// its backstop watch reads the API server through the link. The CRDs are
// applied first. For now the agent authenticates as cluster-admin, not with
// the chart's RBAC.
func agentConfig(t *testing.T, c *cluster.Cluster, link *Link) *AgentConfig {
	t.Helper()
	applyCRDs(t, c)
	serving, err := c.CA.IssueServingCert(nodeName)
	if err != nil {
		t.Fatal(err)
	}
	kcData := kubeconfigVia(t, c.Kubeconfig, link)
	args := []string{}
	if !nriOn() {
		args = append(args, "--nri-socket=") // the control: container names from pod status only
	}
	return &AgentConfig{
		Args: append(args,
			"--node-name="+nodeName, "--grpc-addr="+link.NodeIP+":9443",
			"--tls-cert-file=/etc/execgate/tls.crt", "--tls-key-file=/etc/execgate/tls.key",
			"--client-ca-file=/etc/execgate/ca.crt", "--metrics-addr=127.0.0.1:9090", "--health-addr=127.0.0.1:9091",
			"--cgroup-driver=cgroupfs", "--attach-mode=auto", "--kubeconfig=/etc/execgate/kubeconfig",
			"--gc-interval=5s",
		),
		Files: map[string][]byte{
			"/etc/execgate/tls.crt":    serving.CertPEM,
			"/etc/execgate/tls.key":    serving.KeyPEM,
			"/etc/execgate/ca.crt":     c.CA.CertPEM,
			"/etc/execgate/kubeconfig": kcData,
		},
	}
}

// nriOn: EXECGATE_REALNODE_NRI=off runs the agent without NRI, the control
// of TestRealNodeProtect's union-window case (b's first exec of id then runs).
func nriOn() bool { return os.Getenv("EXECGATE_REALNODE_NRI") != "off" }

func applyCRDs(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	repo, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(repo, "deploy/helm/execgate/crds/*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("CRDs: %v %v", files, err)
	}
	dyn, err := dynamic.NewForConfig(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(data, &obj); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if _, err := dyn.Resource(crds).Create(context.Background(), &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create CRD %s: %v", f, err)
		}
	}
	waitFor(t, context.Background(), "CRDs served", func() (bool, error) {
		_, err := c.Client.Discovery().ServerResourcesForGroupVersion(v1alpha1.GroupVersion.String())
		return err == nil, nil
	})
}

// TestRealNodeProtect: the agent on the real node (lsm, the automatic choice on
// Debian's 6.12) enforces Protect pods run by the real kubelet, containerd and
// runc, whose own re-exec in the pod's cgroup (runc init) is exempt:
//   - kubectl exec: the pod's own command runs; an exec of a binary the policy
//     does not list, through the API server, the kubelet's streaming server
//     and runc exec, fails with EPERM on the caller's stream;
//   - own rules from the first exec: in a two-container pod where a may run
//     /bin/id and b may not, b's entrypoint runs id at once and is denied, a's
//     runs it. Without NRI (--nri-socket=) b's id runs, under the pod's union
//     of rules, until the kubelet reports b: the window NRI closes.
func TestRealNodeProtect(t *testing.T) {
	c, node := startNode(t, agentConfig)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	const ns = "realnode"
	if err := c.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	sc := runtime.NewScheme()
	if err := scheme.AddToScheme(sc); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(sc); err != nil {
		t.Fatal(err)
	}
	ctrllog.SetLogger(logr.Discard()) // controller-runtime's client logs nothing here
	cl, err := client.New(c.RESTConfig, client.Options{Scheme: sc})
	if err != nil {
		t.Fatal(err)
	}
	protect := func(name string, rules v1alpha1.RulesByContainer) *v1alpha1.WorkloadPolicy {
		p := &v1alpha1.WorkloadPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec:       v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.ModeProtect, RulesByContainer: rules},
		}
		if err := cl.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		return p
	}

	t.Run("kubectl exec of a binary the policy does not list", func(t *testing.T) {
		policy := protect("sleeper", v1alpha1.RulesByContainer{"main": {Executables: []string{"/bin/busybox"}}})
		pod := sleeperPod(ns, map[string]string{v1alpha1.PolicyLabel: policy.Name})
		start := time.Now()
		runPod(t, ctx, c, pod)
		t.Logf("Protect pod Running %v after create", time.Since(start).Round(time.Millisecond))
		if out, stderr, err := execIn(ctx, c, ns, pod.Name, "main", "/bin/echo", "allowed"); err != nil || strings.TrimSpace(out) != "allowed" {
			t.Fatalf("allowed exec (echo, a link to busybox): %q, stderr %q, err %v", out, stderr, err)
		}
		out, stderr, err := execIn(ctx, c, ns, pod.Name, "main", "/bin/id", "-u")
		t.Logf("denied exec: stdout %q, stderr %q, err %v", out, stderr, err)
		if err == nil || strings.TrimSpace(out) == "0" {
			t.Fatalf("/bin/id ran in a Protect pod that does not allow it: %q", out)
		}
		if msg := stderr + " " + err.Error(); !strings.Contains(msg, "operation not permitted") {
			t.Fatalf("denied exec: the caller reads %q, want operation not permitted", msg)
		}
	})

	t.Run("each container's own rules from its first exec", func(t *testing.T) {
		policy := protect("two", v1alpha1.RulesByContainer{
			"a": {Executables: []string{"/bin/busybox", "/bin/id"}},
			"b": {Executables: []string{"/bin/busybox"}},
		})
		no := false
		script := []string{"/bin/sh", "-c", "/bin/id -u; echo entrypoint-done; exec /bin/sleep 3600"}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "two", Namespace: ns, Labels: map[string]string{v1alpha1.PolicyLabel: policy.Name}},
			Spec: corev1.PodSpec{
				AutomountServiceAccountToken: &no,
				Containers: []corev1.Container{
					{Name: "a", Image: TestImage, ImagePullPolicy: corev1.PullNever, Command: script},
					{Name: "b", Image: TestImage, ImagePullPolicy: corev1.PullNever, Command: script},
				},
			},
		}
		runPod(t, ctx, c, pod)
		a, b := entrypointLog(t, ctx, c, pod, "a"), entrypointLog(t, ctx, c, pod, "b")
		t.Logf("a's log %q; b's log %q", a, b)
		ranID := func(log string) bool { return strings.HasPrefix(log, "0\n") || strings.Contains(log, "\n0\n") }
		if !ranID(a) {
			t.Fatalf("a may run /bin/id: its log %q", a)
		}
		if !nriOn() {
			if !ranID(b) {
				t.Fatalf("without NRI b's first exec runs under the pod's union (the window); b's log %q", b)
			}
			t.Log("control without NRI: b ran /bin/id under its pod's union of rules, the window NRI closes")
			return
		}
		if ranID(b) {
			t.Fatalf("b ran /bin/id, which only a may run: the union window (log %q)", b)
		}
		if !strings.Contains(strings.ToLower(b), "not permitted") {
			t.Fatalf("b's denied exec: log %q, want operation not permitted", b)
		}
		for _, d := range bindTimes(t, node, "two") {
			t.Logf("NRI: %s", d)
		}
	})

	t.Run("an entrypoint the policy does not list", func(t *testing.T) {
		policy := protect("denied-entrypoint", v1alpha1.RulesByContainer{"main": {Executables: []string{"/bin/busybox"}}})
		no := false
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "denied-entrypoint", Namespace: ns, Labels: map[string]string{v1alpha1.PolicyLabel: policy.Name}},
			Spec: corev1.PodSpec{
				AutomountServiceAccountToken: &no,
				// runc's error is the container's output; the kubelet copies it into the
				// status when the pod asks (README: what an operator reads).
				Containers: []corev1.Container{{Name: "main", Image: TestImage, ImagePullPolicy: corev1.PullNever,
					Command: []string{"/bin/id", "-u"}, TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError}},
			},
		}
		if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var why string
		waitFor(t, ctx, "the container's start refused, in its status", func() (bool, error) {
			p, err := c.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			for _, st := range p.Status.ContainerStatuses {
				for _, s := range []*corev1.ContainerStateTerminated{st.State.Terminated, st.LastTerminationState.Terminated} {
					if s != nil && s.Message != "" {
						why = fmt.Sprintf("%s (exit %d): %s", s.Reason, s.ExitCode, strings.TrimSpace(s.Message))
					}
				}
			}
			return why != "", nil
		})
		t.Logf("the operator reads: %s", why)
		if !strings.Contains(why, "operation not permitted") || !strings.Contains(why, "/bin/id") {
			t.Fatalf("the pod's status says %q, want the denied entrypoint and operation not permitted", why)
		}
	})

	t.Run("init and ephemeral containers get their own rules", func(t *testing.T) {
		testInitAndEphemeral(t, ctx, c, protect)
	})

	t.Run("pods deleted by the real kubelet leave nothing bound", func(t *testing.T) {
		testDeletionCycles(t, ctx, c, protect)
	})

	// Last: it restarts the node's daemons.
	t.Run("restarts of agent, kubelet, containerd and a container, execs throughout", func(t *testing.T) {
		testRestarts(t, ctx, c, protect)
	})
}

// testInitAndEphemeral: an init container runs under its own rules (here it may
// run /bin/id, the main container may not), and an ephemeral debug container
// (kubectl debug) is a container the policy does not name: the wildcard's rules,
// none here, so under Protect not even its shell runs.
func testInitAndEphemeral(t *testing.T, ctx context.Context, c *cluster.Cluster, protect func(string, v1alpha1.RulesByContainer) *v1alpha1.WorkloadPolicy) {
	const ns = "realnode"
	policy := protect("init-eph", v1alpha1.RulesByContainer{
		"init": {Executables: []string{"/bin/busybox", "/bin/id"}},
		"main": {Executables: []string{"/bin/busybox"}},
	})
	no := false
	script := []string{"/bin/sh", "-c", "/bin/id -u; echo entrypoint-done; exec /bin/sleep 3600"}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "init-eph", Namespace: ns, Labels: map[string]string{v1alpha1.PolicyLabel: policy.Name}},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken: &no,
			InitContainers: []corev1.Container{{Name: "init", Image: TestImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/bin/sh", "-c", "/bin/id -u; echo entrypoint-done"}}},
			Containers: []corev1.Container{{Name: "main", Image: TestImage, ImagePullPolicy: corev1.PullNever, Command: script}},
		},
	}
	runPod(t, ctx, c, pod)
	initLog, mainLog := entrypointLog(t, ctx, c, pod, "init"), entrypointLog(t, ctx, c, pod, "main")
	t.Logf("init's log %q; main's log %q", initLog, mainLog)
	if !strings.HasPrefix(initLog, "0\n") {
		t.Fatalf("the init container may run /bin/id: its log %q", initLog)
	}
	if strings.HasPrefix(mainLog, "0\n") || !strings.Contains(strings.ToLower(mainLog), "not permitted") {
		t.Fatalf("main may not run /bin/id: its log %q", mainLog)
	}

	p, err := c.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, corev1.EphemeralContainer{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debugger", Image: TestImage, ImagePullPolicy: corev1.PullNever,
			Command: []string{"/bin/sh", "-c", "/bin/id -u"}, TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError},
		TargetContainerName: "main",
	})
	if _, err := c.Client.CoreV1().Pods(ns).UpdateEphemeralContainers(ctx, pod.Name, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var why string
	waitFor(t, ctx, "the debug container's end", func() (bool, error) {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, st := range p.Status.EphemeralContainerStatuses {
			if term := st.State.Terminated; st.Name == "debugger" && term != nil {
				why = fmt.Sprintf("%s (exit %d): %s", term.Reason, term.ExitCode, strings.TrimSpace(term.Message))
				return true, nil
			}
		}
		return false, nil
	})
	t.Logf("the debug container: %s", why)
	if !strings.Contains(why, "operation not permitted") || strings.HasPrefix(strings.TrimSpace(why[strings.Index(why, ":")+1:]), "0") {
		t.Fatalf("the ephemeral container ran under Protect: %s", why)
	}
}

// nodeShell is the node's shell (as kubectl debug node gives one): a pod in the
// host's PID and network namespaces, privileged, not enforced. It is made once.
func nodeShell(t *testing.T, ctx context.Context, c *cluster.Cluster) func(script string) (string, error) {
	t.Helper()
	const ns = "realnode"
	if _, err := c.Client.CoreV1().Pods(ns).Get(ctx, "ctl", metav1.GetOptions{}); err != nil {
		no, yes := false, true
		runPod(t, ctx, c, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "ctl", Namespace: ns},
			Spec: corev1.PodSpec{
				AutomountServiceAccountToken: &no, HostPID: true, HostNetwork: true,
				Containers: []corev1.Container{{Name: "ctl", Image: TestImage, ImagePullPolicy: corev1.PullNever,
					Command: []string{"/bin/sleep", "36000"}, SecurityContext: &corev1.SecurityContext{Privileged: &yes}}},
			},
		})
	}
	return func(script string) (string, error) {
		out, stderr, err := execIn(ctx, c, ns, "ctl", "ctl", "/bin/sh", "-c", script)
		if err != nil {
			return out, fmt.Errorf("%w: %s", err, stderr)
		}
		return out, nil
	}
}

// agentMapEntries reads execgate_agent_map_entries from the agent's metrics.
func agentMapEntries(t *testing.T, host func(string) (string, error)) map[string]int {
	t.Helper()
	out, err := host("/bin/busybox wget -q -O- http://127.0.0.1:9090/metrics")
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		var m string
		var n float64
		if _, err := fmt.Sscanf(line, "execgate_agent_map_entries{map=%q} %g", &m, &n); err == nil {
			entries[m] = int(n)
		}
	}
	if len(entries) == 0 {
		t.Fatalf("no execgate_agent_map_entries in the agent's metrics")
	}
	return entries
}

// testDeletionCycles: rounds of Protect pods started and deleted by the real
// kubelet; afterwards the agent's bindings, mount namespace pins and rules are
// what they were before, and no pod cgroup of theirs is left.
func testDeletionCycles(t *testing.T, ctx context.Context, c *cluster.Cluster, protect func(string, v1alpha1.RulesByContainer) *v1alpha1.WorkloadPolicy) {
	const ns, rounds, perRound = "realnode", 3, 6
	host := nodeShell(t, ctx, c)
	policy := protect("cycle", v1alpha1.RulesByContainer{"main": {Executables: []string{"/bin/busybox"}}})
	before := agentMapEntries(t, host)
	no := false
	start := time.Now()
	var uids []string
	for r := range rounds {
		var names []string
		for i := range perRound {
			name := fmt.Sprintf("cycle-%d-%d", r, i)
			names = append(names, name)
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{v1alpha1.PolicyLabel: policy.Name}},
				Spec: corev1.PodSpec{AutomountServiceAccountToken: &no, Containers: []corev1.Container{{Name: "main", Image: TestImage,
					ImagePullPolicy: corev1.PullNever, Command: []string{"/bin/sh", "-c", "/bin/id -u; exec /bin/sleep 3600"}}}},
			}
			created, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			uids = append(uids, string(created.UID))
		}
		for _, name := range names {
			waitFor(t, ctx, name+" Running", func() (bool, error) {
				p, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
				return err == nil && p.Status.Phase == corev1.PodRunning, err
			})
		}
		for _, name := range names {
			if err := c.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
				t.Fatal(err)
			}
		}
		for _, name := range names {
			waitFor(t, ctx, name+" gone", func() (bool, error) {
				_, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
				return apierrors.IsNotFound(err), nil
			})
		}
	}
	t.Logf("%d pods started and deleted in %d rounds in %v", rounds*perRound, rounds, time.Since(start).Round(time.Second))
	var after map[string]int
	gc := time.Now()
	waitFor(t, ctx, "the agent back to where it was", func() (bool, error) {
		after = agentMapEntries(t, host)
		for _, m := range []string{"bindings", "mntns_pins", "exact_rules", "prefix_rules", "slot_info"} {
			if after[m] > before[m] {
				return false, fmt.Errorf("map %s: %d entries, %d before", m, after[m], before[m])
			}
		}
		return true, nil
	})
	t.Logf("map entries before %v, after %v (%v after the last deletion)", before, after, time.Since(gc).Round(time.Second))
	var left []string
	for _, uid := range uids {
		out, err := host("/bin/busybox find /sys/fs/cgroup/kubepods -maxdepth 2 -type d -name 'pod" + uid + "'")
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out) != "" {
			left = append(left, strings.TrimSpace(out))
		}
	}
	if len(left) > 0 {
		t.Fatalf("pod cgroups left after deletion: %v", left)
	}
}

// testRestarts: containers a (may run /bin/id) and b (may not) exec id in a loop
// and log each outcome to a shared emptyDir, while the agent, the kubelet and
// containerd are killed in turn (the node's restart loops bring them back) and b
// is restarted twice (a new container and cgroup, bound by NRI before its first
// exec; the second time after containerd's restart, so NRI reconnected). Every
// outcome must be its container's own: a ran, b denied; none is lost to a gap,
// and each phase logged new outcomes.
func testRestarts(t *testing.T, ctx context.Context, c *cluster.Cluster, protect func(string, v1alpha1.RulesByContainer) *v1alpha1.WorkloadPolicy) {
	const ns = "realnode"
	policy := protect("restarts", v1alpha1.RulesByContainer{
		"a": {Executables: []string{"/bin/busybox", "/bin/id"}},
		"b": {Executables: []string{"/bin/busybox"}},
	})
	no := false
	loop := func(name string) []string {
		return []string{"/bin/sh", "-c", `while true; do
	if /bin/id -u >/dev/null 2>&1; then r=ran; else r=denied; fi
	echo $r >> /data/` + name + `
	/bin/sleep 0.1
done # worker-` + name}
	}
	data := corev1.VolumeMount{Name: "data", MountPath: "/data"}
	worker := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "worker", Namespace: ns, Labels: map[string]string{v1alpha1.PolicyLabel: policy.Name}},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken: &no,
			Volumes:                      []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
			Containers: []corev1.Container{
				{Name: "a", Image: TestImage, ImagePullPolicy: corev1.PullNever, Command: loop("a"), VolumeMounts: []corev1.VolumeMount{data}},
				{Name: "b", Image: TestImage, ImagePullPolicy: corev1.PullNever, Command: loop("b"), VolumeMounts: []corev1.VolumeMount{data}},
			},
		},
	}
	host := nodeShell(t, ctx, c)
	runPod(t, ctx, c, worker)
	outcomes := func() (a, b []string, err error) {
		out, _, err := execIn(ctx, c, ns, "worker", "a", "/bin/cat", "/data/a")
		if err != nil {
			return nil, nil, err
		}
		outB, _, err := execIn(ctx, c, ns, "worker", "a", "/bin/cat", "/data/b")
		if err != nil {
			return nil, nil, err
		}
		return strings.Fields(out), strings.Fields(outB), nil
	}
	// until polls ok every 250 ms and returns how long it took.
	until := func(what string, ok func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !ok() {
			if ctx.Err() != nil {
				t.Fatalf("waiting for %s: %v", what, ctx.Err())
			}
			time.Sleep(250 * time.Millisecond)
		}
		return time.Since(start)
	}
	grown := func(phase string, before int) int {
		t.Helper()
		var n int
		until(phase+": new outcomes logged", func() bool {
			a, b, err := outcomes()
			n = min(len(a), len(b))
			return err == nil && n > before+5
		})
		return n
	}
	n := grown("start", 0)
	restartCount := func() int32 {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, "worker", metav1.GetOptions{})
		if err != nil {
			return -1
		}
		for _, st := range p.Status.ContainerStatuses {
			if st.Name == "b" && st.State.Running != nil {
				return st.RestartCount
			}
		}
		return -1
	}
	restartB := func(phase string) {
		t.Helper()
		was := restartCount()
		// busybox-static has no pkill: find b's loop by its command line (the pattern
		// does not match this script's own), SIGKILL, the one signal a pid
		// namespace's init gets from outside it.
		if _, err := host(`for p in /proc/[0-9]*; do /bin/busybox grep -q 'worker-[b]' $p/cmdline 2>/dev/null && /bin/busybox kill -9 ${p#/proc/}; done; true`); err != nil {
			t.Fatalf("%s: kill b: %v", phase, err)
		}
		d := until(phase+": b running again", func() bool { return restartCount() > was })
		t.Logf("%s: b restarted (a new container and cgroup) and running %v after the kill", phase, d.Round(10*time.Millisecond))
	}
	daemon := func(name, pattern, ready string) {
		t.Helper()
		start := time.Now()
		old, err := host("/bin/busybox pidof " + pattern)
		if old = strings.TrimSpace(old); err != nil || old == "" {
			t.Fatalf("%s: no process %s on the node (%v)", name, pattern, err)
		}
		_, _ = host("/bin/busybox killall " + pattern) // the stream may die with the daemon
		until(name+" back", func() bool {
			pid, err := host("/bin/busybox pidof " + pattern)
			if pid = strings.TrimSpace(pid); err != nil || pid == "" || pid == old {
				return false
			}
			out, err := host(ready)
			return err == nil && strings.TrimSpace(out) != ""
		})
		t.Logf("%s killed: back (%s) %v later", name, ready, time.Since(start).Round(10*time.Millisecond))
		n = grown(name, n)
	}
	daemon("agent", "execgate-agent", "/bin/busybox wget -q -O- http://127.0.0.1:9091/readyz")
	restartB("after the agent's restart")
	daemon("kubelet", "kubelet", "/bin/busybox wget -q -O- http://127.0.0.1:10248/healthz")
	daemon("containerd", "containerd", "/bin/busybox wget -q -O- http://127.0.0.1:9090/metrics | /bin/busybox grep '^execgate_agent_nri_connected 1'")
	restartB("after containerd's restart")
	n = grown("end", n)

	a, b, err := outcomes()
	if err != nil {
		t.Fatal(err)
	}
	wrong := 0
	for _, r := range a {
		if r != "ran" {
			wrong++
		}
	}
	for _, r := range b {
		if r != "denied" {
			wrong++
		}
	}
	t.Logf("%d outcomes of a (may run id), %d of b (may not), %d wrong", len(a), len(b), wrong)
	if wrong != 0 {
		t.Fatalf("%d wrong decisions across the restarts", wrong)
	}
}

// entrypointLog waits until container of pod logged "entrypoint-done" and
// returns its log.
func entrypointLog(t *testing.T, ctx context.Context, c *cluster.Cluster, pod *corev1.Pod, container string) string {
	t.Helper()
	var out string
	waitFor(t, ctx, container+" ran its entrypoint", func() (bool, error) {
		b, err := c.Client.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{Container: container}).DoRaw(ctx)
		out = string(b)
		return err == nil && strings.Contains(out, "entrypoint-done"), nil
	})
	return out
}

// bindTimes are the agent's "bound by name before its start" lines for pod's
// containers, from the node's console (the agent's log is tailed there).
func bindTimes(t *testing.T, node *Node, pod string) []string {
	t.Helper()
	data, err := os.ReadFile(node.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, "bound by name before its start") && strings.Contains(line, `"pod":"`+pod+`"`) {
			i := strings.Index(line, `"container"`)
			if i < 0 {
				i = 0
			}
			out = append(out, line[i:])
		}
	}
	if len(out) == 0 {
		t.Errorf("the agent logged no NRI binding for pod %s (console %s)", pod, node.LogPath)
	}
	return out
}
