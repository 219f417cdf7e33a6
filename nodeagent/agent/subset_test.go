package agent

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/podpolicy"
)

// TestSubsetPushOfOtherContentReplaces is issue 14's attack 4 at the agent: a first
// push of a shared policy's generation carried only its first pod's container (what the
// controller sent before the fix, and still sends during an upgrade); the second pod's
// push of the same generation with the whole policy was a no-op, and its worker
// container was denied its own allowlisted program. Now the agent addresses a version
// by its content digest: the whole content replaces the part atomically, the swap is
// counted, and the same content again is a no-op.
func TestSubsetPushOfOtherContentReplaces(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	e := n.newEnforcer(t)
	reg := prometheus.NewRegistry()
	a := n.startAgent(t, e, func(o *Options) { o.Registry = reg })
	ctx := context.Background()
	whole := podpolicy.Policy{UID: "shared-uid", Namespace: "ns", Name: "shared", Version: 2, Mode: podpolicy.ModeProtect,
		RulesByContainer: map[string][]string{"web": {"/usr/bin/true"}, "worker": {"/usr/bin/echo"}, podpolicy.AnyContainer: {"/usr/bin/env"}}}
	part := whole
	part.RulesByContainer = map[string][]string{"web": whole.RulesByContainer["web"]}

	webUID, webCID := podUID(60), containerID(60)
	n.mkPod(t, webUID, cgroups.QoSBurstable, webCID)
	if _, _, err := a.ApplyPodPolicy(ctx, podPolicy(webUID, cgroups.QoSBurstable, part, podpolicy.Container{Name: "web", ContainerID: "containerd://" + webCID})); err != nil {
		t.Fatal(err)
	}
	workerUID, workerCID := podUID(61), containerID(61)
	_, worker := n.mkPod(t, workerUID, cgroups.QoSBurstable, workerCID)
	pp := podPolicy(workerUID, cgroups.QoSBurstable, whole, podpolicy.Container{Name: "worker", ContainerID: "containerd://" + workerCID})
	if applied, _, err := a.ApplyPodPolicy(ctx, pp); err != nil || !applied {
		t.Fatalf("the whole policy for the second pod: applied %v, err %v", applied, err)
	}
	if out, err := worker.Run("/usr/bin/echo", "hello"); err != nil || out != "hello\n" {
		t.Errorf("worker's own /usr/bin/echo: %q, %v", out, err)
	}
	out, err := worker.Run("/usr/bin/id")
	assertDenied(t, e.AttachMode(), out, err)

	replaced := func() float64 {
		return counterValue(t, reg, "execgate_agent_policy_content_replaced_total", map[string]string{"namespace": "ns", "policy": "ns/shared"})
	}
	if got := replaced(); got != 1 {
		t.Errorf("execgate_agent_policy_content_replaced_total = %v, want 1", got)
	}
	if applied, _, err := a.ApplyPodPolicy(ctx, pp); err != nil || applied {
		t.Errorf("the same content again: applied %v, err %v; want a no-op", applied, err)
	}
	if got := replaced(); got != 1 {
		t.Errorf("after a repeated push the counter is %v, want still 1", got)
	}
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Policies) != 1 || st.Policies[0].Digest != whole.Digest() {
		t.Errorf("status policies %v, want one with digest %s", st.Policies, whole.Digest())
	}
}
