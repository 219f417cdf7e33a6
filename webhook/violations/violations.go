package violations

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/execgate/execgate/nodeagent/podpolicy"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// Event reasons of violations, on the pod.
const (
	ReasonExecDenied    = "ExecDenied"    // Protect: the exec was refused (EPERM, or SIGKILL before it ran)
	ReasonExecViolation = "ExecViolation" // Monitor: the exec ran, outside the allowlist
)

// Defaults of ViolationEvents.
const (
	// DefaultViolationWindow: a series' first violation is written at once; its repeats
	// at most once per window, as one update of count and lastTimestamp. A burst of 1,000
	// identical violations in a second is one Event with count 1,000 within 10s, in two
	// writes.
	DefaultViolationWindow = 10 * time.Second
	// DefaultMaxViolationSeries bounds the series kept in memory (LRU).
	DefaultMaxViolationSeries = 4096
	// DefaultViolationWritesPerSecond bounds Event writes (burst: twice as many), so a
	// storm of distinct violations cannot take the API server's attention (or the
	// manager client's rate limit) from the policy reconciler. Counts accumulate
	// meanwhile; nothing is lost but timeliness.
	DefaultViolationWritesPerSecond = 10
)

// maxEventMessage is the longest message written (events.k8s.io caps a note at 1 kB).
const maxEventMessage = 1024

// ViolationEvents is an agents.ExecEventSink that counts Monitor and Protect violations
// (execgate_controller_violations_total) and reports them as Warning Events on the pod.
//
// Violations with the same namespace, pod, container, executable and action form a
// series, which is one core/v1 Event: created at the first violation, then patched with
// the running count and lastTimestamp at most once per Window. The message describes the
// last violation. A series whose Event is gone (deleted, or expired by the API server's
// event TTL) starts a new Event. Series are kept in an LRU of MaxSeries; one evicted
// with unwritten violations is counted in
// execgate_controller_violation_event_writes_total{result="evicted"}.
//
// HandleExecEvent only updates memory; Start, one goroutine on the leader, does every
// write. mu guards the series.
type ViolationEvents struct {
	// Client writes Events and reads the pod, whose uid the Event must carry to show in
	// `kubectl describe pod`.
	Client client.Client
	// Window, MaxSeries and WritesPerSecond default to the Default* values above.
	Window          time.Duration
	MaxSeries       int
	WritesPerSecond float64
	// Component is the Event's source; default "execgate-controller".
	Component string
	Log       *zap.Logger

	initOnce sync.Once
	limiter  *rate.Limiter
	kick     chan struct{} // a new series waits to be written
	retryAt  time.Time     // after a failed write; Start's goroutine owns it

	mu     sync.Mutex
	series *simplelru.LRU[violationKey, *violationSeries]
}

type violationKey struct {
	namespace, pod, container, executable string
	action                                agentv1.Action
}

// violationSeries is one Event and what is not written to it yet.
type violationSeries struct {
	event   string // Event name; "" until created
	count   int32  // count in the Event
	first   time.Time
	written time.Time // of the last write

	pending      int64     // violations since the last write
	pendingFirst time.Time // first of them
	last         violationDetail
}

