package learn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/yaml"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/internal/testchart"
	"github.com/execgate/execgate/internal/testenv"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/test/e2e/cluster"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
	"github.com/execgate/execgate/webhook/promote"
)

func learnEvent(ns, pod, container, exe string) *agentv1.ExecEvent {
	return &agentv1.ExecEvent{Node: "node-a", Namespace: ns, Pod: pod, Container: container, Executable: exe,
		Mode: agentv1.Mode_MODE_LEARN, Action: agentv1.Action_ACTION_ALLOWED_LEARN, Count: 1}
}

func (l *ProposalLearner) pendingCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nPending
}

func TestProposalLearnerKeepsOnlyUsableEvents(t *testing.T) {
	reported := learnEvent("shop", "web-1", "app", "/usr/bin/id")
	reported.Action = agentv1.Action_ACTION_REPORTED
	tests := []struct {
		name string
		ev   *agentv1.ExecEvent
		keep bool
	}{
		{"learn event", learnEvent("shop", "web-1", "app", "/usr/bin/dash"), true},
		{"violation", reported, false},
		{"no pod (agent restarted, pod not pushed yet)", learnEvent("", "", "app", "/usr/bin/dash"), false},
		{"no container (process in the pod cgroup)", learnEvent("shop", "web-1", "", "/usr/bin/dash"), false},
		{"relative path", learnEvent("shop", "web-1", "app", "usr/bin/dash"), false},
		{"directory prefix", learnEvent("shop", "web-1", "app", "/opt/app/"), false},
		{"dot segment", learnEvent("shop", "web-1", "app", "/usr/../bin/sh"), false},
		{"container name not a label", learnEvent("shop", "web-1", "App_1", "/usr/bin/dash"), false},
		{"namespace not a label", learnEvent("Shop", "web-1", "app", "/usr/bin/dash"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &ProposalLearner{Log: zaptest.NewLogger(t)}
			l.HandleExecEvent(context.Background(), tt.ev)
			if got := l.pendingCount() == 1; got != tt.keep {
				t.Errorf("kept = %v, want %v", got, tt.keep)
			}
		})
	}
}

func TestProposalLearnerBufferIsBounded(t *testing.T) {
	l := &ProposalLearner{MaxPending: 3, Log: zaptest.NewLogger(t)}
	for i := range 10000 {
		l.HandleExecEvent(context.Background(), learnEvent("shop", "web-1", "app", fmt.Sprintf("/usr/bin/tool-%d", i%5)))
	}
	if n := l.pendingCount(); n != 3 {
		t.Fatalf("buffered %d triples, want the bound 3", n)
	}
	// tool-3 and tool-4 do not fit, in each of the 2,000 rounds.
	if l.dropped != 4000 {
		t.Fatalf("dropped %d events, want 4000", l.dropped)
	}
}

func TestProposalName(t *testing.T) {
	long := strings.Repeat("a", 60) + "." + strings.Repeat("b", 100)
	tests := []struct {
		kind, name, want string
	}{
		{"Deployment", "web", "deployment-web"},
		{"CronJob", "backup", "cronjob-backup"},
		{"Pod", "debug.shell", "pod-debug.shell"},
		{"StatefulSet", strings.Repeat("s", 51), "statefulset-" + strings.Repeat("s", 51)},
		{"StatefulSet", strings.Repeat("s", 52), ""},
		{"Deployment", long, ""},
		{"Deployment", strings.Repeat("x", 40) + "-" + strings.Repeat("y", 40), ""},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		got := ProposalName(v1alpha1.WorkloadReference{Kind: tt.kind, Name: tt.name})
		if tt.want != "" && got != tt.want {
			t.Errorf("%s/%s: %q, want %q", tt.kind, tt.name, got, tt.want)
		}
		if len(got) > MaxProposalNameLength || len(validation.IsDNS1123Subdomain(got)) > 0 || len(validation.IsValidLabelValue(got)) > 0 {
			t.Errorf("%s/%s: %q is not a valid proposal and policy name", tt.kind, tt.name, got)
		}
		if again := ProposalName(v1alpha1.WorkloadReference{Kind: tt.kind, Name: tt.name}); again != got {
			t.Errorf("%s/%s: not deterministic: %q then %q", tt.kind, tt.name, got, again)
		}
		if other, dup := seen[got]; dup {
			t.Errorf("%s/%s and %s share the name %q", tt.kind, tt.name, other, got)
		}
		seen[got] = tt.kind + "/" + tt.name
	}
}

