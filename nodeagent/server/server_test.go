package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/execgate/execgate/internal/testpki"
	"github.com/execgate/execgate/nodeagent/agentclient"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

const testNode = "node-a"

// fakeBackend keeps pod -> (policy, version) like the real agent does, so
// that concurrent calls through the server can be checked for their end state.
type fakeBackend struct {
	calls atomic.Int64

	mu   sync.Mutex
	pods map[string]fakePod
	err  error // returned by every call when set

	subscribers chan chan *agentv1.ExecEvent // each Subscribe sends its channel here
}

type fakePod struct {
	policy  string
	version uint64
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{pods: map[string]fakePod{}, subscribers: make(chan chan *agentv1.ExecEvent, 4)}
}

func (b *fakeBackend) ApplyPodPolicy(_ context.Context, p *podpolicy.PodPolicy) (bool, uint64, error) {
	b.calls.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return false, 0, b.err
	}
	cur, ok := b.pods[p.Pod.UID]
	if ok && cur.version >= p.Policy.Version {
		return false, cur.version, nil
	}
	b.pods[p.Pod.UID] = fakePod{policy: p.Policy.Key(), version: p.Policy.Version}
	return true, p.Policy.Version, nil
}

func (b *fakeBackend) RemovePod(_ context.Context, uid string) (bool, error) {
	b.calls.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return false, b.err
	}
	_, ok := b.pods[uid]
	delete(b.pods, uid)
	return ok, nil
}

func (b *fakeBackend) RemovePolicy(_ context.Context, ref podpolicy.PolicyRef) (bool, error) {
	b.calls.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return false, b.err
	}
	for _, p := range b.pods {
		if p.policy == ref.Key() {
			return false, fmt.Errorf("policy %s still bound: %w", ref.Key(), podpolicy.ErrConflict)
		}
	}
	return false, nil
}

func (b *fakeBackend) Status(context.Context) (*agentv1.AgentStatus, error) {
	b.calls.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return nil, b.err
	}
	st := &agentv1.AgentStatus{NodeName: testNode, AttachMode: "fake"}
	for uid, p := range b.pods {
		st.Pods = append(st.Pods, &agentv1.PodStatus{Uid: uid, Policy: p.policy, Version: p.version, State: agentv1.PodState_POD_STATE_ENFORCED})
	}
	return st, nil
}

func (b *fakeBackend) Subscribe(context.Context, podpolicy.EventFilter) (<-chan *agentv1.ExecEvent, func()) {
	b.calls.Add(1)
	ch := make(chan *agentv1.ExecEvent, 16)
	b.subscribers <- ch
	return ch, func() {}
}

func (b *fakeBackend) snapshot() map[string]fakePod {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]fakePod, len(b.pods))
	for k, v := range b.pods {
		out[k] = v
	}
	return out
}

// testEnv is one running server with its PKI on disk.
type testEnv struct {
	dir      string
	ca       *testpki.CA
	caFile   string // CA bundle the server trusts for clients
	certFile string // server certificate
	keyFile  string
	addr     string
	server   *Server
	backend  *fakeBackend
	reg      *prometheus.Registry
	stop     func() // stops the server and waits for Serve to return
}

func startServer(t *testing.T, mutate func(*Config)) *testEnv {
	t.Helper()
	dir := t.TempDir()
	env := &testEnv{dir: dir, ca: testpki.NewCA(t, "execgate test CA"), backend: newFakeBackend(), reg: prometheus.NewRegistry()}
	env.caFile = env.ca.WriteFile(t, filepath.Join(dir, "client-ca.crt"))
	env.certFile, env.keyFile = env.ca.ServerCert(t).WriteFiles(t, dir, "server")
	cfg := Config{
		NodeName:       testNode,
		CertFile:       env.certFile,
		KeyFile:        env.keyFile,
		ClientCAFile:   env.caFile,
		ReloadInterval: -1, // every handshake: rotation tests must not sleep
	}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := New(cfg, env.backend, zaptest.NewLogger(t), env.reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	env.server = srv
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	env.addr = lis.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	var once sync.Once
	env.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Serve did not return after its context ended")
			}
		})
	}
	t.Cleanup(env.stop)
	return env
}