// violationDetail is what the message says about the last violation, trimmed so that a
// series stays small.
type violationDetail struct {
	node, policy, parent, cmdline string
	mode                          agentv1.Mode
	pid, ppid, uid                uint32
	time                          time.Time
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: only the leader writes.
func (v *ViolationEvents) NeedLeaderElection() bool { return true }

func (v *ViolationEvents) init() {
	v.initOnce.Do(func() {
		if v.Window <= 0 {
			v.Window = DefaultViolationWindow
		}
		if v.MaxSeries <= 0 {
			v.MaxSeries = DefaultMaxViolationSeries
		}
		if v.WritesPerSecond <= 0 {
			v.WritesPerSecond = DefaultViolationWritesPerSecond
		}
		if v.Component == "" {
			v.Component = "execgate-controller"
		}
		if v.Log == nil {
			v.Log = zap.NewNop()
		}
		v.limiter = rate.NewLimiter(rate.Limit(v.WritesPerSecond), int(math.Ceil(2*v.WritesPerSecond)))
		v.kick = make(chan struct{}, 1)
		v.series, _ = simplelru.NewLRU(v.MaxSeries, func(k violationKey, s *violationSeries) { // fails only for a size < 1
			if s.pending > 0 {
				violationEventWrites.WithLabelValues("evicted").Inc()
				v.Log.Debug("violation series evicted before it was written", zap.String("namespace", k.namespace),
					zap.String("pod", k.pod), zap.String("executable", k.executable), zap.Int64("violations", s.pending))
			}
		})
	})
}

// HandleExecEvent implements agents.ExecEventSink. Learn events are not violations: ignored.
func (v *ViolationEvents) HandleExecEvent(_ context.Context, ev *agentv1.ExecEvent) {
	action := ev.GetAction()
	if action != agentv1.Action_ACTION_REPORTED && action != agentv1.Action_ACTION_DENIED {
		return
	}
	v.init()
	n := int64(max(ev.GetCount(), 1))
	ns := ev.GetNamespace()
	if ns == "" { // the agent did not know the pod (yet): its policy is in its namespace
		ns, _, _ = strings.Cut(ev.GetPolicy(), "/")
	}
	violationsTotal.WithLabelValues(ns, ev.GetPolicy(), violationActionLabel(action)).Add(float64(n))
	if err := validateViolationPod(ev); err != nil {
		v.Log.Debug("violation without a pod to report it on", zap.String("node", ev.GetNode()),
			zap.String("policy", ev.GetPolicy()), zap.String("executable", ev.GetExecutable()), zap.Error(err))
		return
	}

	t := time.Now()
	if ev.GetTime().IsValid() {
		t = ev.GetTime().AsTime()
	}
	cmdline := strings.Join(ev.GetArgv(), " ")
	if ev.GetArgvTruncated() {
		cmdline += " ..."
	}
	d := violationDetail{
		node: ev.GetNode(), policy: ev.GetPolicy(), parent: truncateUTF8(ev.GetParentExecutable(), 256),
		cmdline: truncateUTF8(cmdline, 512), mode: ev.GetMode(), pid: ev.GetPid(), ppid: ev.GetPpid(), uid: ev.GetUid(), time: t,
	}
	k := violationKey{ev.GetNamespace(), ev.GetPod(), ev.GetContainer(), ev.GetExecutable(), action}

	v.mu.Lock()
	s, ok := v.series.Get(k)
	if !ok {
		s = &violationSeries{}
		v.series.Add(k, s)
	}
	if s.pending == 0 {
		s.pendingFirst = t
	}
	s.pending += n
	s.last = d
	unwritten := s.event == ""
	v.mu.Unlock()
	if unwritten {
		select {
		case v.kick <- struct{}{}:
		default:
		}
	}
}

// validateViolationPod checks the names an Event on the pod is made of.
func validateViolationPod(ev *agentv1.ExecEvent) error {
	if ev.GetNamespace() == "" || ev.GetPod() == "" {
		return fmt.Errorf("event names no pod (namespace %q, pod %q)", ev.GetNamespace(), ev.GetPod())
	}
	if errs := validation.IsDNS1123Label(ev.GetNamespace()); len(errs) > 0 {
		return fmt.Errorf("namespace %q: %s", ev.GetNamespace(), strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(ev.GetPod()); len(errs) > 0 {
		return fmt.Errorf("pod %q: %s", ev.GetPod(), strings.Join(errs, "; "))
	}
	return nil
}

// Start implements manager.Runnable: it writes due series until ctx ends, then once
// more (bounded by 5s), so that a burst just before shutdown is not lost.
func (v *ViolationEvents) Start(ctx context.Context) error {
	v.init()
	tick := time.NewTicker(max(v.Window/10, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			v.flush(fctx, time.Now(), true)
			return nil
		case <-v.kick:
		case <-tick.C:
		}
		v.flush(ctx, time.Now(), false)
	}
}

// violationWrite is one series' write, prepared under mu and done without it.
type violationWrite struct {
	key    violationKey
	series *violationSeries
	event  string    // "" creates
	count  int32     // the Event's count after the write
	n      int64     // violations this write adds
	since  time.Time // first of them
	first  time.Time // the Event's firstTimestamp
	last   violationDetail
}

// flush writes the series that are due: new ones at once, the others once per Window
// (all, when final). After a failed write it waits a Window.
func (v *ViolationEvents) flush(ctx context.Context, now time.Time, final bool) {
	if !final && now.Before(v.retryAt) {
		return
	}
	var due []violationWrite
	v.mu.Lock()
	for _, k := range v.series.Keys() {
		s, _ := v.series.Peek(k)
		if s.pending == 0 || (s.event != "" && !final && now.Sub(s.written) < v.Window) {
			continue
		}
		w := violationWrite{key: k, series: s, event: s.event, n: s.pending, since: s.pendingFirst, first: s.first, last: s.last}
		if w.event == "" {
			w.first = w.since
		}
		w.count = int32(min(int64(s.count)+s.pending, math.MaxInt32))
		s.pending = 0
		due = append(due, w)
	}
	v.mu.Unlock()

	for i, w := range due {
		err := v.limiter.Wait(ctx)
		if err == nil {
			err = v.write(ctx, &w, now)
		}
		if err != nil {
			// Put back what was not written; a later flush retries.
			v.mu.Lock()
			for _, u := range due[i:] {
				u.series.pending += u.n
				u.series.pendingFirst = u.since // earlier than whatever came since
			}
			v.mu.Unlock()
			v.retryAt = now.Add(v.Window)
			violationEventWrites.WithLabelValues("failed").Inc()
			v.Log.Warn("write violation event", zap.String("namespace", w.key.namespace), zap.String("pod", w.key.pod),
				zap.String("executable", w.key.executable), zap.Int("pendingSeries", len(due)-i), zap.Error(err))
			return
		}
	}
}

// write creates or patches the series' Event, and records the result.
func (v *ViolationEvents) write(ctx context.Context, w *violationWrite, now time.Time) error {
	if w.event != "" {
		err := v.patch(ctx, w)
		if err == nil {
			violationEventWrites.WithLabelValues("updated").Inc()
			v.mu.Lock()
			w.series.count, w.series.written = w.count, now
			v.mu.Unlock()
			return nil
		}
		if !apierrors.IsNotFound(err) {
			return err
		}
		// The Event expired or was deleted: start a new one with what is new.
		w.event, w.count, w.first = "", int32(min(w.n, math.MaxInt32)), w.since
	}
	name, err := v.create(ctx, w, now)
	if err != nil {
		return err
	}
	violationEventWrites.WithLabelValues("created").Inc()
	v.mu.Lock()
	w.series.event, w.series.count, w.series.first, w.series.written = name, w.count, w.first, now
	v.mu.Unlock()
	return nil
}

func (v *ViolationEvents) create(ctx context.Context, w *violationWrite, now time.Time) (string, error) {
	k := w.key
	ref := corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: k.namespace, Name: k.pod}
	var pod corev1.Pod
	if err := v.Client.Get(ctx, types.NamespacedName{Namespace: k.namespace, Name: k.pod}, &pod); err == nil {
		ref.UID = pod.UID
		ref.FieldPath = containerFieldPath(&pod, k.container)
	} else if !apierrors.IsNotFound(err) {
		return "", fmt.Errorf("get pod %s/%s: %w", k.namespace, k.pod, err)
	}
	// Pod names are at most 253 characters, Event names too: keep room for the suffix.
	name := fmt.Sprintf("%s.%x", truncateUTF8(k.pod, 253-17), now.UnixNano())
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Namespace: k.namespace, Name: name},
		InvolvedObject: ref,
		Reason:         violationReason(k.action),
		Message:        violationMessage(k, w.last),
		Type:           corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: v.Component, Host: w.last.node},
		FirstTimestamp: metav1.NewTime(w.first),
		LastTimestamp:  metav1.NewTime(w.last.time),
		Count:          w.count,
	}
	if err := v.Client.Create(ctx, ev); err != nil {
		return "", fmt.Errorf("create event %s/%s: %w", k.namespace, name, err)
	}
	return name, nil
}