// Owner objects for resolution tests; uid is the object's UID, owner its controller.
func ownerRef(apiVersion, kind, name string) metav1.OwnerReference {
	yes := true
	return metav1.OwnerReference{APIVersion: apiVersion, Kind: kind, Name: name, UID: types.UID(name + "-uid"), Controller: &yes}
}

func ownedMeta(ns, name string, owners ...metav1.OwnerReference) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(name + "-uid"), OwnerReferences: owners}
}

func TestProposalLearnerResolvesWorkloads(t *testing.T) {
	const ns = "shop"
	objs := []client.Object{
		&appsv1.ReplicaSet{ObjectMeta: ownedMeta(ns, "web-5d8f", ownerRef("apps/v1", "Deployment", "web"))},
		&appsv1.ReplicaSet{ObjectMeta: ownedMeta(ns, "bare-rs")},
		&appsv1.ReplicaSet{ObjectMeta: ownedMeta(ns, "rollout-rs", ownerRef("argoproj.io/v1alpha1", "Rollout", "canary"))},
		&batchv1.Job{ObjectMeta: ownedMeta(ns, "backup-29000", ownerRef("batch/v1", "CronJob", "backup"))},
		&batchv1.Job{ObjectMeta: ownedMeta(ns, "migrate")},
		&corev1.Pod{ObjectMeta: ownedMeta(ns, "web-5d8f-abcde", ownerRef("apps/v1", "ReplicaSet", "web-5d8f"))},
		&corev1.Pod{ObjectMeta: ownedMeta(ns, "db-0", ownerRef("apps/v1", "StatefulSet", "db"))},
		&corev1.Pod{ObjectMeta: ownedMeta(ns, "logs-x1", ownerRef("apps/v1", "DaemonSet", "logs"))},
		&corev1.Pod{ObjectMeta: ownedMeta(ns, "backup-29000-q", ownerRef("batch/v1", "Job", "backup-29000"))},
		&corev1.Pod{ObjectMeta: ownedMeta(ns, "migrate-q", ownerRef("batch/v1", "Job", "migrate"))},
		&corev1.Pod{ObjectMeta: ownedMeta(ns, "debug")},
		&corev1.Pod{ObjectMeta: ownedMeta(ns, "bare-rs-x", ownerRef("apps/v1", "ReplicaSet", "bare-rs"))},
		&corev1.Pod{ObjectMeta: ownedMeta(ns, "rollout-rs-x", ownerRef("apps/v1", "ReplicaSet", "rollout-rs"))},
		&corev1.Pod{ObjectMeta: ownedMeta(ns, "orphan-x", ownerRef("apps/v1", "ReplicaSet", "deleted-rs"))},
		&corev1.Pod{ObjectMeta: ownedMeta(ns, "custom-x", ownerRef("example.com/v1", "Widget", "w"))},
	}
	tests := []struct {
		pod     string
		want    v1alpha1.WorkloadReference
		wantErr string
	}{
		{pod: "web-5d8f-abcde", want: v1alpha1.WorkloadReference{APIVersion: "apps/v1", Kind: "Deployment", Name: "web"}},
		{pod: "db-0", want: v1alpha1.WorkloadReference{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "db"}},
		{pod: "logs-x1", want: v1alpha1.WorkloadReference{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "logs"}},
		{pod: "backup-29000-q", want: v1alpha1.WorkloadReference{APIVersion: "batch/v1", Kind: "CronJob", Name: "backup"}},
		{pod: "migrate-q", want: v1alpha1.WorkloadReference{APIVersion: "batch/v1", Kind: "Job", Name: "migrate"}},
		{pod: "debug", want: v1alpha1.WorkloadReference{APIVersion: "v1", Kind: "Pod", Name: "debug"}},
		{pod: "bare-rs-x", wantErr: "ReplicaSet bare-rs is not controlled by a Deployment"},
		{pod: "rollout-rs-x", wantErr: "ReplicaSet rollout-rs is not controlled by a Deployment"},
		{pod: "orphan-x", wantErr: "ReplicaSet deleted-rs is gone"},
		{pod: "custom-x", wantErr: "controlled by Widget w (example.com/v1)"},
		{pod: "never-existed", wantErr: "pod is gone and its workload was not seen before"},
	}
	c := fake.NewClientBuilder().WithScheme(webhooktest.Scheme(t)).WithObjects(objs...).Build()
	l := &ProposalLearner{Client: c, Log: zaptest.NewLogger(t)}
	l.init()
	for _, tt := range tests {
		t.Run(tt.pod, func(t *testing.T) {
			got, err := l.resolve(context.Background(), podRef{namespace: ns, name: tt.pod}, map[ownerKey]ownerResult{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("resolve = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// TestProposalLearnerWriteFailures: a write that may succeed later keeps its events for
// the next flush; one that cannot (the name belongs to another workload, the API server
// refuses) drops them instead of repeating the error every flush.
func TestProposalLearnerWriteFailures(t *testing.T) {
	const ns = "shop"
	taken := &v1alpha1.WorkloadPolicyProposal{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "deployment-web"},
		Spec: v1alpha1.WorkloadPolicyProposalSpec{Workload: v1alpha1.WorkloadReference{APIVersion: "v1", Kind: "Pod", Name: "other"}}}
	tests := []struct {
		name      string
		objs      []client.Object
		createErr error
		requeued  bool
	}{
		{"API server busy", nil, apierrors.NewServerTimeout(v1alpha1.Resource("workloadpolicyproposals"), "create", 1), true},
		{"forbidden", nil, apierrors.NewForbidden(v1alpha1.Resource("workloadpolicyproposals"), "deployment-web", errors.New("no")), false},
		{"name taken by another workload", []client.Object{taken}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := append([]client.Object{
				&appsv1.ReplicaSet{ObjectMeta: ownedMeta(ns, "web-5d8f", ownerRef("apps/v1", "Deployment", "web"))},
				&corev1.Pod{ObjectMeta: ownedMeta(ns, "web-5d8f-abcde", ownerRef("apps/v1", "ReplicaSet", "web-5d8f"))},
			}, tt.objs...)
			c := fake.NewClientBuilder().WithScheme(webhooktest.Scheme(t)).WithObjects(objs...).
				WithStatusSubresource(&v1alpha1.WorkloadPolicyProposal{}).
				WithInterceptorFuncs(interceptor.Funcs{Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
					if tt.createErr != nil {
						return tt.createErr
					}
					return c.Create(ctx, obj, opts...)
				}}).Build()
			l := &ProposalLearner{Client: c, Log: zaptest.NewLogger(t)}
			l.HandleExecEvent(context.Background(), learnEvent(ns, "web-5d8f-abcde", "app", "/usr/bin/dash"))
			if n := l.flush(context.Background()); n != 0 {
				t.Fatalf("flush changed %d proposals", n)
			}
			if got := l.pendingCount() == 1; got != tt.requeued {
				t.Errorf("events kept for the next flush: %v, want %v", got, tt.requeued)
			}
		})
	}
}

// TestProposalLearnerStart: Start flushes every FlushInterval, and once more when its
// context ends.
func TestProposalLearnerStart(t *testing.T) {
	const ns = "shop"
	for _, tt := range []struct {
		name     string
		interval time.Duration
		stop     bool // cancel right after the event: only the final flush can write it
	}{
		{"periodic flush", 20 * time.Millisecond, false},
		{"final flush", time.Hour, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := fake.NewClientBuilder().WithScheme(webhooktest.Scheme(t)).WithStatusSubresource(&v1alpha1.WorkloadPolicyProposal{}).
				WithObjects(&corev1.Pod{ObjectMeta: ownedMeta(ns, "debug")}).Build()
			l := &ProposalLearner{Client: c, FlushInterval: tt.interval, Log: zaptest.NewLogger(t)}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- l.Start(ctx) }()
			l.HandleExecEvent(ctx, learnEvent(ns, "debug", "shell", "/usr/bin/bash"))
			if tt.stop {
				cancel()
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			}
			var p v1alpha1.WorkloadPolicyProposal
			err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 5*time.Second, true, func(ctx context.Context) (bool, error) {
				return c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "pod-debug"}, &p) == nil, nil
			})
			if err != nil {
				t.Fatalf("proposal not written: %v", err)
			}
			if got := p.Spec.RulesByContainer["shell"].Executables; !reflect.DeepEqual(got, []string{"/usr/bin/bash"}) {
				t.Errorf("rules %v", p.Spec.RulesByContainer)
			}
		})
	}
}

