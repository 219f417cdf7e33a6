//go:build realnode

package realnode

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/test/e2e/cluster"
)

const nodeName = "realnode-0"

// startNode starts a control plane on the host and the real node VM joined to it.
// agent, when not nil, configures the node's agent.
func startNode(t *testing.T, agent func(*testing.T, *cluster.Cluster, *Link) *AgentConfig) (*cluster.Cluster, *Node) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Need(t, cluster.RequireE2EEnv, "root (tap device, qemu)")
	}
	// The API server reaches the kubelet (exec, logs) at the node's InternalIP: no
	// resolver here knows the node's hostname, which it would try first.
	c := cluster.Start(t, cluster.Options{ExtraAPIServerArgs: []string{"--kubelet-preferred-address-types=InternalIP"}})
	repo, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := cluster.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	built, err := Build(Config{Repo: repo, BuildDir: filepath.Join(repo, ".build", "kernels"), BinDir: bin, Row: "6.12", Agent: agent != nil, Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("node image built in %v", time.Since(start).Round(time.Millisecond))
	u, err := url.Parse(c.APIServerURL)
	if err != nil {
		t.Fatal(err)
	}
	link, err := NewLink(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := link.Close(); err != nil {
			t.Errorf("close link: %v", err)
		}
	})
	kcPath, err := c.KubeconfigFor(cluster.Identity{User: "system:node:" + nodeName, Groups: []string{"system:nodes"}}, "realnode.kubeconfig")
	if err != nil {
		t.Fatal(err)
	}
	kcData := kubeconfigVia(t, kcPath, link)
	nc := NodeConfig{Name: nodeName, Kubeconfig: kcData, Link: link}
	if agent != nil {
		nc.Agent = agent(t, c, link)
	}
	boot := time.Now()
	node, err := built.Boot(context.Background(), nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := node.Stop(); err != nil {
			t.Errorf("stop node: %v", err)
		}
		if t.Failed() {
			t.Logf("node console: %s", node.LogPath)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := node.WaitMark(ctx, "kubelet started"); err != nil {
		t.Fatal(err)
	}
	t.Logf("VM booted to kubelet start in %v", time.Since(boot).Round(time.Millisecond))
	waitFor(t, ctx, "node Ready", func() (bool, error) {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	})
	t.Logf("node Ready %v after boot", time.Since(boot).Round(time.Millisecond))
	// The kubelet registers with the not-ready taint, which kube-controller-manager's
	// node lifecycle controller lifts once the node is Ready. This control plane runs
	// no controller manager, so the test does that controller's job, for this node only.
	waitFor(t, ctx, "not-ready taint lifted", func() (bool, error) {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		kept := n.Spec.Taints[:0]
		for _, taint := range n.Spec.Taints {
			if taint.Key != corev1.TaintNodeNotReady {
				kept = append(kept, taint)
			}
		}
		if len(kept) == len(n.Spec.Taints) {
			return true, nil
		}
		n.Spec.Taints = kept
		_, err = c.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		return err == nil, err
	})
	n, err := c.Client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if addr := internalIP(n); addr != link.NodeIP {
		t.Fatalf("node InternalIP %q, want %s (addresses %v)", addr, link.NodeIP, n.Status.Addresses)
	}
	return c, node
}

// kubeconfigVia reads the kubeconfig at path and points it at the link's host
// side; the serving certificate names localhost.
func kubeconfigVia(t *testing.T, path string, link *Link) []byte {
	t.Helper()
	kc, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range kc.Clusters {
		cl.Server, cl.TLSServerName = "https://"+link.APIServer, "localhost"
	}
	data, err := clientcmd.Write(*kc)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// sleeperPod runs /bin/sleep from the test image in container "main"; no
// service account token (no controller publishes kube-root-ca.crt here).
func sleeperPod(ns string, labels map[string]string) *corev1.Pod {
	no := false
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sleeper", Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken: &no,
			Containers: []corev1.Container{{
				Name: "main", Image: TestImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/bin/sleep", "3600"},
			}},
		},
	}
}

// runPod creates pod and waits until it runs on the real node, logging why a
// container waits.
func runPod(t *testing.T, ctx context.Context, c *cluster.Cluster, pod *corev1.Pod) {
	t.Helper()
	if _, err := c.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waited := map[string]bool{}
	waitFor(t, ctx, "pod "+pod.Name+" Running", func() (bool, error) {
		p, err := c.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if p.Status.Phase == corev1.PodFailed {
			return false, fmt.Errorf("pod failed: %s", p.Status.Message)
		}
		for _, st := range p.Status.ContainerStatuses {
			if w := st.State.Waiting; w != nil && w.Message != "" && !waited[w.Message] {
				waited[w.Message] = true
				t.Logf("container %s waiting: %s: %s", st.Name, w.Reason, w.Message)
			}
		}
		return p.Status.Phase == corev1.PodRunning && p.Spec.NodeName == nodeName, nil
	})
}

func internalIP(n *corev1.Node) string {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	return ""
}

func waitFor(t *testing.T, ctx context.Context, what string, ok func() (bool, error)) {
	t.Helper()
	var last error
	for {
		done, err := ok()
		if done {
			return
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v (last error: %v)", what, ctx.Err(), last)
		case <-time.After(time.Second):
		}
	}
}

// TestRealNodeRunsAPod: the real kubelet registers the VM as a Node, the real
// scheduler places a pod on it, containerd runs it from the imported image
// (nothing can be pulled), and `kubectl exec` reaches it through the API
// server and the kubelet's streaming server.
func TestRealNodeRunsAPod(t *testing.T) {
	c, _ := startNode(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const ns = "realnode"
	if err := c.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	pod := sleeperPod(ns, nil)
	start := time.Now()
	runPod(t, ctx, c, pod)
	t.Logf("pod Running on %s %v after create", nodeName, time.Since(start).Round(time.Millisecond))

	stdout, stderr, err := execIn(ctx, c, ns, pod.Name, "main", "/bin/id", "-u")
	if err != nil || strings.TrimSpace(stdout) != "0" {
		t.Fatalf("exec id -u: %q, stderr %q, err %v", stdout, stderr, err)
	}

	if err := c.Client.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "pod gone", func() (bool, error) {
		_, err := c.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
}

// execIn runs argv in a container the way kubectl exec does.
func execIn(ctx context.Context, c *cluster.Cluster, ns, pod, container string, argv ...string) (string, string, error) {
	req := c.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: argv, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(c.RESTConfig, "POST", req.URL())
	if err != nil {
		return "", "", err
	}
	var out, errb bytes.Buffer
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &errb})
	return out.String(), errb.String(), err
}
