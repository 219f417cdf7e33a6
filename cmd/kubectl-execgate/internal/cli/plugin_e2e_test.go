package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/internal/testchart"
	"github.com/execgate/execgate/test/e2e/cluster"
	"github.com/execgate/execgate/webhook/promote"
)

const ns = "shop"

// pluginEnv is a control plane with the chart's CRDs and the objects the commands read.
type pluginEnv struct {
	c       *cluster.Cluster
	objects client.Client
	nodes   []*corev1.Node // nodes[0] has an ExecgateNode, nodes[1] has none
}

// kubectl runs the plugin against the test cluster, in namespace shop unless args say
// otherwise.
func (e *pluginEnv) kubectl(ctx context.Context, args ...string) (stdout, stderr string, code int) {
	return runPlugin(ctx, append([]string{"--kubeconfig", e.c.Kubeconfig, "-n", ns}, args...)...)
}

func (e *pluginEnv) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	stdout, stderr, code := e.kubectl(context.Background(), args...)
	if code != ExitOK {
		t.Fatalf("kubectl execgate %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout, stderr)
	}
	return stdout
}

func (e *pluginEnv) mustFail(t *testing.T, want string, args ...string) {
	t.Helper()
	stdout, stderr, code := e.kubectl(context.Background(), args...)
	if code != ExitFailure || !strings.HasPrefix(stderr, "error: ") || !strings.Contains(stderr, want) {
		t.Fatalf("kubectl execgate %s: exit %d, want %d with %q\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, ExitFailure, want, stdout, stderr)
	}
}

func (e *pluginEnv) create(ctx context.Context, t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, obj := range objs {
		if err := e.objects.Create(ctx, obj); err != nil {
			t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
		}
	}
}

// TestE2EPlugin runs every command against a real kube-apiserver.
func TestE2EPlugin(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	testchart.InstallCRDs(ctx, t, c.RESTConfig)
	objects, err := client.New(c.RESTConfig, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	nodes, err := c.CreateNodes(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	e := &pluginEnv{c: c, objects: objects, nodes: nodes}
	e.setUp(ctx, t)

	t.Run("status", e.testStatus)
	t.Run("explain", e.testExplain)
	t.Run("events", e.testEvents)
	t.Run("events --watch", e.testEventsWatch)
	t.Run("proposals", e.testProposals)
	t.Run("promote", e.testPromote)
}

// setUp writes what the agents and the controller would have: policies, an ExecgateNode
// for nodes[0], pods in every state explain distinguishes.
func (e *pluginEnv) setUp(ctx context.Context, t *testing.T) {
	rules := v1alpha1.RulesByContainer{"app": {Executables: []string{"/usr/bin/id", "/usr/bin/true"}}, "*": {Executables: []string{"/bin/sh"}}}
	web := &v1alpha1.WorkloadPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec: v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.ModeProtect, RulesByContainer: rules}}
	api := &v1alpha1.WorkloadPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "api"},
		Spec: v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.ModeMonitor, RulesByContainer: v1alpha1.RulesByContainer{"app": {Executables: []string{"/app"}}}}}
	e.create(ctx, t, web, api)
	// Generation 2 of api, which the node has not loaded.
	api.Spec.RulesByContainer["app"] = v1alpha1.ContainerRules{Executables: []string{"/app", "/usr/bin/id"}}
	if err := e.objects.Update(ctx, api); err != nil || api.Generation != 2 {
		t.Fatalf("update api to generation 2: %v (generation %d)", err, api.Generation)
	}
	web.Status = v1alpha1.WorkloadPolicyStatus{ObservedGeneration: 1, Mode: v1alpha1.ModeProtect, PodsInForce: 1, PodsTotal: 2, NodesInForce: 1,
		Conditions: []metav1.Condition{{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonRollingOut, Message: "1 of 2 pods", LastTransitionTime: metav1.Now()}}}
	if err := e.objects.Status().Update(ctx, web); err != nil {
		t.Fatal(err)
	}

	en := &v1alpha1.ExecgateNode{ObjectMeta: metav1.ObjectMeta{Name: e.nodes[0].Name}}
	e.create(ctx, t, en)
	updated := metav1.NewTime(time.Now().Add(-90 * time.Second))
	en.Status = v1alpha1.ExecgateNodeStatus{AttachMode: v1alpha1.AttachExecKill, Kernel: "6.18.0", PodsInForce: 2, PodsPending: 1,
		PolicyCount: 2, KernelMemoryBytes: 1_258_291, MapEntries: 9, EventsDropped: 4, AgentVersion: "test", LastUpdated: &updated,
		Policies: []v1alpha1.NodePolicy{
			{Namespace: ns, Name: "api", Version: 1, Mode: v1alpha1.ModeMonitor},
			{Namespace: ns, Name: "web", Version: 1, Mode: v1alpha1.ModeProtect},
		}}
	if err := e.objects.Status().Update(ctx, en); err != nil {
		t.Fatal(err)
	}

	pod := func(name, node, policy string, mod ...func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{}},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "app"}, {Name: "proxy", Image: "proxy"}}}}
		if policy != "" {
			p.Labels[v1alpha1.PolicyLabel] = policy
		}
		for _, m := range mod {
			m(p)
		}
		return p
	}
	e.create(ctx, t,
		pod("web-1", e.nodes[0].Name, "web"),
		pod("web-2", e.nodes[1].Name, "web"),
		pod("api-1", e.nodes[0].Name, "api"),
		pod("plain", e.nodes[0].Name, ""),
		pod("ghost", e.nodes[0].Name, "missing"),
		// No node matches: the scheduler leaves it pending.
		pod("waiting", "", "web", func(p *corev1.Pod) { p.Spec.NodeSelector = map[string]string{"nowhere": "true"} }),
	)
}