// learnEnv is a real kube-apiserver with execgate's CRDs, and a learner that runs with
// the chart's controller ClusterRole and counts its proposal writes.
type learnEnv struct {
	c       *cluster.Cluster
	admin   client.Client
	learner *ProposalLearner
	// Successful proposal writes by kind, and a switch to make the next proposal
	// update lose a race.
	creates, updates, statusUpdates atomic.Int32
	loseNextUpdate                  atomic.Bool
}

func startLearnEnv(t *testing.T, ctx context.Context) *learnEnv {
	t.Helper()
	env := &learnEnv{c: cluster.Start(t, cluster.Options{})}
	admin, err := client.New(env.c.RESTConfig, client.Options{Scheme: webhooktest.Scheme(t)})
	if err != nil {
		t.Fatal(err)
	}
	env.admin = admin
	testchart.InstallCRDs(ctx, t, env.c.RESTConfig)

	// The learner's identity gets exactly the chart's controller ClusterRole.
	const user = "execgate-controller-learn-test"
	role := chartControllerRole(t, ctx)
	role.ObjectMeta = metav1.ObjectMeta{Name: user}
	if err := admin.Create(ctx, role); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	}
	if err := admin.Create(ctx, binding); err != nil {
		t.Fatal(err)
	}
	cfg, err := env.c.RESTConfigFor(cluster.Identity{User: user})
	if err != nil {
		t.Fatal(err)
	}
	base, err := client.NewWithWatch(cfg, client.Options{Scheme: webhooktest.Scheme(t)})
	if err != nil {
		t.Fatal(err)
	}
	counting := interceptor.NewClient(base, interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			err := c.Create(ctx, obj, opts...)
			if _, ok := obj.(*v1alpha1.WorkloadPolicyProposal); ok && err == nil {
				env.creates.Add(1)
			}
			return err
		},
		Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
			p, ok := obj.(*v1alpha1.WorkloadPolicyProposal)
			if ok && env.loseNextUpdate.CompareAndSwap(true, false) {
				// Someone else writes the proposal first: this update is stale.
				other := &v1alpha1.WorkloadPolicyProposal{}
				if err := admin.Get(ctx, client.ObjectKeyFromObject(p), other); err != nil {
					return err
				}
				metav1.SetMetaDataAnnotation(&other.ObjectMeta, "reviewed-by", "alice")
				if err := admin.Update(ctx, other); err != nil {
					return err
				}
			}
			err := c.Update(ctx, obj, opts...)
			if ok && err == nil {
				env.updates.Add(1)
			}
			return err
		},
		SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
			err := c.SubResource(sub).Update(ctx, obj, opts...)
			if _, ok := obj.(*v1alpha1.WorkloadPolicyProposal); ok && err == nil {
				env.statusUpdates.Add(1)
			}
			return err
		},
	})
	env.learner = &ProposalLearner{Client: counting, APIReader: counting, Log: zaptest.NewLogger(t)}
	return env
}

