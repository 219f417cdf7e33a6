package agent

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/execgate/execgate/bpf"
	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/internal/testpki"
	"github.com/execgate/execgate/nodeagent/agentclient"
	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/enforcer"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	"github.com/execgate/execgate/nodeagent/server"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// TestBPFApplyOrder: whether the push or the cgroups come first, the
// container ends up enforced with its own rules, and RemovePod leaves the
// kernel maps empty.
func TestBPFApplyOrder(t *testing.T) {
	for _, tc := range []struct {
		name         string
		driver       cgroups.Driver
		qos          cgroups.QoS
		cgroupsFirst bool
	}{
		{"push first systemd burstable", cgroups.DriverSystemd, cgroups.QoSBurstable, false},
		{"cgroups first systemd guaranteed", cgroups.DriverSystemd, cgroups.QoSGuaranteed, true},
		{"push first cgroupfs besteffort", cgroups.DriverCgroupfs, cgroups.QoSBestEffort, false},
		{"cgroups first cgroupfs burstable", cgroups.DriverCgroupfs, cgroups.QoSBurstable, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newTestNodeEnv(t, tc.driver)
			e := n.newEnforcer(t)
			a := n.startAgent(t, e, nil)
			ctx := context.Background()
			uid, cid := podUID(1), containerID(1)
			pp := podPolicy(uid, tc.qos, protectApp(1), podpolicy.Container{Name: "app", ContainerID: "containerd://" + cid})

			var pod, ctr *testenv.Cgroup
			if tc.cgroupsFirst {
				pod, ctr = n.mkPod(t, uid, tc.qos, cid)
			}
			applied, loaded, err := a.ApplyPodPolicy(ctx, pp)
			if err != nil || !applied || loaded != 1 {
				t.Fatalf("apply: applied %v loaded %d err %v", applied, loaded, err)
			}
			if !tc.cgroupsFirst {
				if st := podStateOf(t, a.Agent, uid); st != agentv1.PodState_POD_STATE_PENDING {
					t.Fatalf("pod state before its cgroup exists: %v", st)
				}
				pod, ctr = n.mkPod(t, uid, tc.qos, cid)
			}
			waitFor(t, "container cgroup bound", func() bool {
				b, ok := bindingOf(e, ctr.ID)
				return ok && b.Container == "app"
			})
			if b, ok := bindingOf(e, pod.ID); !ok || b.Container != enforcer.UnionContainer || b.Policy != "ns/web" {
				t.Fatalf("pod cgroup binding: %+v %v", b, ok)
			}
			if st := podStateOf(t, a.Agent, uid); st != agentv1.PodState_POD_STATE_ENFORCED {
				t.Fatalf("pod state: %v", st)
			}
			assertProtected(t, e, ctr)

			// Same version again: a no-op.
			if applied, loaded, err := a.ApplyPodPolicy(ctx, pp); err != nil || applied || loaded != 1 {
				t.Fatalf("re-apply: applied %v loaded %d err %v", applied, loaded, err)
			}
			if removed, err := a.RemovePod(ctx, uid); err != nil || !removed {
				t.Fatalf("remove: %v %v", removed, err)
			}
			assertNoEntries(t, e)
			assertUnrestricted(t, ctr)
			if removed, err := a.RemovePod(ctx, uid); err != nil || removed {
				t.Fatalf("second remove: %v %v", removed, err)
			}
		})
	}
}

// mkPod creates a pod cgroup and one container cgroup in it.
func (n *testNodeEnv) mkPod(t *testing.T, uid string, qos cgroups.QoS, cid string) (pod, ctr *testenv.Cgroup) {
	t.Helper()
	return n.mkPodCgroup(t, uid, qos), n.mkContainerCgroup(t, uid, qos, cid)
}

func podStateOf(t *testing.T, a *Agent, uid string) agentv1.PodState {
	t.Helper()
	st, err := a.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Pods {
		if p.Uid == uid {
			return p.State
		}
	}
	return agentv1.PodState_POD_STATE_UNSPECIFIED
}

