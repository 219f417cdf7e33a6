package violations

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/test/e2e/cluster"
	"github.com/execgate/execgate/webhook/agents"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
)

func TestViolationMessage(t *testing.T) {
	long := strings.Repeat("é", 2000)
	for _, tc := range []struct {
		name   string
		key    violationKey
		detail violationDetail
		want   []string // substrings
	}{{
		name:   "protect",
		key:    violationKey{executable: "/usr/bin/id", container: "app", action: agentv1.Action_ACTION_DENIED},
		detail: violationDetail{policy: "shop/web", mode: agentv1.Mode_MODE_PROTECT, pid: 42, ppid: 7, uid: 1000, parent: "/bin/sh", cmdline: "id -u"},
		want: []string{"exec of /usr/bin/id denied", `container "app"`, "policy shop/web", "mode Protect", "pid 42", "ppid 7",
			"uid 1000", "parent /bin/sh", `cmdline "id -u"`},
	}, {
		name:   "monitor, started by kubectl exec, parent gone",
		key:    violationKey{executable: "/usr/bin/curl", container: "app", action: agentv1.Action_ACTION_REPORTED},
		detail: violationDetail{policy: "shop/web", mode: agentv1.Mode_MODE_MONITOR, pid: 9},
		want:   []string{"exec of /usr/bin/curl not in the allowlist (allowed: Monitor mode)", "mode Monitor", "parent unknown (exited)"},
	}, {
		name:   "long cmdline is cut to the message limit on a character boundary",
		key:    violationKey{executable: "/bin/x", action: agentv1.Action_ACTION_DENIED},
		detail: violationDetail{cmdline: long},
		want:   []string{"exec of /bin/x denied"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			msg := violationMessage(tc.key, tc.detail)
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q lacks %q", msg, w)
				}
			}
			if len(msg) > maxEventMessage || !utf8Valid(msg) {
				t.Errorf("message of %d bytes (valid UTF-8: %v)", len(msg), utf8Valid(msg))
			}
		})
	}
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