// client dials the server with a client certificate issued by ca.
func (env *testEnv) client(t *testing.T, kp *testpki.KeyPair) *agentclient.Client {
	t.Helper()
	certFile, keyFile := kp.WriteFiles(t, t.TempDir(), "client")
	c, err := agentclient.Dial(env.addr, agentclient.Config{
		CertFile: certFile, KeyFile: keyFile,
		CAFile:     env.ca.WriteFile(t, filepath.Join(t.TempDir(), "agents-ca.crt")),
		ServerName: "localhost",
	})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (env *testEnv) goodClient(t *testing.T) *agentclient.Client {
	return env.client(t, env.ca.ClientCert(t, "execgate-webhook"))
}

// counter reads a counter or gauge from the server's registry; 0 if absent.
func (env *testEnv) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := env.reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return 0
}

// eventually polls cond: the server counts a refused handshake after the
// client has already seen the failure.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func applyReq(podUID string, generation uint64) *agentv1.ApplyPodPolicyRequest {
	r := validApply()
	r.Pod.Uid = podUID
	r.Policy.Generation = generation
	return r
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestGoodClientAppliesRemovesAndReadsStatus(t *testing.T) {
	env := startServer(t, nil)
	c := env.goodClient(t)
	ctx := callCtx(t)

	resp, err := c.ApplyPodPolicy(ctx, applyReq("pod-1", 3))
	if err != nil {
		t.Fatalf("ApplyPodPolicy: %v", err)
	}
	if !resp.GetApplied() || resp.GetLoadedVersion() != 3 {
		t.Errorf("first apply = %v, want applied at version 3", resp)
	}
	resp, err = c.ApplyPodPolicy(ctx, applyReq("pod-1", 2))
	if err != nil {
		t.Fatalf("ApplyPodPolicy (older): %v", err)
	}
	if resp.GetApplied() || resp.GetLoadedVersion() != 3 {
		t.Errorf("older apply = %v, want a no-op reporting version 3", resp)
	}
	st, err := c.GetStatus(ctx, &agentv1.GetStatusRequest{})
	if err != nil {
		t.Fatalf("GetStatus: %v", err)
	}
	if len(st.GetPods()) != 1 || st.GetPods()[0].GetPolicy() != "shop/cart" {
		t.Errorf("status pods = %v", st.GetPods())
	}
	_, err = c.RemovePolicy(ctx, &agentv1.RemovePolicyRequest{Namespace: "shop", Name: "cart"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("RemovePolicy while bound: %v, want FailedPrecondition", err)
	}
	rm, err := c.RemovePod(ctx, &agentv1.RemovePodRequest{PodUid: "pod-1"})
	if err != nil || !rm.GetRemoved() {
		t.Fatalf("RemovePod = %v, %v", rm, err)
	}
	rm, err = c.RemovePod(ctx, &agentv1.RemovePodRequest{PodUid: "pod-1"})
	if err != nil || rm.GetRemoved() {
		t.Errorf("second RemovePod = %v, %v, want removed=false", rm, err)
	}

	if got := env.metric(t, MetricRequests, map[string]string{"method": "ApplyPodPolicy", "code": "OK"}); got != 2 {
		t.Errorf("%s{ApplyPodPolicy,OK} = %v, want 2", MetricRequests, got)
	}
	if got := env.metric(t, MetricRequests, map[string]string{"method": "RemovePolicy", "code": "FailedPrecondition"}); got != 1 {
		t.Errorf("%s{RemovePolicy,FailedPrecondition} = %v, want 1", MetricRequests, got)
	}
	if got := env.metric(t, MetricApplyDuration, map[string]string{"code": "OK"}); got != 2 {
		t.Errorf("%s sample count = %v, want 2", MetricApplyDuration, got)
	}
	if got := env.metric(t, MetricCertNotAfter, nil); got < float64(time.Now().Unix()) {
		t.Errorf("%s = %v, want the serving cert's expiry", MetricCertNotAfter, got)
	}
}

func TestRefusedClients(t *testing.T) {
	env := startServer(t, func(c *Config) {
		c.AllowedClientIdentities = []string{"execgate-webhook", "spiffe://cluster.local/ns/execgate/sa/webhook"}
	})
	otherCA := testpki.NewCA(t, "some other CA")
	withCert := func(kp *testpki.KeyPair) *grpc.ClientConn {
		cfg := &tls.Config{RootCAs: env.ca.Pool(), ServerName: "localhost", MinVersion: tls.VersionTLS12}
		if kp != nil {
			// Always present the certificate: with Certificates, Go's client
			// would silently send none when the server asks for other CAs.
			cert := kp.TLSCertificate(t)
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
		}
		conn, err := grpc.NewClient(env.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatalf("NewClient: %v", err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
	tests := []struct {
		name   string
		cert   *testpki.KeyPair
		reason string
	}{
		{"no client certificate", nil, "no_client_cert"},
		{"certificate from another CA", otherCA.ClientCert(t, "execgate-webhook"), "unknown_authority"},
		{"expired certificate", env.ca.Issue(t, testpki.CertOptions{
			CommonName: "execgate-webhook", Client: true,
			NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour),
		}), "expired"},
		{"server-only certificate", env.ca.Issue(t, testpki.CertOptions{CommonName: "execgate-webhook", Server: true}), "bad_certificate"},
		{"identity not allowed", env.ca.ClientCert(t, "someone-else"), "identity_refused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := env.metric(t, MetricHandshakeFailures, map[string]string{"reason": tc.reason})
			calls := env.backend.calls.Load()
			c := agentv1.NewAgentServiceClient(withCert(tc.cert))
			_, err := c.ApplyPodPolicy(callCtx(t), applyReq("pod-1", 1))
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("ApplyPodPolicy = %v, want Unavailable (refused handshake)", err)
			}
			if env.backend.calls.Load() != calls {
				t.Errorf("backend was called for a refused client")
			}
			eventually(t, MetricHandshakeFailures+`{reason="`+tc.reason+`"}`, func() bool {
				return env.metric(t, MetricHandshakeFailures, map[string]string{"reason": tc.reason}) > before
			})
		})
	}

	t.Run("allowed by URI SAN", func(t *testing.T) {
		kp := env.ca.Issue(t, testpki.CertOptions{CommonName: "not-listed", Client: true, URIs: []*url.URL{mustURL(t, "spiffe://cluster.local/ns/execgate/sa/webhook")}})
		if _, err := env.client(t, kp).GetStatus(callCtx(t), &agentv1.GetStatusRequest{}); err != nil {
			t.Fatalf("GetStatus: %v", err)
		}
	})
	t.Run("allowed by CN", func(t *testing.T) {
		if _, err := env.goodClient(t).GetStatus(callCtx(t), &agentv1.GetStatusRequest{}); err != nil {
			t.Fatalf("GetStatus: %v", err)
		}
	})
}

func TestCertificateRotationWithoutRestart(t *testing.T) {
	env := startServer(t, nil)
	client := env.ca.ClientCert(t, "execgate-webhook")
	servedSerial := func() string {
		t.Helper()
		conn, err := tls.Dial("tcp", env.addr, &tls.Config{
			RootCAs: env.ca.Pool(), ServerName: "localhost", NextProtos: []string{"h2"},
			Certificates: []tls.Certificate{client.TLSCertificate(t)},
		})
		if err != nil {
			t.Fatalf("tls dial: %v", err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}

	first := servedSerial()
	rotated := env.ca.ServerCert(t)
	rotated.WriteFiles(t, env.dir, "server")
	if got := servedSerial(); got != rotated.Cert.SerialNumber.String() || got == first {
		t.Fatalf("after rotation the server serves serial %s, want the new %s (old %s)", got, rotated.Cert.SerialNumber, first)
	}

	// A half-written rotation (cert without its key) keeps the last good pair.
	mismatched := env.ca.ServerCert(t)
	writeFile(t, env.certFile, mismatched.CertPEM)
	if got := servedSerial(); got != rotated.Cert.SerialNumber.String() {
		t.Errorf("with a mismatched key on disk the server serves %s, want the last good %s", got, rotated.Cert.SerialNumber)
	}
	if env.metric(t, MetricTLSReloads, map[string]string{"result": "failure"}) == 0 {
		t.Errorf("failed reload not counted")
	}
	writeFile(t, env.keyFile, mismatched.KeyPEM)
	if got := servedSerial(); got != mismatched.Cert.SerialNumber.String() {
		t.Errorf("after the key arrived the server serves %s, want %s", got, mismatched.Cert.SerialNumber)
	}

	// CA rotation: clients of the new CA get in, clients of the old one no longer do.
	newCA := testpki.NewCA(t, "rotated client CA")
	old := env.goodClient(t)
	newCA.WriteFile(t, env.caFile)
	if _, err := old.GetStatus(callCtx(t), &agentv1.GetStatusRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("client of the retired CA: %v, want Unavailable", err)
	}
	fresh := env.client(t, newCA.ClientCert(t, "execgate-webhook"))
	if _, err := fresh.GetStatus(callCtx(t), &agentv1.GetStatusRequest{}); err != nil {
		t.Errorf("client of the new CA: %v", err)
	}
}

func TestMalformedRequestsNeverReachBackend(t *testing.T) {
	env := startServer(t, nil)
	c := env.goodClient(t)
	tests := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"empty apply", func(ctx context.Context) error {
			_, err := c.ApplyPodPolicy(ctx, &agentv1.ApplyPodPolicyRequest{})
			return err
		}},
		{"relative executable", func(ctx context.Context) error {
			r := validApply()
			r.Policy.RulesByContainer["app"].Executables = append(r.Policy.RulesByContainer["app"].Executables, "sh")
			_, err := c.ApplyPodPolicy(ctx, r)
			return err
		}},
		{"unknown mode", func(ctx context.Context) error {
			r := validApply()
			r.Policy.Mode = 17
			_, err := c.ApplyPodPolicy(ctx, r)
			return err
		}},
		{"bad namespace", func(ctx context.Context) error {
			r := validApply()
			r.Pod.Namespace = "Not_A_Namespace"
			_, err := c.ApplyPodPolicy(ctx, r)
			return err
		}},
		{"remove without uid", func(ctx context.Context) error {
			_, err := c.RemovePod(ctx, &agentv1.RemovePodRequest{})
			return err
		}},
		{"remove policy without name", func(ctx context.Context) error {
			_, err := c.RemovePolicy(ctx, &agentv1.RemovePolicyRequest{Namespace: "shop"})
			return err
		}},
		{"watch with bad action", func(ctx context.Context) error {
			s, err := c.WatchEvents(ctx, &agentv1.WatchEventsRequest{Filter: &agentv1.EventFilter{Actions: []agentv1.Action{99}}})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(callCtx(t)); status.Code(err) != codes.InvalidArgument {
				t.Fatalf("error = %v, want InvalidArgument", err)
			}
		})
	}
	if n := env.backend.calls.Load(); n != 0 {
		t.Errorf("backend called %d times for malformed requests", n)
	}
}

func TestWrongNodeAndBackendErrors(t *testing.T) {
	env := startServer(t, nil)
	c := env.goodClient(t)

	r := validApply()
	r.Pod.NodeName = "node-b"
	if _, err := c.ApplyPodPolicy(callCtx(t), r); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("pod of another node: %v, want FailedPrecondition", err)
	}
	if env.backend.calls.Load() != 0 {
		t.Errorf("backend called for a pod of another node")
	}

	tests := []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("put policy: %w", podpolicy.ErrLimitExceeded), codes.ResourceExhausted},
		{fmt.Errorf("delete policy: %w", podpolicy.ErrConflict), codes.FailedPrecondition},
		{fmt.Errorf("enforcer: %w", podpolicy.ErrNotReady), codes.Unavailable},
		{errors.New("map update: EINVAL"), codes.Internal},
		{fmt.Errorf("wrapped: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{status.Error(codes.Aborted, "backend chose"), codes.Aborted},
	}
	for _, tc := range tests {
		t.Run(tc.want.String(), func(t *testing.T) {
			env.backend.mu.Lock()
			env.backend.err = tc.err
			env.backend.mu.Unlock()
			_, err := c.ApplyPodPolicy(callCtx(t), validApply())
			if status.Code(err) != tc.want {
				t.Errorf("ApplyPodPolicy with backend error %v: %v, want %s", tc.err, err, tc.want)
			}
		})
	}
}