// TestBPFUnnamedContainerCoveredByPod: a container cgroup whose name the
// agent does not know yet runs under the pod's union binding; once the name
// is learnt it gets its own rules.
func TestBPFUnnamedContainerCoveredByPod(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	e := n.newEnforcer(t)
	a := n.startAgent(t, e, nil)
	uid, cid := podUID(2), containerID(2)
	pol := protectApp(1)
	pol.RulesByContainer["sidecar"] = []string{"/usr/bin/true"}
	if _, _, err := a.ApplyPodPolicy(context.Background(), podPolicy(uid, cgroups.QoSBurstable, pol)); err != nil {
		t.Fatal(err)
	}
	_, ctr := n.mkPod(t, uid, cgroups.QoSBurstable, cid)
	waitFor(t, "pod enforced", func() bool { return podStateOf(t, a.Agent, uid) == agentv1.PodState_POD_STATE_ENFORCED })
	assertProtected(t, e, ctr) // union of app and sidecar allows echo
	if err := a.LearnContainers(uid, []podpolicy.Container{{Name: "sidecar", ContainerID: "containerd://" + cid}}); err != nil {
		t.Fatal(err)
	}
	if b, ok := bindingOf(e, ctr.ID); !ok || b.Container != "sidecar" {
		t.Fatalf("container binding after learning its name: %+v %v", b, ok)
	}
	out, err := ctr.Run("/usr/bin/echo", "x")
	assertDenied(t, e.AttachMode(), out, err)
}

// TestBPFRestartKeepsEnforcing: a new agent on the same pins adopts the
// running pod: it stays enforced, shows as ENFORCED, and can be removed.
func TestBPFRestartKeepsEnforcing(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	e1 := n.newEnforcer(t)
	a1 := n.startAgent(t, e1, nil)
	uid, cid := podUID(3), containerID(3)
	_, ctr := n.mkPod(t, uid, cgroups.QoSGuaranteed, cid)
	pp := podPolicy(uid, cgroups.QoSGuaranteed, protectApp(4), podpolicy.Container{Name: "app", ContainerID: "containerd://" + cid})
	if _, _, err := a1.ApplyPodPolicy(context.Background(), pp); err != nil {
		t.Fatal(err)
	}
	a1.stop()
	e1.Close()
	assertProtectedAs(t, e1.AttachMode().Unattended(), ctr) // nobody runs: the pins enforce

	e2 := n.newEnforcer(t)
	a2 := n.startAgent(t, e2, nil)
	assertProtected(t, e2, ctr)
	if st := podStateOf(t, a2.Agent, uid); st != agentv1.PodState_POD_STATE_ENFORCED {
		t.Fatalf("adopted pod state: %v", st)
	}
	if b, ok := bindingOf(e2, ctr.ID); !ok || b.Container != "app" {
		t.Fatalf("adopted container binding: %+v %v", b, ok)
	}
	// A re-push of the same version after the restart is a no-op.
	if applied, loaded, err := a2.ApplyPodPolicy(context.Background(), pp); err != nil || applied || loaded != 4 {
		t.Fatalf("re-push after restart: applied %v loaded %d err %v", applied, loaded, err)
	}
	if removed, err := a2.RemovePod(context.Background(), uid); err != nil || !removed {
		t.Fatalf("remove adopted pod: %v %v", removed, err)
	}
	assertNoEntries(t, e2)
}

