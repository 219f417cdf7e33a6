package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/internal/testchart"
	"github.com/execgate/execgate/test/e2e/cluster"
	"github.com/execgate/execgate/test/e2e/framework"
)

// agentClients are the agent's two API clients, authenticated by one service account token.
type agentClients struct {
	kube kubernetes.Interface
	ctrl client.Client
}

// TestAgentRBACScopedToNode is issue 14.8 at a real kube-apiserver: the agent's RBAC
// (as the chart renders it) lets its service account write every ExecgateNode and Events
// in any node's name, so one compromised node could rewrite what every node reports it
// enforces. The chart's ValidatingAdmissionPolicy <release>-agent-node ties those writes
// to the node named in the service account token, which the API server puts in a token
// bound to a pod (TokenRequest with boundObjectRef, as the kubelet mounts it in the agent
// pod). The tokens here are such real tokens, minted by the API server for two agent
// pods on two nodes. Before: node A's agent created, updated and patched node B's
// ExecgateNode, wrote an Event naming node B, and a core/v1 Event (RBAC allowed it).
func TestAgentRBACScopedToNode(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	testchart.InstallCRDs(ctx, t, c.RESTConfig)
	if err := c.CreateNamespace(ctx, framework.Namespace); err != nil {
		t.Fatal(err)
	}
	const tenant = "tenant"
	if err := c.CreateNamespace(ctx, tenant); err != nil {
		t.Fatal(err)
	}
	saName, nodeA, nodeB := agentIdentityOnTwoNodes(ctx, t, c)
	agentA := agentClientsFor(ctx, t, c, saName, agentPod(ctx, t, c, saName, nodeA))
	agentB := agentClientsFor(ctx, t, c, saName, agentPod(ctx, t, c, saName, nodeB))
	unbound := agentClientsFor(ctx, t, c, saName, nil)

	// The guard takes effect once the API server's admission informers see it: wait
	// until node A's agent is refused node B's ExecgateNode, at most 20 s.
	deadline := time.Now().Add(20 * time.Second)
	var err0 error
	for {
		err0 = agentA.ctrl.Create(ctx, execgateNode(nodeB))
		if err0 != nil || time.Now().After(deadline) {
			break
		}
		adminDelete(ctx, t, c, nodeB) // not enforced yet: undo, try again
		time.Sleep(200 * time.Millisecond)
	}
	if err0 == nil {
		t.Fatalf("node %s's agent created the ExecgateNode of node %s", nodeA, nodeB)
	}
	expectGuardRefusal(t, err0, "may write only the ExecgateNode "+nodeA)

	// Each agent writes its own ExecgateNode, as NodeStatusWriter does.
	for _, tc := range []struct {
		agent agentClients
		node  string
	}{{agentA, nodeA}, {agentB, nodeB}} {
		en := execgateNode(tc.node)
		if err := tc.agent.ctrl.Create(ctx, en); err != nil {
			t.Fatalf("agent of %s creates its own ExecgateNode: %v", tc.node, err)
		}
		en.Status.PodsInForce = 3
		if err := tc.agent.ctrl.Status().Update(ctx, en); err != nil {
			t.Fatalf("agent of %s updates its own ExecgateNode status: %v", tc.node, err)
		}
		if err := tc.agent.ctrl.Patch(ctx, en, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"seen":"yes"}}}`))); err != nil {
			t.Fatalf("agent of %s patches its own ExecgateNode: %v", tc.node, err)
		}
	}

	mergePatch := func(body string) func(agentClients, *v1alpha1.ExecgateNode) error {
		return func(a agentClients, en *v1alpha1.ExecgateNode) error {
			return a.ctrl.Patch(ctx, en, client.RawPatch(types.MergePatchType, []byte(body)))
		}
	}
	refused := []struct {
		name   string
		agent  agentClients
		target string
		write  func(agentClients, *v1alpha1.ExecgateNode) error
		want   string
	}{
		{"node A's agent updates node B's ExecgateNode status", agentA, nodeB, func(a agentClients, en *v1alpha1.ExecgateNode) error {
			en.Status.PodsInForce = 0
			return a.ctrl.Status().Update(ctx, en)
		}, "may write only the ExecgateNode " + nodeA},
		{"node A's agent patches node B's ExecgateNode status", agentA, nodeB, func(a agentClients, en *v1alpha1.ExecgateNode) error {
			return a.ctrl.Status().Patch(ctx, en, client.RawPatch(types.MergePatchType, []byte(`{"status":{"podsInForce":0}}`)))
		}, "may write only the ExecgateNode " + nodeA},
		{"node A's agent relabels node B's ExecgateNode", agentA, nodeB, mergePatch(`{"metadata":{"labels":{"forged":"yes"}}}`), "may write only the ExecgateNode " + nodeA},
		{"node B's agent patches node A's ExecgateNode", agentB, nodeA, mergePatch(`{"metadata":{"labels":{"forged":"yes"}}}`), "may write only the ExecgateNode " + nodeB},
		{"a token bound to no pod writes node A's ExecgateNode", unbound, nodeA, mergePatch(`{"metadata":{"labels":{"forged":"yes"}}}`), "this token names no node"},
		{"node A's agent deletes node B's ExecgateNode (RBAC)", agentA, nodeB, func(a agentClients, en *v1alpha1.ExecgateNode) error {
			return a.ctrl.Delete(ctx, en)
		}, "forbidden"},
	}
	for _, tc := range refused {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			en := &v1alpha1.ExecgateNode{}
			admin := adminClient(t, c)
			if err := admin.Get(ctx, client.ObjectKey{Name: tc.target}, en); err != nil {
				t.Fatal(err)
			}
			before := en.DeepCopy()
			err := tc.write(tc.agent, en)
			if err == nil {
				t.Fatalf("the write went through")
			}
			expectGuardRefusal(t, err, tc.want)
			after := &v1alpha1.ExecgateNode{}
			if err := admin.Get(ctx, client.ObjectKey{Name: tc.target}, after); err != nil {
				t.Fatal(err)
			}
			if after.ResourceVersion != before.ResourceVersion {
				t.Fatalf("refused, yet the ExecgateNode changed (resourceVersion %s -> %s)", before.ResourceVersion, after.ResourceVersion)
			}
		})
	}

	// Events: the agent writes events.k8s.io Events about pods of its node, stamped
	// with reportingInstance execgate-agent-<node> (NodeEventSink).
	event := func(name, instance string) *eventsv1.Event {
		return &eventsv1.Event{
			ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: name},
			EventTime:  metav1.NewMicroTime(time.Now()), Type: corev1.EventTypeWarning, Reason: "PolicyLabelChanged", Action: "KeepBinding",
			ReportingController: "execgate-agent", ReportingInstance: instance, Note: "test",
			Regarding: corev1.ObjectReference{Kind: "Pod", Namespace: tenant, Name: "web-1", APIVersion: "v1"},
		}
	}
	t.Run("allowed: node A's agent writes an Event naming node A", func(t *testing.T) {
		ev, err := agentA.kube.EventsV1().Events(tenant).Create(ctx, event("own", "execgate-agent-"+nodeA), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// The events library patches a series on repeats.
		if _, err := agentA.kube.EventsV1().Events(tenant).Patch(ctx, ev.Name, types.MergePatchType,
			[]byte(`{"series":{"count":2,"lastObservedTime":"`+time.Now().UTC().Format("2006-01-02T15:04:05.000000Z")+`"}}`), metav1.PatchOptions{}); err != nil {
			t.Fatalf("series patch: %v", err)
		}
	})
	eventRefused := []struct {
		name  string
		agent agentClients
		write func(kubernetes.Interface) error
		want  string
	}{
		{"node A's agent writes an Event naming node B", agentA, func(k kubernetes.Interface) error {
			_, err := k.EventsV1().Events(tenant).Create(ctx, event("forged", "execgate-agent-"+nodeB), metav1.CreateOptions{})
			return err
		}, "writes Events with reportingInstance execgate-agent-" + nodeA + " only"},
		{"node A's agent writes an Event naming no node", agentA, func(k kubernetes.Interface) error {
			_, err := k.EventsV1().Events(tenant).Create(ctx, event("anonymous", "execgate-agent-web-7f9c"), metav1.CreateOptions{})
			return err
		}, "writes Events with reportingInstance execgate-agent-" + nodeA + " only"},
		{"node B's agent updates node A's Event", agentB, func(k kubernetes.Interface) error {
			_, err := k.EventsV1().Events(tenant).Patch(ctx, "own", types.MergePatchType, []byte(`{"series":{"count":9,"lastObservedTime":"`+time.Now().UTC().Format("2006-01-02T15:04:05.000000Z")+`"}}`), metav1.PatchOptions{})
			return err
		}, "writes Events with reportingInstance execgate-agent-" + nodeB + " only"},
		{"a core/v1 Event (RBAC: the agent writes none)", agentA, func(k kubernetes.Interface) error {
			_, err := k.CoreV1().Events(tenant).Create(ctx, &corev1.Event{
				ObjectMeta:     metav1.ObjectMeta{Namespace: tenant, Name: "core"},
				InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: tenant, Name: "web-1"}, Reason: "Forged", Message: "x", Type: corev1.EventTypeNormal,
			}, metav1.CreateOptions{})
			return err
		}, "forbidden"},
	}
	for _, tc := range eventRefused {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			err := tc.write(tc.agent.kube)
			if err == nil {
				t.Fatal("the write went through")
			}
			expectGuardRefusal(t, err, tc.want)
		})
	}

	// What RBAC cannot scope (documented in the chart and docs/threat-model.md): the
	// agent asks for its node's pods only, but its role can list every pod. Asserted so
	// that a change of either shows here.
	t.Run("remains: the role may list pods of other nodes; the agent asks for its own", func(t *testing.T) {
		own, err := agentA.kube.CoreV1().Pods(framework.Namespace).List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", nodeA).String()})
		if err != nil {
			t.Fatalf("the agent's own pod list (field selector spec.nodeName=%s): %v", nodeA, err)
		}
		if len(own.Items) != 1 || own.Items[0].Spec.NodeName != nodeA {
			t.Fatalf("own-node list returned %d pods", len(own.Items))
		}
		all, err := agentA.kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatalf("unscoped list refused (%v): RBAC now scopes pod reads, update agent-rbac.yaml and docs/threat-model.md", err)
		}
		t.Logf("node %s's agent may still list all %d pods without a field selector (RBAC cannot require one)", nodeA, len(all.Items))
	})
}

// applyAgentIdentity applies the agent's ServiceAccount, ClusterRole and binding and the
// agent-node ValidatingAdmissionPolicy as the chart renders them; it returns the
// ServiceAccount's name.
func applyAgentIdentity(ctx context.Context, t *testing.T, c *cluster.Cluster) string {
	t.Helper()
	binDir, err := cluster.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out, err := framework.RenderChart(ctx, filepath.Join(binDir, "helm"), framework.ChartDir(root), framework.Release, framework.Namespace)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := framework.DecodeManifests(out)
	if err != nil {
		t.Fatal(err)
	}
	var picked []*unstructured.Unstructured
	var sa string
	for _, o := range objs {
		agent := o.GetLabels()["app.kubernetes.io/component"] == "agent"
		switch {
		case agent && o.GetKind() == "ServiceAccount":
			sa = o.GetName()
			picked = append(picked, o)
		case agent && (o.GetKind() == "ClusterRole" || o.GetKind() == "ClusterRoleBinding"):
			picked = append(picked, o)
		case strings.HasPrefix(o.GetKind(), "ValidatingAdmissionPolicy") && strings.HasSuffix(o.GetName(), "-agent-node"):
			picked = append(picked, o)
		}
	}
	if sa == "" {
		t.Fatal("the chart renders no agent ServiceAccount")
	}
	names := make([]string, len(picked))
	for i, o := range picked {
		names[i] = o.GetKind() + "/" + o.GetName()
	}
	t.Logf("applying %s", strings.Join(names, ", "))
	ap, err := framework.NewApplier(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := ap.Apply(ctx, picked); err != nil {
		t.Fatal(err)
	}
	return sa
}

// agentIdentityOnTwoNodes applies the agent's identity as the chart renders it
// (applyAgentIdentity) and creates two nodes; it returns the ServiceAccount's name and
// the nodes' names.
func agentIdentityOnTwoNodes(ctx context.Context, t *testing.T, c *cluster.Cluster) (sa, nodeA, nodeB string) {
	t.Helper()
	sa = applyAgentIdentity(ctx, t, c)
	nodes, err := c.CreateNodes(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	return sa, nodes[0].Name, nodes[1].Name
}

// agentPod creates an agent pod bound to node (nothing runs it here: it is what the
// token is bound to, as the kubelet's projected token is).
func agentPod(ctx context.Context, t *testing.T, c *cluster.Cluster, sa, node string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: framework.Namespace, Name: "agent-" + node},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "agent", Image: "execgate"}}},
	}
	created, err := c.Client.CoreV1().Pods(framework.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return created
}

// agentClientsFor mints a token of the agent's ServiceAccount with the TokenRequest API,
// bound to pod (nil: bound to nothing), and returns clients authenticated by it alone.
func agentClientsFor(ctx context.Context, t *testing.T, c *cluster.Cluster, sa string, pod *corev1.Pod) agentClients {
	t.Helper()
	expiry := int64(3600)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}
	if pod != nil {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	tok, err := c.Client.CoreV1().ServiceAccounts(framework.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token request: %v", err)
	}
	cfg := rest.AnonymousClientConfig(c.RESTConfig)
	cfg.BearerToken = tok.Status.Token
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if pod != nil {
		review, err := kube.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got := review.Status.UserInfo.Extra["authentication.kubernetes.io/node-name"]
		if len(got) != 1 || got[0] != pod.Spec.NodeName {
			t.Fatalf("the API server authenticates the pod-bound token with node-name %v, want [%s]: the guard has nothing to match", got, pod.Spec.NodeName)
		}
	}
	return agentClients{kube: kube, ctrl: ctrlClient(t, cfg)}
}

func ctrlClient(t *testing.T, cfg *rest.Config) client.Client {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func adminClient(t *testing.T, c *cluster.Cluster) client.Client { return ctrlClient(t, c.RESTConfig) }

func adminDelete(ctx context.Context, t *testing.T, c *cluster.Cluster, name string) {
	t.Helper()
	if err := adminClient(t, c).Delete(ctx, execgateNode(name)); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

func execgateNode(name string) *v1alpha1.ExecgateNode {
	return &v1alpha1.ExecgateNode{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

// expectGuardRefusal fails t unless err is a refusal (Forbidden or Invalid) whose text
// contains want.
func expectGuardRefusal(t *testing.T, err error, want string) {
	t.Helper()
	if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
		t.Fatalf("want a refusal, got %v", err)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("refused, but not for the expected reason (want %q): %v", want, err)
	}
	t.Logf("refused: %v", err)
}