func TestWatchEventsFiltersAndEndsOnShutdown(t *testing.T) {
	env := startServer(t, nil)
	c := env.goodClient(t)
	ctx := callCtx(t)
	stream, err := c.WatchEvents(ctx, &agentv1.WatchEventsRequest{Filter: &agentv1.EventFilter{
		Namespace: "shop", Actions: []agentv1.Action{agentv1.Action_ACTION_DENIED},
	}})
	if err != nil {
		t.Fatalf("WatchEvents: %v", err)
	}
	var events chan *agentv1.ExecEvent
	select {
	case events = <-env.backend.subscribers:
	case <-time.After(5 * time.Second):
		t.Fatal("backend never subscribed")
	}
	want := &agentv1.ExecEvent{Namespace: "shop", Pod: "cart-1", Action: agentv1.Action_ACTION_DENIED, Executable: "/bin/nc", Count: 1}
	events <- &agentv1.ExecEvent{Namespace: "other", Action: agentv1.Action_ACTION_DENIED, Executable: "/x"}
	events <- &agentv1.ExecEvent{Namespace: "shop", Action: agentv1.Action_ACTION_REPORTED, Executable: "/y"}
	events <- want
	got, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	if !proto.Equal(got, want) {
		t.Errorf("received %v, want %v (filtered events leaked)", got, want)
	}
	if n := env.metric(t, MetricEventWatchers, nil); n != 1 {
		t.Errorf("%s = %v, want 1", MetricEventWatchers, n)
	}

	start := time.Now()
	env.stop()
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("Recv after shutdown: %v, want Unavailable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown with an open stream took %v", d)
	}
}

