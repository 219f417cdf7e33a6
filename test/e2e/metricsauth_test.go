package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/execgate/execgate/nodeagent/agent"
	"github.com/execgate/execgate/test/e2e/cluster"
	"github.com/execgate/execgate/test/e2e/framework"
	"github.com/execgate/execgate/webhook"
)

// TestMetricsRequireAuth (issue 14.10): the controller's and the agents' /metrics name
// tenants' namespaces, pods and policies. With metrics.secure (the chart's default, flag
// --metrics-secure) both serve HTTPS and answer only a client whose bearer token the API
// server authenticates and authorizes for GET /metrics, through controller-runtime's
// filter, reviewing with the chart's own RBAC for each binary. A real kube-apiserver
// reviews real service account tokens. Before (plain HTTP, no filter): every scrape below
// got the metrics, anonymous ones included.
func TestMetricsRequireAuth(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.CreateNamespace(ctx, framework.Namespace); err != nil {
		t.Fatal(err)
	}
	users := applyChartRBAC(ctx, t, c)

	// Scrapers: one bound to the chart's metrics-reader ClusterRole, one bound to nothing.
	const monitoring = "monitoring"
	if err := c.CreateNamespace(ctx, monitoring); err != nil {
		t.Fatal(err)
	}
	reader := framework.Release + "-metrics-reader"
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "prometheus-execgate"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: reader},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "prometheus", Namespace: monitoring}}}
	if _, err := c.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token := func(sa string) string {
		if _, err := c.Client.CoreV1().ServiceAccounts(monitoring).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tok, err := c.Client.CoreV1().ServiceAccounts(monitoring).CreateToken(ctx, sa, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tok.Status.Token
	}
	prometheusToken, strangerToken := token("prometheus"), token("stranger")

	// The two endpoints, each reviewing tokens as its binary's service account.
	reviewer := func(user string) *rest.Config {
		cfg, err := c.RESTConfigFor(cluster.Identity{User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + framework.Namespace}})
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	srvCtx, stop := context.WithCancel(ctx)
	defer stop()
	controllerAddr := freeAddr(t)
	ctrlCfg := reviewer(users["controller"])
	httpClient, err := rest.HTTPClientFor(ctrlCfg)
	if err != nil {
		t.Fatal(err)
	}
	ctrlMetrics, err := metricsserver.NewServer(webhook.MetricsOptions(controllerAddr, true), ctrlCfg, httpClient)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		if err := ctrlMetrics.Start(srvCtx); err != nil {
			t.Errorf("controller metrics server: %v", err)
		}
	}()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	agentMetrics, err := agent.NewMetricsServer(agent.MetricsServerOptions{Registry: reg, Secure: true, RESTConfig: reviewer(users["agent"])})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		if err := agentMetrics.Serve(srvCtx, lis); err != nil {
			t.Errorf("agent metrics server: %v", err)
		}
	}()
	endpoints := map[string]string{"controller": controllerAddr, "agent": lis.Addr().String()}

	tlsClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		// Self-signed, made at start: the token is what the endpoint checks.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // see above
	scrape := func(url, bearer string) (int, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return 0, "", err
		}
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := tlsClient.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp.StatusCode, string(body), nil
	}
	for _, name := range []string{"controller", "agent"} {
		addr := endpoints[name]
		waitServing(t, addr)
		t.Run(name, func(t *testing.T) {
			cases := []struct {
				what   string
				bearer string
				want   int
			}{
				{"anonymous", "", http.StatusUnauthorized},
				// controller-runtime's filter answers 500 for a bearer that is not a JWT
				// (its token review fails): refused all the same, asserted below.
				{"a token the API server did not issue", "not-a-token", http.StatusInternalServerError},
				{"a service account not bound to " + reader, strangerToken, http.StatusForbidden},
				{"Prometheus, bound to " + reader, prometheusToken, http.StatusOK},
			}
			for _, tc := range cases {
				code, body, err := scrape("https://"+addr+"/metrics", tc.bearer)
				if err != nil {
					t.Fatalf("%s: %v", tc.what, err)
				}
				if code != tc.want {
					t.Errorf("%s: HTTP %d, want %d", tc.what, code, tc.want)
				}
				if served := strings.Contains(body, "go_goroutines"); served != (tc.want == http.StatusOK) {
					t.Errorf("%s: metrics in the answer: %v (HTTP %d)", tc.what, served, code)
				}
			}
			// Plain HTTP reaches no handler at all.
			resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/metrics")
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK || strings.Contains(string(body), "go_goroutines") {
					t.Errorf("plain HTTP: HTTP %d with metrics", resp.StatusCode)
				}
			}
		})
	}
}

// applyChartRBAC applies the chart's ServiceAccounts, ClusterRoles and their bindings and
// returns the API user of each component's ServiceAccount.
func applyChartRBAC(ctx context.Context, t *testing.T, c *cluster.Cluster) map[string]string {
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
	users := map[string]string{}
	var picked []*unstructured.Unstructured
	for _, o := range objs {
		switch o.GetKind() {
		case "ServiceAccount":
			users[o.GetLabels()["app.kubernetes.io/component"]] = fmt.Sprintf("system:serviceaccount:%s:%s", o.GetNamespace(), o.GetName())
			picked = append(picked, o)
		case "ClusterRole", "ClusterRoleBinding":
			picked = append(picked, o)
		}
	}
	if users["controller"] == "" || users["agent"] == "" {
		t.Fatalf("the chart renders ServiceAccounts for %v, want controller and agent", users)
	}
	ap, err := framework.NewApplier(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := ap.Apply(ctx, picked); err != nil {
		t.Fatal(err)
	}
	return users
}

func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

func waitServing(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