func violationCount(t *testing.T, ns, policy, action string) float64 {
	t.Helper()
	var m dto.Metric
	if err := violationsTotal.WithLabelValues(ns, policy, action).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestE2EViolationEventsAggregateBurst feeds violations through a real agent gRPC server
// and agents.AgentEventStream into ViolationEvents, writing to a real kube-apiserver as a user
// with only the chart's rights (pods get; events create, patch). 1,000 identical denials
// within a second are one Event with count 1,000 and a counter of 1,000, in two writes;
// a later burst updates the same Event; an Event that is gone is started again.
func TestE2EViolationEventsAggregateBurst(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const ns, window = "violations", 2 * time.Second
	if err := c.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	pod, err := c.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{"execgate.io/policy": "web"}},
		// Already on node-a: the scheduler leaves it (and its Events) alone.
		Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cl, creates, patches := controllerEventClient(t, ctx, c)

	fleet := webhooktest.NewFleet(t)
	src := webhooktest.NewEventSource()
	addr, _ := fleet.Serve(t, "node-a", "127.0.0.1:0", src)
	pool, err := agents.NewAgentPool(fleet.Dialer, agents.NewStaticAgentDirectory(map[string]string{"node-a": addr}), 8, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	sink := &ViolationEvents{Client: cl, Window: window, Log: zaptest.NewLogger(t)}
	stream := &agents.AgentEventStream{Nodes: agents.NewStaticAgentDirectory(map[string]string{"node-a": addr}), Agents: pool,
		Origin: webhooktest.AcceptingOrigin{}, Sinks: []agents.ExecEventSink{sink}, Log: zaptest.NewLogger(t)}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{}, 2)
	for _, r := range []interface{ Start(context.Context) error }{sink, stream} {
		go func() {
			if err := r.Start(rctx); err != nil {
				t.Errorf("Start: %v", err)
			}
			done <- struct{}{}
		}()
	}
	defer func() { stop(); <-done; <-done }()
	webhooktest.WaitUntil(t, "event stream open", func() bool { return src.Subscribers() == 1 })

	deniedBefore := violationCount(t, ns, ns+"/web", "denied")
	reportedBefore := violationCount(t, ns, ns+"/web", "reported")
	t0 := time.Now().Truncate(time.Second)
	emit := func(n int, action agentv1.Action, mode agentv1.Mode, podName, exe, parent string, offset time.Duration) {
		for i := range n {
			src.Emit(t, &agentv1.ExecEvent{
				Time: timestamppb.New(t0.Add(offset + time.Duration(i)*time.Millisecond*999/time.Duration(n))), Node: "node-a",
				Namespace: ns, Pod: podName, Container: "app", Policy: ns + "/web", Mode: mode, Action: action,
				Pid: uint32(1000 + i), Ppid: 1, Uid: 0, Executable: exe, Argv: []string{exe, "-u"}, ParentExecutable: parent, Count: 1,
			})
		}
	}
	start := time.Now()
	emit(1000, agentv1.Action_ACTION_DENIED, agentv1.Mode_MODE_PROTECT, "web-1", "/usr/bin/id", "/bin/sh", 0)
	// Started by `kubectl exec`: the parent is the runtime's shim, outside the container.
	emit(5, agentv1.Action_ACTION_REPORTED, agentv1.Mode_MODE_MONITOR, "web-1", "/usr/bin/curl", "/usr/bin/containerd-shim-runc-v2", 0)
	emit(20, agentv1.Action_ACTION_ALLOWED_LEARN, agentv1.Mode_MODE_LEARN, "web-1", "/usr/bin/ls", "/bin/sh", 0)
	emit(3, agentv1.Action_ACTION_DENIED, agentv1.Mode_MODE_PROTECT, "deleted-pod", "/usr/bin/id", "/bin/sh", 0)
	emitted := time.Since(start)
	if emitted > time.Second {
		t.Fatalf("emitting the burst took %v, want under a second", emitted)
	}
	webhooktest.WaitUntil(t, "violations counted", func() bool {
		return violationCount(t, ns, ns+"/web", "denied")-deniedBefore == 1003 && violationCount(t, ns, ns+"/web", "reported")-reportedBefore == 5
	})

	denied := waitForEventCount(t, ctx, c, ns, "web-1", ReasonExecDenied, 1000)
	t.Logf("1,000 denials handed to the agent server in %v; Event count 1000 %v later", emitted, time.Since(start))
	if d := denied.InvolvedObject; d.Kind != "Pod" || d.UID != pod.UID || d.FieldPath != "spec.containers{app}" {
		t.Errorf("involvedObject %+v, want pod web-1 (uid %s), spec.containers{app}", d, pod.UID)
	}
	if denied.Type != corev1.EventTypeWarning || denied.Source.Host != "node-a" || denied.Source.Component != "execgate-controller" ||
		!denied.FirstTimestamp.Time.Equal(t0) || denied.LastTimestamp.Time.Before(t0) {
		t.Errorf("event %+v", denied)
	}
	for _, w := range []string{"/usr/bin/id denied", `container "app"`, "policy violations/web", "mode Protect", "pid 1999", "parent /bin/sh", `cmdline "/usr/bin/id -u"`} {
		if !strings.Contains(denied.Message, w) {
			t.Errorf("message %q lacks %q", denied.Message, w)
		}
	}
	reported := waitForEventCount(t, ctx, c, ns, "web-1", ReasonExecViolation, 5)
	if !strings.Contains(reported.Message, "parent /usr/bin/containerd-shim-runc-v2") || reported.InvolvedObject.UID != pod.UID {
		t.Errorf("kubectl exec violation: %+v", reported)
	}
	ghost := waitForEventCount(t, ctx, c, ns, "deleted-pod", ReasonExecDenied, 3)
	if ghost.InvolvedObject.UID != "" {
		t.Errorf("event of a pod the API server does not know has uid %q", ghost.InvolvedObject.UID)
	}
	if n := len(listEvents(t, ctx, c, ns)); n != 3 {
		t.Errorf("%d events, want 3 (Learn is no violation)", n)
	}
	// Three series: each one create, at most one update.
	t.Logf("Event writes for 1,008 violations in 3 series: %d creates, %d patches", creates.Load(), patches.Load())
	if cr, pa := creates.Load(), patches.Load(); cr != 3 || pa > 3 {
		t.Errorf("%d creates and %d patches, want 3 and at most 3", cr, pa)
	}
	// What `kubectl describe pod` finds: by the pod's name, namespace, kind and uid.
	found, err := c.Client.CoreV1().Events(ns).SearchWithContext(context.Background(), clientgoscheme.Scheme, pod)
	if err != nil || len(found.Items) != 2 {
		t.Errorf("events found for the pod: %d (%v), want 2", len(found.Items), err)
	}

	// A later burst, after the window: the same Event counts on.
	emit(10, agentv1.Action_ACTION_DENIED, agentv1.Mode_MODE_PROTECT, "web-1", "/usr/bin/id", "/bin/sh", 3*time.Second)
	again := waitForEventCount(t, ctx, c, ns, "web-1", ReasonExecDenied, 1010)
	if again.Name != denied.Name || !again.FirstTimestamp.Time.Equal(t0) || !again.LastTimestamp.After(denied.LastTimestamp.Time) {
		t.Errorf("second burst: event %s first %v last %v; want %s first %v, last after %v",
			again.Name, again.FirstTimestamp, again.LastTimestamp, denied.Name, t0, denied.LastTimestamp)
	}

	// The Event is gone (deleted, or the API server's event TTL): a new one starts.
	if err := c.Client.CoreV1().Events(ns).Delete(ctx, denied.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	emit(4, agentv1.Action_ACTION_DENIED, agentv1.Mode_MODE_PROTECT, "web-1", "/usr/bin/id", "/bin/sh", 6*time.Second)
	fresh := waitForEventCount(t, ctx, c, ns, "web-1", ReasonExecDenied, 4)
	if fresh.Name == denied.Name || !fresh.FirstTimestamp.Time.Equal(t0.Add(6*time.Second)) {
		t.Errorf("event after deletion: %s first %v", fresh.Name, fresh.FirstTimestamp)
	}
}

// controllerEventClient is a client with only the chart's rights that matter here
// (deploy/helm/execgate/templates/controller-rbac.yaml), counting Event writes.
func controllerEventClient(t *testing.T, ctx context.Context, c *cluster.Cluster) (client.Client, *atomic.Int32, *atomic.Int32) {
	t.Helper()
	const user = "execgate-controller-violations-test"
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		},
	}
	if _, err := c.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	}
	if _, err := c.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg, err := c.RESTConfigFor(cluster.Identity{User: user})
	if err != nil {
		t.Fatal(err)
	}
	base, err := client.NewWithWatch(cfg, client.Options{Scheme: webhooktest.Scheme(t)})
	if err != nil {
		t.Fatal(err)
	}
	var creates, patches atomic.Int32
	wrapped := interceptor.NewClient(base, interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if _, ok := obj.(*corev1.Event); ok {
				creates.Add(1)
			}
			return c.Create(ctx, obj, opts...)
		},
		Patch: func(ctx context.Context, c client.WithWatch, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
			if _, ok := obj.(*corev1.Event); ok {
				patches.Add(1)
			}
			return c.Patch(ctx, obj, patch, opts...)
		},
	})
	return wrapped, &creates, &patches
}

func listEvents(t *testing.T, ctx context.Context, c *cluster.Cluster, ns string) []corev1.Event {
	t.Helper()
	list, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// waitForEventCount waits until the pod has exactly one Event with reason and that
// Event's count is want.
func waitForEventCount(t *testing.T, ctx context.Context, c *cluster.Cluster, ns, podName, reason string, want int32) corev1.Event {
	t.Helper()
	sel := "involvedObject.name=" + podName + ",reason=" + reason
	var last []corev1.Event
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		list, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			t.Fatal(err)
		}
		last = list.Items
		if len(last) > 1 {
			t.Fatalf("%d %s events for %s, want one: %+v", len(last), reason, podName, last)
		}
		if len(last) == 1 && last[0].Count == want {
			return last[0]
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no %s event for %s with count %d: %+v", reason, podName, want, last)
	return corev1.Event{}
}
