package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// StartupTaintKey is the taint a node carries from registration until its agent
// enforces (the kubelet's --register-with-taints, or the node pool's taints):
// the scheduler places no pod there before the agent can stop what it must not
// run. The agent's DaemonSet tolerates it; the agent removes it, from its own
// Node only (the chart's agent-node guard), once EnforcingAll.
const StartupTaintKey = "execgate.io/agent-not-ready"

// StartupTaintRemover removes the startup taint from the agent's own Node once
// the agent enforces every pod bound there. A node whose kubelet never set the
// taint costs one GET. Removal is never undone: an agent that restarts keeps
// enforcing through its pins, and the backstop reloads the rest.
type StartupTaintRemover struct {
	Kube     kubernetes.Interface
	NodeName string
	Key      string      // the taint's key; "" = StartupTaintKey
	Ready    func() bool // Agent.EnforcingAll
	Log      *zap.Logger
	// Poll is how often Ready is asked (default 200ms); failed removals are
	// retried with backoff from Poll to 30s.
	Poll time.Duration
}

// Run waits until Ready, removes the taint, and returns; it retries until ctx
// ends. It returns nil when ctx ends: a taint left in place keeps pods off the
// node, which is the safe side.
func (r *StartupTaintRemover) Run(ctx context.Context) error {
	key := r.Key
	if key == "" {
		key = StartupTaintKey
	}
	poll := r.Poll
	if poll <= 0 {
		poll = 200 * time.Millisecond
	}
	waitReady := time.Now()
	for !r.Ready() {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(poll):
		}
	}
	backoff := poll
	for {
		removed, err := RemoveNodeTaint(ctx, r.Kube, r.NodeName, key)
		if err == nil {
			if removed {
				r.Log.Info("startup taint removed: the node takes pods", zap.String("taint", key),
					zap.Duration("enforcingAfter", time.Since(waitReady)))
			}
			return nil
		}
		r.Log.Error("remove startup taint; retrying", zap.String("taint", key), zap.Duration("in", backoff), zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// RemoveNodeTaint removes every taint with key from node, and nothing else:
// a JSON patch that first tests the taint list is still the one read, so a
// concurrent change (another controller's taint) fails the patch and is read
// again rather than overwritten. It reports whether there was one to remove.
func RemoveNodeTaint(ctx context.Context, kube kubernetes.Interface, node, key string) (bool, error) {
	for attempt := 0; ; attempt++ {
		n, err := kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, fmt.Errorf("get node %s: %w", node, err)
		}
		var kept []corev1.Taint
		for _, t := range n.Spec.Taints {
			if t.Key != key {
				kept = append(kept, t)
			}
		}
		if len(kept) == len(n.Spec.Taints) {
			return false, nil
		}
		if kept == nil {
			kept = []corev1.Taint{}
		}
		patch, err := json.Marshal([]map[string]any{
			{"op": "test", "path": "/spec/taints", "value": n.Spec.Taints},
			{"op": "replace", "path": "/spec/taints", "value": kept},
		})
		if err != nil {
			return false, err
		}
		_, err = kube.CoreV1().Nodes().Patch(ctx, node, types.JSONPatchType, patch, metav1.PatchOptions{})
		if err == nil {
			return true, nil
		}
		// A failed test (the list changed since it was read) comes back as an
		// invalid patch: read again. Refusals are final.
		if attempt < 5 && !apierrors.IsForbidden(err) && !apierrors.IsNotFound(err) && !apierrors.IsUnauthorized(err) {
			continue
		}
		return false, fmt.Errorf("patch node %s: %w", node, err)
	}
}
