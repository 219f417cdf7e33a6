package binding

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/execgate/execgate/webhook/agents"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
)

// TestTamperWritableRootWarns is issue 14's item 9: on a writable root
// filesystem an allowed path can be overwritten with another program, which
// then runs as the allowed one (escape rows 3, 5, 12), so a Protect pod whose
// containers lack readOnlyRootFilesystem must be flagged at admission: a
// Warning Event on the pod, an admission warning and a metric (and condition
// WritableRootFilesystem on its policy: policy's TestTamperWritableRootCondition).
// Read-only pods are not flagged.
func TestTamperWritableRootWarns(t *testing.T) {
	env := newHandlerEnv(t, time.Second)
	h := &PodHandler{Admitter: env.admitter}
	metric := map[string]string{"namespace": webhooktest.NS, "policy": "web"}
	tests := []struct {
		name string
		pod  *corev1.Pod
		warn bool
	}{
		{"containers with writable roots", webhooktest.Pod("rw-1", "uid-rw-1", "web", "node-a"), true},
		{"one container writable", func() *corev1.Pod {
			p := webhooktest.ReadOnlyRoot(webhooktest.Pod("rw-2", "uid-rw-2", "web", "node-a"))
			p.Spec.Containers[1].SecurityContext = nil
			return p
		}(), true},
		{"every container read-only", webhooktest.ReadOnlyRoot(webhooktest.Pod("ro-1", "uid-ro-1", "web", "node-a")), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			webhooktest.DrainEvents(env.recorder)
			before := webhooktest.Served(t, "execgate_controller_writable_root_pods_total", metric)
			resp := h.Handle(context.Background(), podRequest(t, tc.pod))
			if !resp.Allowed || outcomeOf(resp) != agents.OutcomePushed {
				t.Fatalf("allowed=%v outcome %q, want pushed", resp.Allowed, outcomeOf(resp))
			}
			evs := webhooktest.DrainEvents(env.recorder)
			warned := slices.ContainsFunc(resp.Warnings, func(w string) bool { return strings.Contains(w, "readOnlyRootFilesystem") })
			counted := webhooktest.Served(t, "execgate_controller_writable_root_pods_total", metric) - before
			if webhooktest.HasEvent(evs, ReasonWritableRootFilesystem) != tc.warn || warned != tc.warn || (counted == 1) != tc.warn {
				t.Errorf("event %v (%q), admission warning %v (%q), metric +%v; want all %v", webhooktest.HasEvent(evs, ReasonWritableRootFilesystem), evs, warned, resp.Warnings, counted, tc.warn)
			}
			if tc.warn {
				t.Logf("event: %s", evs)
			}
		})
	}
}
