package agents_test

import (
	"context"
	"fmt"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/internal/execpath"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	"github.com/execgate/execgate/nodeagent/server"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/webhook/agents"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
)

// fuzzAgentBackend accepts everything the agent server lets through and keeps the last one.
type fuzzAgentBackend struct {
	mu   sync.Mutex
	last *podpolicy.PodPolicy
}

func (b *fuzzAgentBackend) ApplyPodPolicy(_ context.Context, p *podpolicy.PodPolicy) (bool, uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.last = p
	return true, p.Policy.Version, nil
}
func (b *fuzzAgentBackend) RemovePod(context.Context, string) (bool, error) { return false, nil }
func (b *fuzzAgentBackend) RemovePolicy(context.Context, podpolicy.PolicyRef) (bool, error) {
	return false, nil
}
func (b *fuzzAgentBackend) Status(context.Context) (*agentv1.AgentStatus, error) {
	return &agentv1.AgentStatus{}, nil
}
func (b *fuzzAgentBackend) Subscribe(context.Context, podpolicy.EventFilter) (<-chan *agentv1.ExecEvent, func()) {
	ch := make(chan *agentv1.ExecEvent)
	return ch, func() {}
}

// startFuzzAgent runs a real agent gRPC server (plaintext: TLS is not what is fuzzed) for
// node-a and returns a client of it.
func startFuzzAgent(f *testing.F) (agentv1.AgentServiceClient, *fuzzAgentBackend) {
	b := &fuzzAgentBackend{}
	srv, err := server.New(server.Config{NodeName: "node-a", Insecure: true, ShutdownGracePeriod: time.Second}, b, zap.NewNop(), nil)
	if err != nil {
		f.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		_ = conn.Close()
		cancel()
		<-done
	})
	return agentv1.NewAgentServiceClient(conn), b
}