// TestBPFSweepAndCgroupRemoval: removing the pod cgroup unbinds it; the
// sweep drops dead bindings, expired pending pods and unused policies.
func TestBPFSweepAndCgroupRemoval(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverCgroupfs)
	e := n.newEnforcer(t)
	a := n.startAgent(t, e, func(o *Options) { o.PendingTTL = 50 * time.Millisecond })
	ctx := context.Background()
	uid, cid := podUID(4), containerID(4)
	pod, ctr := n.mkPod(t, uid, cgroups.QoSBurstable, cid)
	if _, _, err := a.ApplyPodPolicy(ctx, podPolicy(uid, cgroups.QoSBurstable, protectApp(1))); err != nil {
		t.Fatal(err)
	}
	if _, ok := bindingOf(e, pod.ID); !ok {
		t.Fatal("existing pod cgroup not bound at apply")
	}
	// The watcher takes interest asynchronously; a cgroup removed before
	// that is only found by the sweep (tested below).
	waitFor(t, "watcher tracks the pod", func() bool { return a.watcher.Stats().Pods == 1 })
	if err := os.Remove(ctr.Path); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(pod.Path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod cgroup unbound", func() bool { return len(e.Bindings()) == 0 })
	if st := podStateOf(t, a.Agent, uid); st != agentv1.PodState_POD_STATE_PENDING {
		t.Fatalf("pod state after its cgroup went: %v", st)
	}
	time.Sleep(60 * time.Millisecond)
	if removed := a.Sweep(); removed != 1 { // the expired pod (its policy goes with it)
		t.Fatalf("sweep removed %d things", removed)
	}
	assertNoEntries(t, e)

	// A binding left behind for a cgroup that no longer exists.
	if _, err := e.PutPolicy(enforcer.PolicyVersion{Key: "ns/orphan", Version: 1, Mode: enforcer.ModeProtect}); err != nil {
		t.Fatal(err)
	}
	dead := mkCgroup(t, filepath.Join(n.layout.Root(), "dead"))
	if err := e.Bind(dead.ID, "ns/orphan", ""); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(dead.Path); err != nil {
		t.Fatal(err)
	}
	if removed := a.Sweep(); removed != 2 {
		t.Fatalf("sweep removed %d things, want the dead binding and the orphan policy", removed)
	}
	assertNoEntries(t, e)
}

