package agent

import (
	"strings"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"go.uber.org/zap"

	"github.com/execgate/execgate/nodeagent/enforcer"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// Violation log limits. A denied exec loop in one container must not become a
// thousand log lines a second, and a pod running many distinct binaries must
// not either; the counter execgate_agent_violations_total still counts every
// violation the agent received.
const (
	// violationLogWindow: the first violation of a (pod, container,
	// executable, action) is logged at once; its repeats in the next 10s are
	// counted and written as one "exec violation repeated" line (field
	// repeated=N) when the window ends, or when the agent stops.
	violationLogWindow = 10 * time.Second
	// maxViolationLogKeys bounds the open windows; beyond it the least
	// recently seen one is closed early (its summary written).
	maxViolationLogKeys = 4096
	// maxViolationLinesPerWindow bounds the first lines of distinct
	// violations, all keys together, per window; the rest are counted and
	// reported in one "exec violations not logged" line.
	maxViolationLinesPerWindow = 200
)

// isViolation: Monitor reports and Protect denials are violations; Learn
// events are what a workload normally runs, recorded elsewhere.
func isViolation(a agentv1.Action) bool {
	return a == agentv1.Action_ACTION_REPORTED || a == agentv1.Action_ACTION_DENIED
}

// actionLabel is an action as metrics and logs spell it: the enforcer's name
// for it, as in execgate_agent_decisions_total (the values are the same).
func actionLabel(a agentv1.Action) string { return enforcer.Action(a).String() }

// violationLog writes violations to the log, aggregated as the constants above
// say. It is owned by fanOutEvents' goroutine: no method may be called from
// another one.
type violationLog struct {
	log      *zap.Logger
	window   time.Duration
	maxLines int
	open     *simplelru.LRU[violationKey, *violationRun]

	linesSince time.Time // start of the current line budget
	lines      int       // first lines written since linesSince
	suppressed uint64    // first lines refused by the budget, not reported yet
}

type violationKey struct {
	namespace, pod, container, executable string
	action                                agentv1.Action
}

// violationRun is one open window: the logged violation and its repeats.
type violationRun struct {
	start   time.Time
	repeats uint64
	// policy, mode and pid of the last repeat.
	policy  string
	mode    agentv1.Mode
	lastPID uint32
}

func newViolationLog(log *zap.Logger, window time.Duration, maxKeys, maxLines int) *violationLog {
	v := &violationLog{log: log, window: window, maxLines: maxLines}
	v.open, _ = simplelru.NewLRU(max(maxKeys, 1), v.closeRun) // fails only for a size < 1
	return v
}

// observe logs ev, or counts it as a repeat of an open window.
func (v *violationLog) observe(ev *agentv1.ExecEvent, now time.Time) {
	k := violationKey{ev.GetNamespace(), ev.GetPod(), ev.GetContainer(), ev.GetExecutable(), ev.GetAction()}
	n := uint64(max(ev.GetCount(), 1))
	if r, ok := v.open.Get(k); ok {
		if now.Sub(r.start) < v.window {
			r.repeats += n
			r.policy, r.mode, r.lastPID = ev.GetPolicy(), ev.GetMode(), ev.GetPid()
			return
		}
		v.open.Remove(k) // writes its summary first
	}
	if !v.takeLine(now) {
		v.suppressed += n
		return
	}
	v.log.Warn("exec violation", violationFields(ev)...)
	v.open.Add(k, &violationRun{start: now, repeats: n - 1, policy: ev.GetPolicy(), mode: ev.GetMode(), lastPID: ev.GetPid()})
}

// expire closes the windows that ended by now.
func (v *violationLog) expire(now time.Time) {
	for _, k := range v.open.Keys() {
		if r, ok := v.open.Peek(k); ok && now.Sub(r.start) >= v.window {
			v.open.Remove(k)
		}
	}
	if now.Sub(v.linesSince) >= v.window {
		v.resetLines(now)
	}
}

// close writes every pending summary.
func (v *violationLog) close() {
	v.open.Purge()
	v.reportSuppressed()
}

func (v *violationLog) takeLine(now time.Time) bool {
	if now.Sub(v.linesSince) >= v.window {
		v.resetLines(now)
	}
	if v.lines >= v.maxLines {
		return false
	}
	v.lines++
	return true
}

func (v *violationLog) resetLines(now time.Time) {
	v.reportSuppressed()
	v.linesSince, v.lines = now, 0
}

func (v *violationLog) reportSuppressed() {
	if v.suppressed == 0 {
		return
	}
	v.log.Warn("exec violations not logged", zap.Uint64("violations", v.suppressed),
		zap.Int("max_lines", v.maxLines), zap.Duration("window", v.window),
		zap.String("see", "execgate_agent_violations_total"))
	v.suppressed = 0
}

// closeRun is the LRU's eviction callback: every way a window ends (expiry,
// eviction, close) writes its summary here, once.
func (v *violationLog) closeRun(k violationKey, r *violationRun) {
	if r.repeats == 0 {
		return
	}
	v.log.Warn("exec violation repeated",
		zap.String("namespace", k.namespace), zap.String("pod", k.pod), zap.String("container", k.container),
		zap.String("policy", r.policy), zap.String("mode", podpolicy.Mode(r.mode).String()),
		zap.String("action", actionLabel(k.action)), zap.String("executable", k.executable),
		zap.Uint64("repeated", r.repeats), zap.Time("since", r.start), zap.Uint32("last_pid", r.lastPID))
}

// violationFields are the fields of one violation's log line; "node" comes
// from the agent's logger.
func violationFields(ev *agentv1.ExecEvent) []zap.Field {
	return []zap.Field{
		zap.String("namespace", ev.GetNamespace()), zap.String("pod", ev.GetPod()), zap.String("container", ev.GetContainer()),
		zap.String("policy", ev.GetPolicy()), zap.String("mode", podpolicy.Mode(ev.GetMode()).String()),
		zap.String("action", actionLabel(ev.GetAction())), zap.String("executable", ev.GetExecutable()),
		zap.Uint32("pid", ev.GetPid()), zap.Uint32("ppid", ev.GetPpid()), zap.Uint32("uid", ev.GetUid()),
		zap.String("cmdline", strings.Join(ev.GetArgv(), " ")), zap.Bool("argv_truncated", ev.GetArgvTruncated()),
		zap.String("parent_executable", ev.GetParentExecutable()),
	}
}