func (v *ViolationEvents) patch(ctx context.Context, w *violationWrite) error {
	patch, err := json.Marshal(map[string]any{
		"count":         w.count,
		"lastTimestamp": metav1.NewTime(w.last.time),
		"message":       violationMessage(w.key, w.last),
	})
	if err != nil {
		return fmt.Errorf("encode event patch: %w", err)
	}
	ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: w.key.namespace, Name: w.event}}
	if err := v.Client.Patch(ctx, ev, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("update event %s/%s: %w", w.key.namespace, w.event, err)
	}
	return nil
}

func violationReason(a agentv1.Action) string {
	if a == agentv1.Action_ACTION_DENIED {
		return ReasonExecDenied
	}
	return ReasonExecViolation
}

func violationActionLabel(a agentv1.Action) string {
	if a == agentv1.Action_ACTION_DENIED {
		return "denied"
	}
	return "reported"
}

// violationMessage says what ran where, under which policy, and how it was started; for
// a series, about its last violation.
func violationMessage(k violationKey, d violationDetail) string {
	what := "denied"
	if k.action != agentv1.Action_ACTION_DENIED {
		what = "not in the allowlist (allowed: Monitor mode)"
	}
	parent := d.parent
	if parent == "" {
		parent = "unknown (exited)"
	}
	msg := fmt.Sprintf("exec of %s %s: container %q, policy %s, mode %s; pid %d, ppid %d, uid %d, parent %s, cmdline %q",
		k.executable, what, k.container, d.policy, podpolicy.Mode(d.mode), d.pid, d.ppid, d.uid, parent, d.cmdline)
	return truncateUTF8(msg, maxEventMessage)
}

// containerFieldPath is the pod field naming container, as the kubelet writes it in its
// Events ("" if the pod has no such container).
func containerFieldPath(pod *corev1.Pod, name string) string {
	for _, c := range pod.Spec.Containers {
		if c.Name == name {
			return "spec.containers{" + name + "}"
		}
	}
	for _, c := range pod.Spec.InitContainers {
		if c.Name == name {
			return "spec.initContainers{" + name + "}"
		}
	}
	for _, c := range pod.Spec.EphemeralContainers {
		if c.Name == name {
			return "spec.ephemeralContainers{" + name + "}"
		}
	}
	return ""
}

// truncateUTF8 cuts s to at most n bytes without splitting a character.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