// TestBPFCreateDeleteCycles: many pods come and go; nothing leaks.
func TestBPFCreateDeleteCycles(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	e := n.newEnforcer(t)
	a := n.startAgent(t, e, nil)
	ctx := context.Background()
	const cycles = 1000
	start := time.Now()
	for i := range cycles {
		uid, cid := podUID(1000+i), containerID(1000+i)
		cgroupsFirst := i%2 == 0
		var pod, ctr *testenv.Cgroup
		if cgroupsFirst {
			pod, ctr = n.mkPod(t, uid, cgroups.QoSBurstable, cid)
		}
		pp := podPolicy(uid, cgroups.QoSBurstable, protectApp(uint64(1+i%3)), podpolicy.Container{Name: "app", ContainerID: "containerd://" + cid})
		if _, _, err := a.ApplyPodPolicy(ctx, pp); err != nil {
			t.Fatalf("cycle %d: apply: %v", i, err)
		}
		if !cgroupsFirst {
			pod, ctr = n.mkPod(t, uid, cgroups.QoSBurstable, cid)
		}
		if i%100 == 0 {
			waitFor(t, "container bound", func() bool { _, ok := bindingOf(e, ctr.ID); return ok })
		}
		if _, err := a.RemovePod(ctx, uid); err != nil {
			t.Fatalf("cycle %d: remove: %v", i, err)
		}
		if err := os.Remove(ctr.Path); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(pod.Path); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d cycles in %v", cycles, time.Since(start))
	// Late watcher events for removed pods must not bind anything.
	time.Sleep(200 * time.Millisecond)
	assertNoEntries(t, e)
	if st, _ := a.Status(ctx); len(st.Pods) != 0 {
		t.Fatalf("pods left: %d", len(st.Pods))
	}
}

// TestBPFGRPC drives the agent through the real server over mutual TLS:
// a malformed request changes nothing, a valid one enforces, events carry
// the pod's names.
func TestBPFGRPC(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	e := n.newEnforcer(t)
	a := n.startAgent(t, e, nil)
	client := serveOverMTLS(t, a)

	uid, cid := podUID(5), containerID(5)
	_, ctr := n.mkPod(t, uid, cgroups.QoSBurstable, cid)
	valid := func() *agentv1.ApplyPodPolicyRequest {
		return &agentv1.ApplyPodPolicyRequest{
			Pod: &agentv1.Pod{Uid: uid, Namespace: "ns", Name: "web-1", NodeName: testNode, QosClass: agentv1.QOSClass_QOS_CLASS_BURSTABLE,
				Containers: []*agentv1.Container{{Name: "app", ContainerId: "containerd://" + cid}}},
			Policy: &agentv1.Policy{Uid: "policy-uid-1", Namespace: "ns", Name: "web", Generation: 1, Mode: agentv1.Mode_MODE_PROTECT,
				RulesByContainer: map[string]*agentv1.Rules{"app": {Executables: []string{"/usr/bin/echo", "/usr/bin/true"}}}},
		}
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	for name, mutate := range map[string]func(*agentv1.ApplyPodPolicyRequest){
		"relative path": func(r *agentv1.ApplyPodPolicyRequest) {
			r.Policy.RulesByContainer["app"].Executables = []string{"usr/bin/id"}
		},
		"no pod uid": func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.Uid = "" },
		"no mode":    func(r *agentv1.ApplyPodPolicyRequest) { r.Policy.Mode = agentv1.Mode_MODE_UNSPECIFIED },
		"other node": func(r *agentv1.ApplyPodPolicyRequest) { r.Pod.NodeName = "node-b" },
	} {
		req := valid()
		mutate(req)
		if _, err := client.ApplyPodPolicy(rctx, req); status.Code(err) != codes.InvalidArgument && status.Code(err) != codes.FailedPrecondition {
			t.Errorf("%s: err %v, want InvalidArgument or FailedPrecondition", name, err)
		}
	}
	assertNoEntries(t, e)
	if st, err := client.GetStatus(rctx, &agentv1.GetStatusRequest{}); err != nil || len(st.Pods) != 0 {
		t.Fatalf("status after malformed requests: %v %v", st, err)
	}

	stream, err := client.WatchEvents(rctx, &agentv1.WatchEventsRequest{Filter: &agentv1.EventFilter{Namespace: "ns"}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.ApplyPodPolicy(rctx, valid())
	if err != nil || !resp.Applied || resp.LoadedVersion != 1 {
		t.Fatalf("apply: %v %v", resp, err)
	}
	assertProtected(t, e, ctr)
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("event stream: %v", err)
		}
		if ev.Executable != "/usr/bin/id" {
			continue
		}
		if ev.Pod != "web-1" || ev.Container != "app" || ev.Policy != "ns/web" || ev.Action != agentv1.Action_ACTION_DENIED || ev.Node != testNode {
			t.Fatalf("event: %v", ev)
		}
		break
	}
	st, err := client.GetStatus(rctx, &agentv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Pods) != 1 || st.Pods[0].State != agentv1.PodState_POD_STATE_ENFORCED || st.Pods[0].CgroupsBound != 2 ||
		len(st.Policies) != 1 || st.AttachMode != string(e.AttachMode()) || st.KernelVersion == "" || len(st.Maps) == 0 {
		t.Fatalf("status: %v", st)
	}
	if _, err := client.RemovePolicy(rctx, &agentv1.RemovePolicyRequest{Namespace: "ns", Name: "web"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("remove policy in use: %v", err)
	}
	if r, err := client.RemovePod(rctx, &agentv1.RemovePodRequest{PodUid: uid}); err != nil || !r.Removed {
		t.Fatalf("remove pod: %v %v", r, err)
	}
	assertNoEntries(t, e)
}

// serveOverMTLS serves a's gRPC API over mutual TLS on loopback, as the agent
// binary does, and returns a client with the controller's identity.
func serveOverMTLS(t *testing.T, a *runningAgent) *agentclient.Client {
	t.Helper()
	dir := t.TempDir()
	ca := testpki.NewCA(t, "execgate test CA")
	caFile := ca.WriteFile(t, filepath.Join(dir, "ca.crt"))
	srvCert, srvKey := ca.ServerCert(t).WriteFiles(t, dir, "server")
	cliCert, cliKey := ca.ClientCert(t, "execgate-controller").WriteFiles(t, dir, "client")
	srv, err := server.New(server.Config{NodeName: testNode, CertFile: srvCert, KeyFile: srvKey, ClientCAFile: caFile,
		AllowedClientIdentities: []string{"execgate-controller"}}, a, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); <-served })
	client, err := agentclient.Dial(lis.Addr().String(), agentclient.Config{CertFile: cliCert, KeyFile: cliKey, CAFile: caFile, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

// TestBPFGRPCConcurrentAppliesAndRemoves: 1,000 applies and removes from 16
// goroutines over mTLS into the real agent and kernel maps. Each pod's
// operations are ordered (one goroutine owns it), pods race each other; the
// end state must be exactly the pods whose last operation was an apply, the
// policies they use, and maps whose kernel contents match what GetStatus says.
func TestBPFGRPCConcurrentAppliesAndRemoves(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	e := n.newEnforcer(t)
	a := n.startAgent(t, e, nil)
	client := serveOverMTLS(t, a)
	const pods, opsPerPod, workers, policies = 100, 10, 16, 10
	uids := make([]string, pods)
	for i := range pods {
		uids[i] = podUID(1000 + i)
		if i%2 == 0 { // half the pods have their cgroup already: their applies bind
			n.mkPodCgroup(t, uids[i], cgroups.QoSBurstable)
		}
	}
	apply := func(ctx context.Context, i, op int) error {
		_, err := client.ApplyPodPolicy(ctx, &agentv1.ApplyPodPolicyRequest{
			Pod: &agentv1.Pod{Uid: uids[i], Namespace: "ns", Name: fmt.Sprintf("pod-%d", i), NodeName: testNode,
				QosClass: agentv1.QOSClass_QOS_CLASS_BURSTABLE, Containers: []*agentv1.Container{{Name: "app"}}},
			Policy: &agentv1.Policy{Uid: fmt.Sprintf("policy-uid-%d", i%policies), Namespace: "ns", Name: fmt.Sprintf("web-%d", i%policies),
				Generation: 1, Mode: agentv1.Mode_MODE_PROTECT,
				RulesByContainer: map[string]*agentv1.Rules{"app": {Executables: []string{"/usr/bin/true", fmt.Sprintf("/opt/web-%d/bin/app", i%policies)}}}},
		})
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, pods*(opsPerPod+1))
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < pods; i += workers {
				// Apply, remove, apply, ...: even pods end applied (one op more),
				// odd ones removed. 50 x 11 + 50 x 10 = 1,050 operations.
				ops := opsPerPod
				if i%2 == 0 {
					ops++
				}
				for op := range ops {
					var err error
					if op%2 == 0 {
						err = apply(ctx, i, op)
					} else {
						_, err = client.RemovePod(ctx, &agentv1.RemovePodRequest{PodUid: uids[i]})
					}
					if err != nil {
						errs <- fmt.Errorf("pod %d op %d: %w", i, op, err)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st, err := client.GetStatus(ctx, &agentv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	gotPods := map[string]bool{}
	for _, p := range st.Pods {
		gotPods[p.Uid] = true
	}
	wantPolicies := map[string]bool{}
	for i := range pods {
		if want := i%2 == 0; gotPods[uids[i]] != want {
			t.Errorf("pod %d held=%v, want %v", i, gotPods[uids[i]], want)
		}
		if i%2 == 0 {
			wantPolicies[fmt.Sprintf("web-%d", i%policies)] = true
		}
	}
	if len(st.Pods) != pods/2 {
		t.Errorf("agent holds %d pods, want %d", len(st.Pods), pods/2)
	}
	gotPolicies := map[string]bool{}
	for _, p := range st.Policies {
		gotPolicies[p.Name] = true
	}
	if !maps.Equal(gotPolicies, wantPolicies) {
		t.Errorf("policies %v, want %v", gotPolicies, wantPolicies)
	}
	reported := map[string]uint64{}
	for _, m := range st.Maps {
		reported[m.Name] = m.Entries
	}
	for _, m := range []string{bpf.ExecgateMapBindings, bpf.ExecgateMapExactRules, bpf.ExecgateMapPrefixRules, bpf.ExecgateMapMntnsPins} {
		kernel, err := e.CountEntries(m)
		if err != nil {
			t.Fatal(err)
		}
		if uint64(kernel) != reported[m] {
			t.Errorf("map %s: kernel holds %d entries, GetStatus says %d", m, kernel, reported[m])
		}
	}
	// The even pods have cgroups: one pod-level binding each.
	if kernel, _ := e.CountEntries(bpf.ExecgateMapBindings); kernel != pods/2 {
		t.Errorf("bindings: %d, want %d (one per applied pod with a cgroup)", kernel, pods/2)
	}
	for i := 0; i < pods; i += 2 {
		if _, err := client.RemovePod(ctx, &agentv1.RemovePodRequest{PodUid: uids[i]}); err != nil {
			t.Fatal(err)
		}
	}
	assertNoEntries(t, e)
}