func (e *pluginEnv) testStatus(t *testing.T) {
	out := e.mustRun(t, "status")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("want a header and 2 nodes:\n%s", out)
	}
	for _, want := range []string{"NODE", "ATTACH", "PODS", "POLICIES", "KERNEL-MEMORY"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("header lacks %s: %s", want, lines[0])
		}
	}
	want := []string{e.nodes[0].Name, "exec_kill", "no", "2", "1", "2", "1.2MiB", "4", "6.18.0"}
	if f := strings.Fields(lines[1]); len(f) != 11 || strings.Join(f[:9], " ") != strings.Join(want, " ") ||
		!strings.HasSuffix(f[9], "s") || f[10] != "ago" {
		t.Errorf("row of %s: %q, want %v, then about 90s ago", e.nodes[0].Name, lines[1], want)
	}
	if f := strings.Fields(lines[2]); f[0] != e.nodes[1].Name || f[1] != "<no" {
		t.Errorf("node without a report: %q", lines[2])
	}

	var list v1alpha1.ExecgateNodeList
	if err := json.Unmarshal([]byte(e.mustRun(t, "status", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if list.Kind != "ExecgateNodeList" || len(list.Items) != 1 || list.Items[0].Kind != "ExecgateNode" || list.Items[0].Status.PolicyCount != 2 {
		t.Errorf("json: %+v", list)
	}
	var one v1alpha1.ExecgateNodeList
	if err := yaml.UnmarshalStrict([]byte(e.mustRun(t, "status", e.nodes[0].Name, "-o", "yaml")), &one); err != nil || len(one.Items) != 1 || one.Items[0].ManagedFields != nil {
		t.Errorf("yaml of one node: %v %+v", err, one)
	}
	e.mustFail(t, "no ExecgateNode for "+e.nodes[1].Name, "status", e.nodes[1].Name)
}

func (e *pluginEnv) testExplain(t *testing.T) {
	tests := []struct {
		pod  string
		want InForce
		why  string
		text []string // in the table output
	}{
		{"web-1", InForceYes, "enforces generation 1 of shop/web in mode Protect",
			[]string{"Policy:     web (generation 1, mode Protect)", "Ready=False (RollingOut), 1/2 pods in force on 1 node(s)",
				"app: 2 executable(s)", `proxy: 1 executable(s), from the "*" entry`, "attach mode exec_kill: a denied process is killed"}},
		{"api-1", InForceOutdated, "enforces generation 1 of shop/api in mode Monitor; generation 2 is not loaded yet",
			[]string{"proxy: no rules, and no \"*\" entry: it may execute nothing", "Status:     not reported by the execgate controller yet"}},
		{"web-2", InForceUnknown, "has no ExecgateNode", nil},
		{"plain", InForceNo, "has no execgate.io/policy label", []string{"Policy:     none"}},
		{"ghost", InForceNo, `names WorkloadPolicy "missing", which does not exist`, []string{"missing (does not exist)"}},
		{"waiting", InForceNo, "not scheduled yet", []string{"(node not scheduled)"}},
	}
	for _, tt := range tests {
		t.Run(tt.pod, func(t *testing.T) {
			var x Explanation
			if err := json.Unmarshal([]byte(e.mustRun(t, "explain", tt.pod, "-o", "json")), &x); err != nil {
				t.Fatal(err)
			}
			if x.InForce != tt.want || !strings.Contains(x.Why, tt.why) || x.Pod != ns+"/"+tt.pod {
				t.Errorf("got %s: %s; want %s: ...%s...", x.InForce, x.Why, tt.want, tt.why)
			}
			out := e.mustRun(t, "explain", tt.pod)
			for _, want := range append(tt.text, "In force:   "+string(tt.want)+": ") {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		})
	}
	e.mustFail(t, `pods "nope" not found`, "explain", "nope")
}

func violationEvent(name, pod, reason, message string, count int32, annotations map[string]string, ago time.Duration) *corev1.Event {
	now := metav1.NewTime(time.Now().Add(-ago))
	return &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod, APIVersion: "v1"},
		Reason:         reason, Message: message, Type: corev1.EventTypeWarning, Count: count,
		FirstTimestamp: now, LastTimestamp: now, Source: corev1.EventSource{Component: "execgate"},
	}
}

func (e *pluginEnv) testEvents(t *testing.T) {
	ctx := context.Background()
	for _, ev := range []*corev1.Event{
		violationEvent("web-1.denied", "web-1", ReasonExecDenied, "denied /usr/bin/curl in container app", 1000, nil, 3*time.Minute),
		violationEvent("api-1.reported", "api-1", ReasonExecViolation, "reported /usr/bin/wget in container app", 3, nil, 2*time.Minute),
		violationEvent("gone.denied", "gone", ReasonExecDenied, "denied /bin/nc in container app", 1, map[string]string{policyAnnotation: ns + "/api"}, time.Minute),
		violationEvent("web-1.scheduled", "web-1", "Scheduled", "assigned to a node", 1, nil, 0),
	} {
		if _, err := e.c.Client.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		args []string
		want []string // pods, in the order printed
	}{
		{nil, []string{"web-1", "api-1", "gone"}},
		{[]string{"--pod", "web-1"}, []string{"web-1"}},
		{[]string{"--action", "reported"}, []string{"api-1"}},
		{[]string{"--action", "denied"}, []string{"web-1", "gone"}},
		{[]string{"--policy", "api"}, []string{"api-1", "gone"}}, // label of api-1, annotation of gone
		{[]string{"--policy", "web", "--action", "reported"}, nil},
	}
	for _, tt := range tests {
		t.Run(strings.Join(append([]string{"events"}, tt.args...), " "), func(t *testing.T) {
			stdout, stderr, code := e.kubectl(ctx, append([]string{"events"}, tt.args...)...)
			if code != ExitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var pods []string
			for _, line := range strings.Split(strings.TrimSpace(stdout), "\n")[1:] {
				pods = append(pods, strings.Fields(line)[1])
			}
			if strings.Join(pods, ",") != strings.Join(tt.want, ",") {
				t.Errorf("pods %v, want %v\n%s%s", pods, tt.want, stdout, stderr)
			}
			if len(tt.want) == 0 && !strings.Contains(stderr, "No violations found.") {
				t.Errorf("stderr %q", stderr)
			}
		})
	}
	out := e.mustRun(t, "events", "--pod", "web-1")
	if f := strings.Fields(strings.Split(out, "\n")[1]); !strings.HasPrefix(f[0], "3m") || f[2] != "denied" || f[3] != "1000" || f[4] != "web" || !strings.Contains(out, "denied /usr/bin/curl in container app") {
		t.Errorf("web-1 row: %q", out)
	}
	out = e.mustRun(t, "events", "-A", "--action", "reported")
	if !strings.Contains(out, "NAMESPACE") || !strings.Contains(out, ns+"   ") {
		t.Errorf("-A shows no namespace column:\n%s", out)
	}
	var list corev1.EventList
	if err := json.Unmarshal([]byte(e.mustRun(t, "events", "-o", "json")), &list); err != nil || len(list.Items) != 3 || list.Kind != "EventList" {
		t.Errorf("json: %v, %d events, kind %q", err, len(list.Items), list.Kind)
	}
}

// syncBuffer is written by the plugin's goroutine and read by the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (e *pluginEnv) testEventsWatch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--kubeconfig", e.c.Kubeconfig, "-n", ns, "events", "--watch", "--pod", "web-1", "-o", "json"},
			&options{stdout: &stdout, stderr: &stderr, now: time.Now})
	}()
	waitFor(t, "the initial list", func() bool { return strings.Contains(stdout.String(), `"kind": "EventList"`) })

	// A new violation, then the aggregator raising the count of an existing one.
	events := e.c.Client.CoreV1().Events(ns)
	if _, err := events.Create(ctx, violationEvent("web-1.denied-2", "web-1", ReasonExecDenied, "denied /usr/bin/ssh in container app", 1, nil, 0), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ev, err := events.Get(ctx, "web-1.denied", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ev.Count = 1500
	if _, err := events.Update(ctx, ev, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Neither another pod's violation nor a non-violation event of this pod shows.
	if _, err := events.Create(ctx, violationEvent("api-1.reported-2", "api-1", ReasonExecViolation, "other pod", 1, nil, 0), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := events.Create(ctx, violationEvent("web-1.pulled", "web-1", "Pulled", "not a violation", 1, nil, 0), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the streamed events", func() bool {
		return strings.Contains(stdout.String(), "/usr/bin/ssh") && strings.Contains(stdout.String(), `"count": 1500`)
	})
	time.Sleep(300 * time.Millisecond)
	cancel()
	select {
	case code := <-done:
		if code != ExitOK {
			t.Errorf("exit %d after interrupt; stderr %s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("events --watch did not stop when interrupted")
	}
	if out := stdout.String(); strings.Contains(out, "other pod") || strings.Contains(out, "not a violation") {
		t.Errorf("watch printed events it should have filtered:\n%s", out)
	}
}

func (e *pluginEnv) testProposals(t *testing.T) {
	ctx := context.Background()
	e.create(ctx, t, proposal("deployment-web", "Deployment", "web", v1alpha1.RulesByContainer{
		"app": {Executables: []string{"/usr/bin/id", "/usr/bin/python3.12"}}, "proxy": {Executables: []string{"/envoy"}}}))
	out := e.mustRun(t, "proposals")
	if !strings.Contains(out, "deployment-web") || !strings.Contains(out, "Deployment/web") {
		t.Errorf("list:\n%s", out)
	}
	if f := strings.Fields(strings.Split(out, "\n")[1]); len(f) < 4 || f[2] != "2" || f[3] != "3" {
		t.Errorf("containers and executables of deployment-web: %q", out)
	}
	out = e.mustRun(t, "proposals", "deployment-web")
	for _, want := range []string{"Workload:     Deployment web", "app         /usr/bin/python3.12", "proxy       /envoy", "kubectl execgate promote deployment-web -n shop --mode monitor"} {
		if !strings.Contains(out, want) {
			t.Errorf("detail lacks %q:\n%s", want, out)
		}
	}
	var p v1alpha1.WorkloadPolicyProposal
	if err := yaml.Unmarshal([]byte(e.mustRun(t, "proposals", "deployment-web", "-o", "yaml")), &p); err != nil || p.Kind != "WorkloadPolicyProposal" || len(p.Spec.RulesByContainer) != 2 {
		t.Errorf("yaml: %v %+v", err, p)
	}
	out = e.mustRun(t, "proposals", "-A")
	if !strings.HasPrefix(out, "NAMESPACE") {
		t.Errorf("-A:\n%s", out)
	}
	stdout, stderr, code := e.kubectl(ctx, "proposals", "-n", "default")
	if code != ExitOK || stdout != "" || !strings.Contains(stderr, "No proposals found in namespace default") {
		t.Errorf("empty namespace: exit %d, %q, %q", code, stdout, stderr)
	}
	e.mustFail(t, `"nope" not found`, "proposals", "nope")
}

func proposal(name, kind, workload string, rules v1alpha1.RulesByContainer) *v1alpha1.WorkloadPolicyProposal {
	apiVersion := "apps/v1"
	if kind == "Pod" {
		apiVersion = "v1"
	}
	return &v1alpha1.WorkloadPolicyProposal{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.WorkloadPolicyProposalSpec{Workload: v1alpha1.WorkloadReference{APIVersion: apiVersion, Kind: kind, Name: workload}, RulesByContainer: rules}}
}

func (e *pluginEnv) testPromote(t *testing.T) {
	ctx := context.Background()
	// The Learn -> Monitor -> Protect path: the Deployment's pods opt into the Learn
	// policy "cart-learn"; promoting its proposal switches that very policy.
	replicas := int32(1)
	labels := map[string]string{"app": "cart", v1alpha1.PolicyLabel: "cart-learn"}
	e.create(ctx, t,
		&v1alpha1.WorkloadPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cart-learn"}, Spec: v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.ModeLearn}},
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cart"}, Spec: appsv1.DeploymentSpec{
			Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "cart"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "cart"}}}},
		}},
		proposal("deployment-cart", "Deployment", "cart", v1alpha1.RulesByContainer{"app": {Executables: []string{"/cart", "/bin/sh"}}}),
		proposal("deployment-lonely", "Deployment", "lonely", v1alpha1.RulesByContainer{"app": {Executables: []string{"/lonely"}}}),
		proposal("deployment-young", "Deployment", "young", v1alpha1.RulesByContainer{"app": {Executables: []string{"/young"}}, "init": {}}),
	)

	out := e.mustRun(t, "promote", "deployment-cart", "--mode", "monitor")
	for _, want := range []string{"WorkloadPolicy shop/cart-learn updated (was Learn) from proposal deployment-cart: mode Monitor, 1 container(s), 2 executable(s).",
		"The pods of Deployment cart opt into it already (label execgate.io/policy=cart-learn)"} {
		if !strings.Contains(out, want) {
			t.Errorf("promote to monitor lacks %q:\n%s", want, out)
		}
	}
	var pol v1alpha1.WorkloadPolicy
	if err := json.Unmarshal([]byte(e.mustRun(t, "promote", "deployment-cart", "--mode", "Protect", "-o", "json")), &pol); err != nil {
		t.Fatal(err)
	}
	if pol.Name != "cart-learn" || pol.Spec.Mode != v1alpha1.ModeProtect || pol.Annotations[promote.AnnotationProposal] != "deployment-cart" ||
		strings.Join(pol.Spec.RulesByContainer["app"].Executables, ",") != "/cart,/bin/sh" || pol.Kind != "WorkloadPolicy" {
		t.Errorf("promoted policy: %+v", pol)
	}

	// No workload to read: the policy takes the proposal's name, and the user is told
	// how pods opt in.
	out = e.mustRun(t, "promote", "deployment-lonely", "--mode", "protect")
	for _, want := range []string{"WorkloadPolicy shop/deployment-lonely created from proposal deployment-lonely: mode Protect",
		`kubectl -n shop patch deployment lonely --type merge -p '{"spec":{"template":{"metadata":{"labels":{"execgate.io/policy":"deployment-lonely"}}}}}'`} {
		if !strings.Contains(out, want) {
			t.Errorf("promote lacks %q:\n%s", want, out)
		}
	}
	var created v1alpha1.WorkloadPolicy
	if err := e.objects.Get(ctx, client.ObjectKey{Namespace: ns, Name: "deployment-lonely"}, &created); err != nil || created.Spec.Mode != v1alpha1.ModeProtect {
		t.Errorf("created policy: %v %+v", err, created.Spec)
	}

	e.mustFail(t, "policy shop/web exists in mode Protect and was not promoted from proposal deployment-lonely", "promote", "deployment-lonely", "--mode", "monitor", "--policy-name", "web")
	e.mustFail(t, `cannot become a Protect policy yet`, "promote", "deployment-young", "--mode", "protect")
	e.mustFail(t, "proposal shop/nope not found", "promote", "nope", "--mode", "protect")
	var web v1alpha1.WorkloadPolicy
	if err := e.objects.Get(ctx, client.ObjectKey{Namespace: ns, Name: "web"}, &web); err != nil || web.Generation != 1 {
		t.Errorf("web changed by a refused promotion: %v, generation %d", err, web.Generation)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 20*time.Second, true,
		func(context.Context) (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("timed out waiting for %s", what)
	}
}