// chartControllerRole renders the chart's controller ClusterRole with helm.
func chartControllerRole(t *testing.T, ctx context.Context) *rbacv1.ClusterRole {
	t.Helper()
	dir, err := cluster.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	helm := filepath.Join(dir, "helm")
	if _, err := os.Stat(helm); err != nil {
		testenv.Need(t, cluster.RequireE2EEnv, fmt.Sprintf("helm (missing in %s: run `make tools`)", dir))
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, helm, "template", "execgate", filepath.Join(root, "deploy/helm/execgate"), "--namespace", "execgate-system",
		"--show-only", "templates/controller-rbac.yaml").Output()
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	for _, doc := range bytes.Split(out, []byte("\n---")) {
		var role rbacv1.ClusterRole
		if err := yaml.Unmarshal(doc, &role); err == nil && role.Kind == "ClusterRole" {
			return &role
		}
	}
	t.Fatalf("no ClusterRole in the chart's controller-rbac.yaml:\n%s", out)
	return nil
}

func (env *learnEnv) create(t *testing.T, ctx context.Context, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := env.admin.Create(ctx, o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
}

func (env *learnEnv) proposal(t *testing.T, ctx context.Context, ns, name string) *v1alpha1.WorkloadPolicyProposal {
	t.Helper()
	var p v1alpha1.WorkloadPolicyProposal
	if err := env.admin.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &p); err != nil {
		t.Fatalf("get proposal %s/%s: %v", ns, name, err)
	}
	return &p
}

