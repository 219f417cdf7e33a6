package agent

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
)

// TestAgentRBACEventsNameTheirNode (issue 14.8): the chart's admission policy
// agent-node-guard accepts an agent's Event only when its reportingInstance names the node
// of the agent's token, so the agent must write that name, through the same broadcaster and
// recorder the backstop uses. Before, the events library wrote
// "execgate-agent-<host name>": the agent pod's name, which names no node.
func TestAgentRBACEventsNameTheirNode(t *testing.T) {
	kube := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	broadcaster := events.NewBroadcaster(NodeEventSink(kube, "node-a"))
	if err := broadcaster.StartRecordingToSinkWithContext(ctx); err != nil {
		t.Fatal(err)
	}
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(clientgoscheme.Scheme, "execgate-agent")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1", UID: "uid-web-1"}}
	recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonPolicyLabelChanged, "KeepBinding", "label changed")

	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := kube.EventsV1().Events("shop").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) > 0 {
			ev := list.Items[0]
			if ev.ReportingInstance != "execgate-agent-node-a" || ev.ReportingController != "execgate-agent" {
				t.Fatalf("event written with reportingController %q, reportingInstance %q; want execgate-agent, execgate-agent-node-a",
					ev.ReportingController, ev.ReportingInstance)
			}
			if ev.Regarding.Name != "web-1" || ev.Reason != ReasonPolicyLabelChanged {
				t.Fatalf("event regarding %s, reason %s", ev.Regarding.Name, ev.Reason)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no Event written within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
