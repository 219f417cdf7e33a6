package agent

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/execgate/execgate/nodeagent/enforcer"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// metrics are the agent's own; gauges of kernel state are read from the
// enforcer at scrape time so they can never drift from it.
type metrics struct {
	applyDuration *prometheus.HistogramVec
	gcRemovals    prometheus.Counter
	violations    *prometheus.CounterVec // namespace, policy, action
	labelChanges  *prometheus.CounterVec // namespace, policy, change
	replaced      *prometheus.CounterVec // namespace, policy
	loaders       *prometheus.CounterVec // namespace, policy, result
	loadFailures  *prometheus.CounterVec // namespace, policy, reason, result
}

func newMetrics(a *Agent, reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		applyDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "execgate_agent_apply_duration_seconds",
			Help:    "Time to apply one pod policy (load, bind), by result.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"result"}),
		gcRemovals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "execgate_agent_gc_removals_total",
			Help: "Dead bindings, expired pending pods and unused policies removed by the sweep.",
		}),
		// Labels are bounded by the policies in use: never pod, container or path.
		violations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "execgate_agent_violations_total",
			Help: "Monitor (reported) and Protect (denied) violations the agent received from the kernel, by namespace, policy and action. Events lost before the agent read them are in execgate_agent_events_dropped_total; the kernel's own count is execgate_agent_decisions_total.",
		}, []string{"namespace", "policy", "action"}),
		labelChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "execgate_agent_policy_label_changes_total",
			Help: "Running pods whose execgate.io/policy label was removed (change=removed) or set to another policy (change=changed) after they were bound, by namespace and the policy they stay bound to: the agent keeps that binding until the pod is deleted. Each change of a pod's label counts once.",
		}, []string{"namespace", "policy", "change"}),
		replaced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "execgate_agent_policy_content_replaced_total",
			Help: "Loaded policy versions replaced by the same generation with another content digest, by namespace and policy (namespace/name). Each is one atomic swap; a steady rise means two senders disagree on a generation's content (a controller older than the whole-policy push, issue 14). The first push after an agent restart replaces each adopted policy once (its digest is not pinned) and is not counted.",
		}, []string{"namespace", "policy"}),
		loaders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "execgate_agent_loaders_total",
			Help: "Dynamic loaders found by content at paths a policy allows or learns, by namespace, policy and result: refused (an allowed path or prefix rule refused on this node), incomplete (a prefix rule's directory too large to inspect whole), learn_dropped (a Learn event for a loader, never proposed), learn_unverified (a Learn event whose file could not be read, not proposed this time).",
		}, []string{"namespace", "policy", "result"}),
		loadFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "execgate_agent_policy_load_failures_total",
			Help: "Pod policy loads that failed because the node's maps (reason=node_capacity) or the namespace's share of them (reason=namespace_share) were full, by namespace, policy and what the pod runs instead: result=fail_closed (Protect, nothing may execute), older_version (the version loaded on the node), unenforced (Monitor or Learn, or deny-all did not load). Every attempt counts, retries included; execgate_agent_held_pods is the current state.",
		}, []string{"namespace", "policy", "reason", "result"}),
	}
	for _, c := range []prometheus.Collector{m.applyDuration, m.gcRemovals, m.violations, m.labelChanges, m.replaced, m.loaders, m.loadFailures, &stateCollector{a: a}} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) observeApply(d time.Duration, err error) {
	if m == nil {
		return
	}
	result := "success"
	if err != nil {
		result = "error"
	}
	m.applyDuration.WithLabelValues(result).Observe(d.Seconds())
}

// violation counts a Monitor or Protect violation.
func (m *metrics) violation(ev *agentv1.ExecEvent) {
	if m == nil {
		return
	}
	ns := ev.GetNamespace()
	if ns == "" { // pod not known (yet): its policy is in the pod's namespace
		ns, _, _ = strings.Cut(ev.GetPolicy(), "/")
	}
	m.violations.WithLabelValues(ns, ev.GetPolicy(), actionLabel(ev.GetAction())).Add(float64(max(ev.GetCount(), 1)))
}

func (m *metrics) labelChanged(namespace, policy, change string) {
	if m != nil {
		m.labelChanges.WithLabelValues(namespace, policy, change).Inc()
	}
}

func (m *metrics) contentReplaced(namespace, policy string) {
	if m != nil {
		m.replaced.WithLabelValues(namespace, policy).Inc()
	}
}