func (env *learnEnv) writes() [3]int32 {
	return [3]int32{env.creates.Load(), env.updates.Load(), env.statusUpdates.Load()}
}

// controllerOf makes an owner reference to obj, as its controller would set it.
func controllerOf(obj client.Object, apiVersion, kind string) []metav1.OwnerReference {
	yes := true
	return []metav1.OwnerReference{{APIVersion: apiVersion, Kind: kind, Name: obj.GetName(), UID: obj.GetUID(), Controller: &yes, BlockOwnerDeletion: &yes}}
}

func podTemplate(labels map[string]string, restart corev1.RestartPolicy, containers ...string) corev1.PodTemplateSpec {
	tpl := corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{RestartPolicy: restart}}
	for _, c := range containers {
		tpl.Spec.Containers = append(tpl.Spec.Containers, corev1.Container{Name: c, Image: c + ":1"})
	}
	return tpl
}

func podOf(ns, name string, owners []metav1.OwnerReference, tpl corev1.PodTemplateSpec) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: tpl.Labels, OwnerReferences: owners}, Spec: tpl.Spec}
}

func rules(byContainer map[string][]string) v1alpha1.RulesByContainer {
	out := v1alpha1.RulesByContainer{}
	for c, paths := range byContainer {
		out[c] = v1alpha1.ContainerRules{Executables: paths}
	}
	return out
}