// FuzzCompilePodPolicy compiles policies with arbitrary modes, container names and
// executables (NUL, "..", unicode, lists past the limits) for pods with arbitrary
// containers. It checks that neither input is modified, that a refusal names the policy
// and stays bounded, and that whatever compiles is exactly the whole policy (every key)
// with the digest the agent computes, and is accepted by a real agent server.
func FuzzCompilePodPolicy(f *testing.F) {
	f.Add("Protect", int64(3), "app,sidecar", "app", "/usr/bin/app\n/opt/app/", uint16(0))
	f.Add("Monitor", int64(1), "app", "*", "/bin/sh\n/bin/sh", uint16(0))
	f.Add("Learn", int64(1), "init,app", "", "", uint16(0))
	f.Add("Protect", int64(1), "app", "app", "/usr/../bin/id\n/a\x00b\nrel\n/\n/日本/実行", uint16(3))
	f.Add("Protect", int64(1), "app", "app", "/lib64/ld-linux-x86-64.so.2\n/usr/lib/", uint16(0))
	f.Add("Protect", int64(2), "app", "app", "/x", uint16(1100))
	f.Add("protect", int64(0), "App,app", "App", "/x", uint16(0))
	agent, backend := startFuzzAgent(f)
	f.Fuzz(func(t *testing.T, mode string, generation int64, containers, key, paths string, extra uint16) {
		pod := webhooktest.Pod("web-1", "uid-web-1", "web", "node-a")
		pod.Spec.InitContainers = nil
		pod.Spec.Containers = nil
		for _, c := range strings.Split(containers, ",") {
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: c})
		}
		var exes []string
		if paths != "" {
			exes = strings.Split(paths, "\n")
		}
		for i := range int(extra % 1200) { // past MaxExecutablesPerContainer
			exes = append(exes, fmt.Sprintf("/opt/bin/x%d", i))
		}
		policy := &v1alpha1.WorkloadPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: webhooktest.NS, Name: "web", UID: "web-uid", Generation: generation},
			Spec: v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.Mode(mode), RulesByContainer: v1alpha1.RulesByContainer{
				key: {Executables: exes},
			}},
		}
		podBefore, policyBefore := pod.DeepCopy(), policy.DeepCopy()

		req, err := agents.CompilePodPolicy(pod, "node-a", policy, "req-1")
		if !reflect.DeepEqual(pod, podBefore) || !reflect.DeepEqual(policy, policyBefore) {
			t.Fatal("CompilePodPolicy modified its input")
		}
		if err != nil {
			if req != nil {
				t.Fatal("a request came back with the error")
			}
			if !strings.Contains(err.Error(), "shop/web") || len(err.Error()) > 16<<10 {
				t.Fatalf("error does not name the policy or is unbounded (%d bytes): %.300s", len(err.Error()), err)
			}
			return
		}
		// What compiled is a valid policy, container by container.
		if err := policy.Validate(); err != nil || generation < 1 {
			t.Fatalf("compiled an invalid policy (generation %d): %v", generation, err)
		}
		if got := req.GetPolicy().GetGeneration(); got != uint64(generation) {
			t.Fatalf("generation %d, want %d", got, generation)
		}
		for i, c := range pod.Spec.Containers {
			if req.GetPod().GetContainers()[i].GetName() != c.Name {
				t.Fatalf("container %d is %q, want %q", i, req.GetPod().GetContainers()[i].GetName(), c.Name)
			}
		}
		// The whole policy, whatever the pod's containers (issue 14: a subset made the
		// next pod sharing the policy on the node run with empty slots).
		if got, want := len(req.GetPolicy().GetRulesByContainer()), len(policy.Spec.RulesByContainer); got != want {
			t.Fatalf("%d rule keys compiled, the policy has %d", got, want)
		}
		for key, want := range policy.Spec.RulesByContainer {
			got, has := req.GetPolicy().GetRulesByContainer()[key]
			if !has || !slices.Equal(got.GetExecutables(), want.Executables) {
				t.Fatalf("rules of %q = %v (%v), want %v", key, got.GetExecutables(), has, want.Executables)
			}
			for _, e := range got.GetExecutables() {
				if err := execpath.Check(e); err != nil {
					t.Fatalf("compiled an entry execpath refuses: %v", err)
				}
			}
		}
		if !strings.HasPrefix(req.GetPolicy().GetDigest(), "sha256:") {
			t.Fatalf("digest %q", req.GetPolicy().GetDigest())
		}
		// The request is a copy: changing it does not touch the policy.
		for _, r := range req.GetPolicy().GetRulesByContainer() {
			if len(r.Executables) > 0 {
				r.Executables[0] = "/changed"
			}
		}
		if !reflect.DeepEqual(policy, policyBefore) {
			t.Fatal("the compiled request shares memory with the policy")
		}
		// The agent accepts what compiles, for a pod the API server would admit.
		if !admissiblePod(pod) {
			return
		}
		req, _ = agents.CompilePodPolicy(pod, "node-a", policy, "req-1")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := agent.ApplyPodPolicy(ctx, req); err != nil {
			t.Fatalf("the agent refused a compiled policy (%s): %v", status.Code(err), err)
		}
		backend.mu.Lock()
		got := backend.last
		backend.mu.Unlock()
		for name, r := range req.GetPolicy().GetRulesByContainer() {
			want := slices.Compact(slices.Sorted(slices.Values(r.GetExecutables())))
			if !slices.Equal(got.Policy.RulesByContainer[name], want) {
				t.Fatalf("agent received %v for %q, want %v", got.Policy.RulesByContainer[name], name, want)
			}
		}
		if d := got.Policy.Digest(); d != req.GetPolicy().GetDigest() {
			t.Fatalf("the agent's digest %s differs from the sent %s", d, req.GetPolicy().GetDigest())
		}
	})
}

// admissiblePod reports whether the API server would accept the pod's containers: 1 to 64
// unique DNS-1123 labels (the agent's limit is the API server's practical one).
func admissiblePod(pod *corev1.Pod) bool {
	names := map[string]bool{}
	for _, c := range pod.Spec.Containers {
		if len(validation.IsDNS1123Label(c.Name)) > 0 || names[c.Name] {
			return false
		}
		names[c.Name] = true
	}
	return len(names) >= 1 && len(names) <= server.MaxContainers
}
