package agent

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"

	"github.com/execgate/execgate/nodeagent/enforcer"
	"github.com/execgate/execgate/nodeagent/podpolicy"
)

// When a pod's policy does not fit in this node's maps (ErrCapacity: the node's maps or
// the namespace's share are full), the pod is held (issue 14.2) instead of running
// unenforced:
//   - if a version of its policy is loaded (other pods here use it), the pod is bound to
//     that version, as they are;
//   - else, for a Protect policy, the pod is bound to the policy's deny-all version
//     (enforcer.DenyAll): its containers may execute nothing. A Protect pod that cannot
//     get its allowlist fails closed, where it used to run anything;
//   - a Monitor or Learn policy that is not loaded is not enforced: those modes let
//     everything run anyway, so holding the pod would only block what they allow.
//
// A held pod keeps the version it wants and gets it as soon as it fits: after every
// unload of a policy and every sweep (retryCapacityHoldsLocked). ApplyPodPolicy still returns
// ErrLimitExceeded for it, so the controller reports the node as failing the policy,
// the webhook warns, and the backstop retries. Each pod that is held gets one Warning
// Event; execgate_agent_policy_load_failures_total counts the failed loads and
// execgate_agent_held_pods the pods held now.

// ReasonPolicyCapacityExceeded is the reason of the Warning Event on a pod whose policy
// did not fit on its node.
const ReasonPolicyCapacityExceeded = "PolicyCapacityExceeded"

// Results of a failed load, the result label of execgate_agent_policy_load_failures_total.
const (
	loadFailClosed   = "fail_closed"   // bound to the deny-all version: nothing runs
	loadOlderVersion = "older_version" // bound to the version loaded on the node
	loadUnenforced   = "unenforced"    // not bound: Monitor or Learn, or deny-all did not load
)

// holdOnLoadFailureLocked decides what a pod whose policy version pv failed to load with
// loadErr runs under (cur is the loaded version of the policy, if existed), loading the
// deny-all version if that is the answer. It returns the result; the pod may be
// committed unless it is loadUnenforced.
func (a *Agent) holdOnLoadFailureLocked(pv enforcer.PolicyVersion, cur uint64, existed bool, loadErr error) string {
	result := loadUnenforced
	switch {
	case !errors.Is(loadErr, enforcer.ErrCapacity):
	case existed && cur == 0: // the deny-all version, loaded for an earlier pod
		result = loadFailClosed
	case existed:
		result = loadOlderVersion
	case pv.Mode == enforcer.ModeProtect:
		if _, err := a.enf.PutPolicy(enforcer.DenyAll(pv.Key)); err != nil {
			a.log.Error("deny-all version did not load: the pod runs unenforced", zap.String("policy", string(pv.Key)), zap.Error(err))
		} else {
			result = loadFailClosed
		}
	}
	a.metrics.loadFailed(namespaceOfKey(pv.Key), string(pv.Key), capacityReason(loadErr), result)
	return result
}

// capacityHeldLocked records that p runs held (result) until want fits, and reports it once per
// pod: a Warning Event and a log line.
func (a *Agent) capacityHeldLocked(p *podState, want enforcer.PolicyVersion, result string, loadErr error) {
	first := p.capacityHold == nil
	p.capacityHold = &capacityHold{want: want, result: result, since: time.Now()}
	if !first {
		return
	}
	loaded, _ := a.enf.PolicyVersionOf(want.Key)
	note := fmt.Sprintf("WorkloadPolicy %s generation %d does not fit on node %s (%v): this pod's containers may execute nothing until it fits (Protect fails closed); shrink the policy or raise agent.maps in the chart",
		want.Key, want.Version, a.opts.NodeName, loadErr)
	if result == loadOlderVersion {
		note = fmt.Sprintf("WorkloadPolicy %s generation %d does not fit on node %s (%v): this pod runs generation %d, the one loaded there, until it fits; shrink the policy or raise agent.maps in the chart",
			want.Key, want.Version, a.opts.NodeName, loadErr, loaded)
	}
	a.podLog(p).Warn("pod policy does not fit on this node; pod held", zap.String("result", result),
		zap.Uint64("want_version", want.Version), zap.Uint64("loaded_version", loaded), zap.Error(loadErr))
	a.recordPodEvent(p, corev1.EventTypeWarning, ReasonPolicyCapacityExceeded, "FailClosed", note)
}