// TestE2ELearnProposals drives ProposalLearner against a real kube-apiserver: the
// owner chains are objects the test creates (no controller-manager runs in the
// harness), the events are what agents send.
func TestE2ELearnProposals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := startLearnEnv(t, ctx)
	const ns = "learn"
	if err := env.c.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	l := env.learner
	feed := func(pod, container string, exes ...string) {
		for _, exe := range exes {
			l.HandleExecEvent(ctx, learnEvent(ns, pod, container, exe))
		}
	}

	// Deployment -> ReplicaSet -> two pods, each with containers app and sidecar.
	labels := map[string]string{"app": "web", v1alpha1.PolicyLabel: "web"}
	tpl := podTemplate(labels, corev1.RestartPolicyAlways, "app", "sidecar")
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, Template: tpl}}
	env.create(t, ctx, dep)
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-5d8f7", OwnerReferences: controllerOf(dep, "apps/v1", "Deployment")},
		Spec: appsv1.ReplicaSetSpec{Selector: dep.Spec.Selector, Template: tpl}}
	env.create(t, ctx, rs)
	pod1 := podOf(ns, "web-5d8f7-abcde", controllerOf(rs, "apps/v1", "ReplicaSet"), tpl)
	pod2 := podOf(ns, "web-5d8f7-fghij", controllerOf(rs, "apps/v1", "ReplicaSet"), tpl)
	env.create(t, ctx, pod1, pod2)

	feed(pod1.Name, "app", "/usr/local/bin/server", "/usr/bin/dash", "/usr/bin/curl", "/usr/bin/dash")
	feed(pod1.Name, "sidecar", "/usr/bin/envoy", "/usr/bin/dash")
	violation := learnEvent(ns, pod1.Name, "app", "/usr/bin/id")
	violation.Action = agentv1.Action_ACTION_DENIED
	l.HandleExecEvent(ctx, violation)
	feed(pod1.Name, "", "/usr/bin/pause")
	feed(pod1.Name, "app", "relative/path", "/opt/app/")

	if n := l.flush(ctx); n != 1 {
		t.Fatalf("first flush changed %d proposals, want 1", n)
	}
	p := env.proposal(t, ctx, ns, "deployment-web")
	wantRules := rules(map[string][]string{
		"app":     {"/usr/bin/curl", "/usr/bin/dash", "/usr/local/bin/server"},
		"sidecar": {"/usr/bin/dash", "/usr/bin/envoy"},
	})
	if want := (v1alpha1.WorkloadReference{APIVersion: "apps/v1", Kind: "Deployment", Name: "web"}); p.Spec.Workload != want {
		t.Errorf("workload %+v, want %+v", p.Spec.Workload, want)
	}
	if !reflect.DeepEqual(p.Spec.RulesByContainer, wantRules) {
		t.Errorf("rules %v, want exactly %v", p.Spec.RulesByContainer, wantRules)
	}
	if p.Status.ExecutablesObserved != 5 || p.Status.ObservedPods != 1 || p.Status.LastUpdated == nil {
		t.Errorf("status %+v, want 5 executables, 1 pod, lastUpdated set", p.Status)
	}
	if got, want := env.writes(), [3]int32{1, 0, 1}; got != want {
		t.Errorf("writes (create, update, status) = %v, want %v", got, want)
	}

	// 10,000 events of executables already recorded: no write at all.
	for range 10000 {
		feed(pod1.Name, "app", "/usr/bin/dash")
	}
	if n := l.flush(ctx); n != 0 {
		t.Fatalf("flush of known executables changed %d proposals", n)
	}
	if got, want := env.writes(), [3]int32{1, 0, 1}; got != want {
		t.Errorf("writes after 10,000 known events = %v, want still %v", got, want)
	}
	// 10,000 events of one new executable: one update of the spec, one of the status.
	for range 10000 {
		feed(pod1.Name, "app", "/usr/bin/ls")
	}
	if n := l.flush(ctx); n != 1 {
		t.Fatalf("flush changed %d proposals, want 1", n)
	}
	if got, want := env.writes(), [3]int32{1, 1, 2}; got != want {
		t.Errorf("writes after 10,000 events of one new executable = %v, want %v", got, want)
	}
	p = env.proposal(t, ctx, ns, "deployment-web")
	if got := p.Spec.RulesByContainer["app"].Executables; !reflect.DeepEqual(got, []string{"/usr/bin/curl", "/usr/bin/dash", "/usr/local/bin/server", "/usr/bin/ls"}) {
		t.Errorf("app executables %v", got)
	}
	if p.Status.ExecutablesObserved != 6 || p.Status.ObservedPods != 1 {
		t.Errorf("status %+v, want 6 executables from 1 pod", p.Status)
	}

	// The second pod adds one executable; the first pod, deleted meanwhile, another
	// (its workload is cached). A concurrent writer makes the update conflict once.
	if err := env.admin.Delete(ctx, pod1); err != nil {
		t.Fatal(err)
	}
	feed(pod2.Name, "app", "/usr/bin/sleep", "/usr/bin/dash")
	feed(pod1.Name, "sidecar", "/usr/bin/tar")
	env.loseNextUpdate.Store(true)
	if n := l.flush(ctx); n != 1 {
		t.Fatalf("flush changed %d proposals, want 1", n)
	}
	p = env.proposal(t, ctx, ns, "deployment-web")
	wantRules = rules(map[string][]string{
		"app":     {"/usr/bin/curl", "/usr/bin/dash", "/usr/local/bin/server", "/usr/bin/ls", "/usr/bin/sleep"},
		"sidecar": {"/usr/bin/dash", "/usr/bin/envoy", "/usr/bin/tar"},
	})
	if !reflect.DeepEqual(p.Spec.RulesByContainer, wantRules) || p.Annotations["reviewed-by"] != "alice" {
		t.Errorf("after a conflict: rules %v annotations %v; want %v and the other writer's annotation", p.Spec.RulesByContainer, p.Annotations, wantRules)
	}
	if p.Status.ExecutablesObserved != 8 || p.Status.ObservedPods != 2 {
		t.Errorf("status %+v, want 8 executables from 2 pods", p.Status)
	}
	if got, want := env.writes(), [3]int32{1, 2, 3}; got != want {
		t.Errorf("writes = %v, want %v (the lost update is not counted)", got, want)
	}

	// CronJob -> Job -> Pod resolves to the CronJob; a bare pod is its own workload.
	jobTpl := podTemplate(map[string]string{v1alpha1.PolicyLabel: "backup"}, corev1.RestartPolicyNever, "backup")
	cron := &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "backup"},
		Spec: batchv1.CronJobSpec{Schedule: "*/5 * * * *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: jobTpl}}}}
	env.create(t, ctx, cron)
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "backup-29000000", OwnerReferences: controllerOf(cron, "batch/v1", "CronJob")},
		Spec: batchv1.JobSpec{Template: jobTpl}}
	env.create(t, ctx, job)
	jobPod := podOf(ns, "backup-29000000-x7k2p", controllerOf(job, "batch/v1", "Job"), jobTpl)
	debug := podOf(ns, "debug", nil, podTemplate(nil, corev1.RestartPolicyAlways, "shell"))
	env.create(t, ctx, jobPod, debug)
	feed(jobPod.Name, "backup", "/usr/bin/pg_dump", "/usr/bin/gzip")
	feed(debug.Name, "shell", "/usr/bin/bash")
	if n := l.flush(ctx); n != 2 {
		t.Fatalf("flush changed %d proposals, want 2", n)
	}
	cp := env.proposal(t, ctx, ns, "cronjob-backup")
	if want := (v1alpha1.WorkloadReference{APIVersion: "batch/v1", Kind: "CronJob", Name: "backup"}); cp.Spec.Workload != want {
		t.Errorf("job pod's workload %+v, want %+v", cp.Spec.Workload, want)
	}
	if want := rules(map[string][]string{"backup": {"/usr/bin/gzip", "/usr/bin/pg_dump"}}); !reflect.DeepEqual(cp.Spec.RulesByContainer, want) {
		t.Errorf("cronjob rules %v, want %v", cp.Spec.RulesByContainer, want)
	}
	if bp := env.proposal(t, ctx, ns, "pod-debug"); bp.Spec.Workload != (v1alpha1.WorkloadReference{APIVersion: "v1", Kind: "Pod", Name: "debug"}) {
		t.Errorf("bare pod's workload %+v", bp.Spec.Workload)
	}

	// Promote: a Protect policy with the proposal's rules, written by a client with the
	// rights of a user, not the controller's.
	p = env.proposal(t, ctx, ns, "deployment-web")
	if _, err := promote.PromoteProposal(ctx, env.admin, ns, "deployment-web", v1alpha1.ModeLearn, "web"); err == nil || !strings.Contains(err.Error(), "promote it to Monitor") {
		t.Fatalf("promote to Learn: %v", err)
	}
	if _, err := promote.PromoteProposal(ctx, env.admin, ns, "deployment-web", v1alpha1.ModeProtect, "web"); err != nil {
		t.Fatalf("promote: %v", err)
	}
	var policy v1alpha1.WorkloadPolicy
	if err := env.admin.Get(ctx, types.NamespacedName{Namespace: ns, Name: "web"}, &policy); err != nil {
		t.Fatal(err)
	}
	if policy.Spec.Mode != v1alpha1.ModeProtect || !reflect.DeepEqual(policy.Spec.RulesByContainer, p.Spec.RulesByContainer) {
		t.Errorf("promoted policy %+v, want Protect with the proposal's rules %v", policy.Spec, p.Spec.RulesByContainer)
	}
	if policy.Annotations[promote.AnnotationProposal] != "deployment-web" {
		t.Errorf("policy annotations %v", policy.Annotations)
	}
	// Promoting again (to Monitor) updates the same policy.
	if _, err := promote.PromoteProposal(ctx, env.admin, ns, "deployment-web", v1alpha1.ModeMonitor, "web"); err != nil {
		t.Fatalf("promote again: %v", err)
	}
	if err := env.admin.Get(ctx, types.NamespacedName{Namespace: ns, Name: "web"}, &policy); err != nil || policy.Spec.Mode != v1alpha1.ModeMonitor || policy.Generation != 2 {
		t.Errorf("policy after second promotion: mode %s generation %d err %v", policy.Spec.Mode, policy.Generation, err)
	}
}