func TestConcurrentAppliesAndRemoves(t *testing.T) {
	env := startServer(t, nil)
	clients := []*agentclient.Client{env.goodClient(t), env.goodClient(t), env.goodClient(t), env.goodClient(t)}
	ctx := callCtx(t)

	const (
		keptPods    = 80  // applied 10 times each, generations 1..10 in random order
		removedPods = 200 // applied before, removed during the storm
		generations = 10
	)
	for i := range removedPods {
		if _, err := clients[0].ApplyPodPolicy(ctx, applyReq(fmt.Sprintf("gone-%d", i), 1)); err != nil {
			t.Fatalf("seed apply: %v", err)
		}
	}
	type op struct {
		pod        string
		generation uint64 // 0 = remove
	}
	var ops []op
	for p := range keptPods {
		for g := 1; g <= generations; g++ {
			ops = append(ops, op{fmt.Sprintf("kept-%d", p), uint64(g)})
		}
	}
	for p := range removedPods {
		ops = append(ops, op{pod: fmt.Sprintf("gone-%d", p)})
	}
	rand.Shuffle(len(ops), func(i, j int) { ops[i], ops[j] = ops[j], ops[i] })
	if len(ops) != 1000 {
		t.Fatalf("%d ops, want 1000", len(ops))
	}

	var (
		wg      sync.WaitGroup
		applied atomic.Int64
		start   = make(chan struct{})
		errs    = make(chan error, len(ops))
	)
	for i, o := range ops {
		wg.Go(func() {
			c := clients[i%len(clients)]
			<-start
			if o.generation == 0 {
				resp, err := c.RemovePod(ctx, &agentv1.RemovePodRequest{PodUid: o.pod})
				if err != nil || !resp.GetRemoved() {
					errs <- fmt.Errorf("remove %s: %v, %v", o.pod, resp, err)
				}
				return
			}
			resp, err := c.ApplyPodPolicy(ctx, applyReq(o.pod, o.generation))
			switch {
			case err != nil:
				errs <- fmt.Errorf("apply %s@%d: %w", o.pod, o.generation, err)
			case resp.GetLoadedVersion() < o.generation:
				errs <- fmt.Errorf("apply %s@%d: loaded version %d went backwards", o.pod, o.generation, resp.GetLoadedVersion())
			case resp.GetApplied():
				applied.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	state := env.backend.snapshot()
	if len(state) != keptPods {
		t.Errorf("%d pods loaded, want %d", len(state), keptPods)
	}
	for p := range keptPods {
		uid := fmt.Sprintf("kept-%d", p)
		if got := state[uid]; got.version != generations || got.policy != "shop/cart" {
			t.Errorf("pod %s = %+v, want shop/cart at version %d", uid, got, generations)
		}
	}
	if n := applied.Load(); n < keptPods || n > keptPods*generations {
		t.Errorf("%d applies reported applied=true, want between %d and %d", n, keptPods, keptPods*generations)
	}
	total := env.metric(t, MetricRequests, map[string]string{"method": "ApplyPodPolicy", "code": "OK"}) +
		env.metric(t, MetricRequests, map[string]string{"method": "RemovePod", "code": "OK"})
	if total != 1000+removedPods {
		t.Errorf("requests counted = %v, want %d", total, 1000+removedPods)
	}
}

func TestInsecureModeForTests(t *testing.T) {
	env := startServer(t, func(c *Config) { c.Insecure = true; c.CertFile, c.KeyFile, c.ClientCAFile = "", "", "" })
	conn, err := grpc.NewClient(env.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := agentv1.NewAgentServiceClient(conn).ApplyPodPolicy(callCtx(t), validApply()); err != nil {
		t.Fatalf("plaintext apply: %v", err)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "ca")
	caFile := ca.WriteFile(t, filepath.Join(dir, "ca.crt"))
	certFile, keyFile := ca.ServerCert(t).WriteFiles(t, dir, "server")
	otherCert, _ := ca.ServerCert(t).WriteFiles(t, dir, "other")
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no node name", Config{CertFile: certFile, KeyFile: keyFile, ClientCAFile: caFile}},
		{"no CA", Config{NodeName: testNode, CertFile: certFile, KeyFile: keyFile}},
		{"missing cert file", Config{NodeName: testNode, CertFile: filepath.Join(dir, "nope"), KeyFile: keyFile, ClientCAFile: caFile}},
		{"key of another cert", Config{NodeName: testNode, CertFile: otherCert, KeyFile: keyFile, ClientCAFile: caFile}},
		{"CA file is not PEM", Config{NodeName: testNode, CertFile: certFile, KeyFile: keyFile, ClientCAFile: writeFile(t, filepath.Join(dir, "junk"), []byte("junk"))}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg, newFakeBackend(), nil, nil); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
}

func TestMatchIdentity(t *testing.T) {
	leaf := &x509.Certificate{DNSNames: []string{"webhook.execgate.svc"}, URIs: []*url.URL{mustURL(t, "spiffe://td/sa/webhook")}}
	leaf.Subject.CommonName = "cn-name"
	for name, want := range map[string]bool{"cn-name": true, "webhook.execgate.svc": true, "spiffe://td/sa/webhook": true, "other": false, "": false} {
		if got := matchIdentity(leaf, []string{name}) != ""; got != want {
			t.Errorf("matchIdentity(%q) = %v, want %v", name, got, want)
		}
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatalf("parse %q: %v", s, err)
	}
	return u
}

// writeFile overwrites path in place (not atomically), like a careless rotation.
func writeFile(t *testing.T, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return path
}
