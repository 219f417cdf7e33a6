package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/execgate/execgate/nodeagent/cgroups"
	"github.com/execgate/execgate/nodeagent/nri"
	"github.com/execgate/execgate/nodeagent/podpolicy"
)

// twoContainers: "a" may run id, "b" may not; the union of the pod may.
func twoContainers() podpolicy.Policy {
	return podpolicy.Policy{UID: "policy-uid-2", Namespace: "ns", Name: "two", Version: 1, Mode: podpolicy.ModeProtect,
		RulesByContainer: map[string][]string{"a": {"/usr/bin/echo", "/usr/bin/id"}, "b": {"/usr/bin/echo"}}}
}

// TestNRIBindsContainerBeforeStart: the union window. Before the kubelet
// reports a container, its cgroup is covered by the pod's union binding, so
// container b could run what only a may. The runtime's StartContainer (NRI)
// binds b with b's own rules before b's first exec, even when the cgroup
// watcher has not reported b's cgroup yet.
func TestNRIBindsContainerBeforeStart(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	e := n.newEnforcer(t)
	a := n.startAgent(t, e, nil)
	uid := podUID(0x71)
	n.mkPodCgroup(t, uid, cgroups.QoSBurstable)
	if _, _, err := a.ApplyPodPolicy(context.Background(), podPolicy(uid, cgroups.QoSBurstable, twoContainers())); err != nil {
		t.Fatal(err)
	}
	b := n.mkContainerCgroup(t, uid, cgroups.QoSBurstable, containerID(0x71b))
	waitFor(t, "watcher tracks b's cgroup", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		_, ok := a.pods[uid].containers[containerID(0x71b)]
		return ok
	})
	// The window, as the kernel has it before any name is known.
	if _, err := b.Run("/usr/bin/id"); err != nil {
		t.Fatalf("the union binding should cover b before its name is known (the window this test closes): %v", err)
	}
	pod := nri.Pod{UID: uid, Namespace: "ns", Name: "two", Policy: "two"}
	if err := a.ContainerStarting(context.Background(), pod, containerID(0x71b), "b"); err != nil {
		t.Fatal(err)
	}
	out, err := b.Run("/usr/bin/id")
	assertDenied(t, e.AttachMode(), out, err)

	// A cgroup the watcher has not reported yet is looked up at StartContainer.
	ca := n.mkContainerCgroup(t, uid, cgroups.QoSBurstable, containerID(0x71a))
	if err := a.ContainerStarting(context.Background(), pod, containerID(0x71a), "a"); err != nil {
		t.Fatal(err)
	}
	if out, err := ca.Run("/usr/bin/id", "-u"); err != nil || strings.TrimSpace(out) != "0" {
		t.Fatalf("a may run id: %q, %v", out, err)
	}
	a.mu.Lock()
	owner := a.owners[ca.ID]
	a.mu.Unlock()
	if owner.container != "a" {
		t.Fatalf("a's cgroup is owned by %+v, want container a", owner)
	}
}

// TestNRIWaitsForTheLabelledPodsPolicy: a container of a pod labelled for a
// policy that exists, which the agent does not have yet, does not start
// unbound: StartContainer waits for the policy, binds when it arrives, and
// fails past the wait. A label naming no policy blocks nothing.
func TestNRIWaitsForTheLabelledPodsPolicy(t *testing.T) {
	n := newTestNodeEnv(t, cgroups.DriverSystemd)
	e := n.newEnforcer(t)
	a := n.startAgent(t, e, nil)
	exists := func(ns, name string) bool { return ns == "ns" && name == "two" } // the backstop's cache
	a.policyExists.Store(&exists)

	// Labelled for a policy that does not exist: unenforced, as the webhook says; no wait.
	start0 := time.Now()
	if err := a.ContainerStarting(context.Background(), nri.Pod{UID: podUID(0x83), Namespace: "ns", Name: "typo", Policy: "tow"}, containerID(0x83), "x"); err != nil || time.Since(start0) > nriPolicyWait/2 {
		t.Fatalf("a label naming no policy: %v after %v, want nil at once", err, time.Since(start0))
	}

	// Not labelled, not known: not the agent's, no wait.
	start := time.Now()
	if err := a.ContainerStarting(context.Background(), nri.Pod{UID: podUID(0x80), Namespace: "ns", Name: "free"}, containerID(0x80), "x"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > nriPolicyWait/2 {
		t.Fatalf("an unlabelled pod waited %v", d)
	}

	// Labelled, the policy never comes: the start fails, saying why; a container
	// that runs already (Synchronize) is not waited for.
	lost := nri.Pod{UID: podUID(0x81), Namespace: "ns", Name: "lost", Policy: "two"}
	start = time.Now()
	if err := a.ContainerRunning(lost, containerID(0x81), "b"); err != nil || time.Since(start) > nriPolicyWait/2 {
		t.Fatalf("Synchronize of an unknown labelled pod: %v after %v, want nil at once", err, time.Since(start))
	}
	err := a.ContainerStarting(context.Background(), lost, containerID(0x81), "b")
	if err == nil || !strings.Contains(err.Error(), "policy ns/two of pod ns/lost is not on node") {
		t.Fatalf("a labelled pod without its policy: %v, want the start refused", err)
	}

	// Labelled, the policy arrives during the wait: bound with b's rules.
	uid := podUID(0x82)
	n.mkPodCgroup(t, uid, cgroups.QoSBurstable)
	b := n.mkContainerCgroup(t, uid, cgroups.QoSBurstable, containerID(0x82))
	go func() {
		time.Sleep(200 * time.Millisecond)
		if _, _, err := a.ApplyPodPolicy(context.Background(), podPolicy(uid, cgroups.QoSBurstable, twoContainers())); err != nil {
			t.Error(err)
		}
	}()
	if err := a.ContainerStarting(context.Background(), nri.Pod{UID: uid, Namespace: "ns", Name: "late", Policy: "two"}, containerID(0x82), "b"); err != nil {
		t.Fatal(err)
	}
	out, err := b.Run("/usr/bin/id")
	assertDenied(t, e.AttachMode(), out, err)
}