// retryCapacityHoldsLocked loads the wanted version of every held pod that fits now, oldest
// first. PutPolicy switches the pods bound to the deny-all or older version atomically.
func (a *Agent) retryCapacityHoldsLocked() {
	var held []*podState
	for _, p := range a.pods {
		if p.capacityHold != nil {
			held = append(held, p)
		}
	}
	sort.Slice(held, func(i, j int) bool { return held[i].capacityHold.since.Before(held[j].capacityHold.since) })
	for _, p := range held {
		if p.capacityHold == nil { // released with an earlier pod of the same policy
			continue
		}
		want := p.capacityHold.want
		if cur, ok := a.enf.PolicyVersionOf(want.Key); ok && cur >= want.Version && cur > 0 {
			a.releaseCapacityHoldLocked(want.Key, cur)
			continue
		}
		if _, err := a.enf.PutPolicy(want); err != nil {
			continue
		}
		a.releaseCapacityHoldLocked(want.Key, want.Version)
	}
}

// releaseCapacityHoldLocked ends the hold of every pod of key whose wanted version is in force.
func (a *Agent) releaseCapacityHoldLocked(key enforcer.PolicyKey, loaded uint64) {
	for _, p := range a.pods {
		if p.capacityHold != nil && p.policy == key && p.capacityHold.want.Version <= loaded {
			a.podLog(p).Info("pod policy fits now; hold released", zap.Uint64("version", loaded),
				zap.Duration("held_for", time.Since(p.capacityHold.since)))
			p.capacityHold = nil
		}
	}
}

// capacityHold is the version a held pod waits for.
type capacityHold struct {
	want   enforcer.PolicyVersion
	result string // loadFailClosed or loadOlderVersion
	since  time.Time
}

// capacityHoldCounts counts the held pods by result, for the metrics.
func (a *Agent) capacityHoldCounts() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]int{loadFailClosed: 0, loadOlderVersion: 0}
	for _, p := range a.pods {
		if p.capacityHold != nil {
			out[p.capacityHold.result]++
		}
	}
	return out
}

func capacityReason(err error) string {
	switch {
	case errors.Is(err, enforcer.ErrNamespaceShare):
		return "namespace_share"
	case errors.Is(err, enforcer.ErrCapacity):
		return "node_capacity"
	}
	return "error"
}

func namespaceOfKey(key enforcer.PolicyKey) string {
	ns, _, _ := strings.Cut(string(key), "/")
	return ns
}

// eventSink holds the recorder of the backstop's broadcaster while it runs.
type eventSink struct{ events.EventRecorder }

// recordPodEvent writes an Event on pod p if the backstop runs (it owns the broadcaster).
func (a *Agent) recordPodEvent(p *podState, typ, reason, action, note string) {
	a.eventOnPod(p.namespace, p.name, p.uid, typ, reason, action, note)
}

// eventOnPod writes an Event on the named pod if the backstop runs.
func (a *Agent) eventOnPod(namespace, name, uid, typ, reason, action, note string) {
	sink := a.events.Load()
	if sink == nil || name == "" {
		return
	}
	ref := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: types.UID(uid)}}
	sink.Eventf(ref, nil, typ, reason, action, "%s", note)
}

// errHeld is what ApplyPodPolicy returns for a held pod: still a failure (the policy
// is not in force), wrapping loadErr's ErrLimitExceeded.
func errHeld(pp *podpolicy.PodPolicy, result string, loadErr error) error {
	what := "its containers may execute nothing (fail closed)"
	switch result {
	case loadOlderVersion:
		what = "it runs the version loaded on this node"
	case loadUnenforced:
		return loadErr
	}
	return fmt.Errorf("%w; pod %s/%s is held until the policy fits: %s", loadErr, pp.Pod.Namespace, pp.Pod.Name, what)
}