func (m *metrics) loaderCheck(namespace, policy, result string) {
	if m != nil {
		m.loaders.WithLabelValues(namespace, policy, result).Inc()
	}
}

func (m *metrics) loadFailed(namespace, policy, reason, result string) {
	if m != nil {
		m.loadFailures.WithLabelValues(namespace, policy, reason, result).Inc()
	}
}

func (m *metrics) gcRemoved(n int) {
	if m != nil {
		m.gcRemovals.Add(float64(n))
	}
}

var (
	descPods = prometheus.NewDesc("execgate_agent_loaded_pods", "Pods the agent enforces or waits for.", nil, nil)
	descHeld = prometheus.NewDesc("execgate_agent_held_pods",
		"Pods whose policy does not fit on this node and that run held until it does: result=fail_closed (deny-all: nothing may execute), older_version (the version loaded on the node).",
		[]string{"result"}, nil)
	descPolicies   = prometheus.NewDesc("execgate_agent_loaded_policies", "Policies loaded in the kernel.", nil, nil)
	descMapEntries = prometheus.NewDesc("execgate_agent_map_entries", "Entries execgate wrote in each BPF map.", []string{"map"}, nil)
	descMapMax     = prometheus.NewDesc("execgate_agent_map_max_entries", "Capacity of each BPF map (max_entries), for alerts on a filling rule map.", []string{"map"}, nil)
	descMapBytes   = prometheus.NewDesc("execgate_agent_map_bytes", "Kernel memory charged to each BPF map.", []string{"map"}, nil)
	descDecisions  = prometheus.NewDesc("execgate_agent_decisions_total", "Exec decisions of the kernel program, by action.", []string{"action"}, nil)
	descAttach     = prometheus.NewDesc("execgate_agent_attach_mode",
		"1 for the attach mode the exec hook uses, 0 for the others; refused=\"true\" marks a better mode the kernel refused.",
		[]string{"mode", "refused"}, nil)
	descDropped = prometheus.NewDesc("execgate_agent_events_dropped_total",
		"Exec events lost, by stage: ring_buffer (kernel ring buffer full), reader (the agent read too slowly), subscriber (a WatchEvents client read too slowly; counted once per client).",
		[]string{"stage"}, nil)
)

// stateCollector reads the enforcer's state on every scrape.
type stateCollector struct{ a *Agent }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPods, descHeld, descPolicies, descMapEntries, descMapMax, descMapBytes, descDecisions, descDropped, descAttach} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	pods, policies := c.a.counts()
	refused := map[enforcer.AttachMode]bool{}
	for _, r := range c.a.enf.AttachRefusals() {
		refused[r.Mode] = true
	}
	for _, m := range []enforcer.AttachMode{enforcer.AttachLSM, enforcer.AttachFmodRet, enforcer.AttachFanotify, enforcer.AttachExecKill} {
		v := 0.0
		if c.a.enf.AttachMode() == m {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descAttach, prometheus.GaugeValue, v, string(m), strconv.FormatBool(refused[m]))
	}
	ch <- prometheus.MustNewConstMetric(descPods, prometheus.GaugeValue, float64(pods))
	ch <- prometheus.MustNewConstMetric(descPolicies, prometheus.GaugeValue, float64(policies))
	for result, n := range c.a.capacityHoldCounts() {
		ch <- prometheus.MustNewConstMetric(descHeld, prometheus.GaugeValue, float64(n), result)
	}
	st, err := c.a.enf.Stats()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descMapEntries, err)
		return
	}
	for _, m := range st.Maps {
		if m.Entries >= 0 {
			ch <- prometheus.MustNewConstMetric(descMapEntries, prometheus.GaugeValue, float64(m.Entries), m.Name)
		}
		ch <- prometheus.MustNewConstMetric(descMapMax, prometheus.GaugeValue, float64(m.MaxEntries), m.Name)
		ch <- prometheus.MustNewConstMetric(descMapBytes, prometheus.GaugeValue, float64(m.Bytes), m.Name)
	}
	for _, action := range []string{"checked", "allowed", "learned", "reported", "denied", "untrusted", "scratch-busy", "twin-decided", "runtime", "skipped"} {
		ch <- prometheus.MustNewConstMetric(descDecisions, prometheus.CounterValue, float64(st.Counters[action]), action)
	}
	for stage, n := range map[string]uint64{"ring_buffer": st.Counters["dropped"], "reader": st.UserDrops, "subscriber": c.a.subs.dropped.Load()} {
		ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(n), stage)
	}
}
