package binding

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/internal/testpki"
	"github.com/execgate/execgate/nodeagent/agentclient"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	"github.com/execgate/execgate/nodeagent/server"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/webhook/agents"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
)

// Hot paths of the binding webhook, for benchstat comparisons:
//
//	go test ./webhook/binding -run '^$' -bench . -count 10 > new.txt
//	benchstat old.txt new.txt

// benchPathsPerContainer matches the node benchmarks' 50-path pod policy.
const benchPathsPerContainer = 50

// benchPod has an init container, two containers and a policy label.
func benchPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name, UID: types.UID("uid-" + name),
			Labels: map[string]string{v1alpha1.PolicyLabel: "web"}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "init"}},
			Containers:     []corev1.Container{{Name: "app"}, {Name: "sidecar"}},
		},
		Status: corev1.PodStatus{QOSClass: corev1.PodQOSBurstable},
	}
}

// benchPolicy lists 50 paths for "app" and a prefix rule for the others.
func benchPolicy() *v1alpha1.WorkloadPolicy {
	paths := make([]string, benchPathsPerContainer)
	for i := range paths {
		paths[i] = fmt.Sprintf("/opt/web/bin/tool%d", i)
	}
	return &v1alpha1.WorkloadPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "web", UID: "web-uid", Generation: 4},
		Spec: v1alpha1.WorkloadPolicySpec{
			Mode: v1alpha1.ModeProtect,
			RulesByContainer: v1alpha1.RulesByContainer{
				"app": {Executables: paths},
				"*":   {Executables: []string{"/bin/", "/usr/bin/"}},
			},
		},
	}
}

func BenchmarkCompilePodPolicy(b *testing.B) {
	pod, policy := benchPod("web-0"), benchPolicy()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := agents.CompilePodPolicy(pod, "node-a", policy, "req"); err != nil {
			b.Fatal(err)
		}
	}
}

// benchAgent answers ApplyPodPolicy in process: the handler's own cost.
type benchAgent struct{ agentv1.AgentServiceClient }

func (benchAgent) ApplyPodPolicy(context.Context, *agentv1.ApplyPodPolicyRequest, ...grpc.CallOption) (*agentv1.ApplyPodPolicyResponse, error) {
	return &agentv1.ApplyPodPolicyResponse{Applied: true}, nil
}

type benchAgents struct{ c agentv1.AgentServiceClient }

func (a benchAgents) Client(string) (agentv1.AgentServiceClient, error) { return a.c, nil }

// benchBackend is an agent that loads nothing: the push's cost is gRPC and
// mTLS on loopback.
type benchBackend struct{}

func (benchBackend) ApplyPodPolicy(_ context.Context, p *podpolicy.PodPolicy) (bool, uint64, error) {
	return true, p.Policy.Version, nil
}
func (benchBackend) RemovePod(context.Context, string) (bool, error) { return false, nil }
func (benchBackend) RemovePolicy(context.Context, podpolicy.PolicyRef) (bool, error) {
	return false, nil
}
func (benchBackend) Status(context.Context) (*agentv1.AgentStatus, error) {
	return &agentv1.AgentStatus{}, nil
}
func (benchBackend) Subscribe(context.Context, podpolicy.EventFilter) (<-chan *agentv1.ExecEvent, func()) {
	ch := make(chan *agentv1.ExecEvent)
	return ch, func() {}
}

// benchMTLSAgent serves a benchBackend over mTLS on loopback and returns a
// pool that reaches it as node "node-a".
func benchMTLSAgent(b *testing.B) *agents.AgentPool {
	b.Helper()
	dir := b.TempDir()
	ca := testpki.NewCA(b, "execgate bench CA")
	caFile := ca.WriteFile(b, filepath.Join(dir, "ca.crt"))
	srvCert, srvKey := ca.ServerCert(b).WriteFiles(b, dir, "agent")
	cliCert, cliKey := ca.ClientCert(b, "execgate-webhook").WriteFiles(b, dir, "webhook")
	srv, err := server.New(server.Config{
		NodeName: "node-a", CertFile: srvCert, KeyFile: srvKey, ClientCAFile: caFile,
		AllowedClientIdentities: []string{"execgate-webhook"}, ShutdownGracePeriod: time.Second,
	}, benchBackend{}, zap.NewNop(), nil)
	if err != nil {
		b.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	b.Cleanup(func() { cancel(); <-done })
	d, err := agentclient.NewDialer(agentclient.Config{CertFile: cliCert, KeyFile: cliKey, CAFile: caFile, ServerName: "localhost"})
	if err != nil {
		b.Fatal(err)
	}
	pool, err := agents.NewAgentPool(d, agents.NewStaticAgentDirectory(map[string]string{"node-a": lis.Addr().String()}), 4, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	return pool
}

// BenchmarkBindingHandler is one pods/binding admission of a labelled pod:
// decode, cache lookups, compile, push, respond. The pushes are answered
// by an in-process fake (the handler alone) or by a real agent server over
// mTLS on loopback.
func BenchmarkBindingHandler(b *testing.B) {
	pod := benchPod("web-0")
	cache := fake.NewClientBuilder().WithScheme(webhooktest.Scheme(b)).WithObjects(pod, benchPolicy()).Build()
	req := bindingRequest(b, "web-0", "node-a", nil)
	req.Namespace = "bench"
	for _, bc := range []struct {
		name   string
		agents func(*testing.B) agents.AgentClients
	}{
		{"agent=in-process", func(*testing.B) agents.AgentClients { return benchAgents{benchAgent{}} }},
		{"agent=grpc-mtls", func(b *testing.B) agents.AgentClients { return benchMTLSAgent(b) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := &BindingHandler{Admitter: &Admitter{
				Cache: cache, APIReader: cache, Log: zap.NewNop(),
				Pusher: &agents.Pusher{Agents: bc.agents(b), Timeout: 5 * time.Second},
			}}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				resp := h.Handle(ctx, req)
				if got := outcomeOf(resp); got != agents.OutcomePushed {
					b.Fatalf("outcome %q (%v), want %q", got, resp.Result, agents.OutcomePushed)
				}
			}
		})
	}
}
