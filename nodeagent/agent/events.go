package agent

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/execgate/execgate/nodeagent/enforcer"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// subscribers is the fan-out of exec events. fanOutEvents is its only
// sender; a full subscriber queue drops the event (counted), so one slow
// watcher never delays the enforcer's reader or the other watchers.
type subscribers struct {
	mu      sync.Mutex
	set     map[*subscriber]struct{}
	closed  bool
	dropped atomic.Uint64
}

type subscriber struct {
	ch     chan *agentv1.ExecEvent
	filter podpolicy.EventFilter
}

func (s *subscribers) init() { s.set = map[*subscriber]struct{}{} }

// Subscribe implements server.Backend. The channel is closed by cancel, by
// the end of ctx, or when Run returns.
func (a *Agent) Subscribe(ctx context.Context, filter podpolicy.EventFilter) (<-chan *agentv1.ExecEvent, func()) {
	sub := &subscriber{ch: make(chan *agentv1.ExecEvent, a.opts.SubscriberBuffer), filter: filter}
	s := &a.subs
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		close(sub.ch)
		return sub.ch, func() {}
	}
	s.set[sub] = struct{}{}
	s.mu.Unlock()
	var once sync.Once
	cancel := func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if _, ok := s.set[sub]; ok {
				delete(s.set, sub)
				close(sub.ch)
			}
		})
	}
	stop := context.AfterFunc(ctx, cancel)
	return sub.ch, func() { stop(); cancel() }
}

func (s *subscribers) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for sub := range s.set {
		close(sub.ch)
		delete(s.set, sub)
	}
}

func (s *subscribers) publish(ev *agentv1.ExecEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sub := range s.set {
		if !matches(sub.filter, ev) {
			continue
		}
		select {
		case sub.ch <- ev:
		default:
			s.dropped.Add(1)
		}
	}
}

func matches(f podpolicy.EventFilter, ev *agentv1.ExecEvent) bool {
	return (f.Namespace == "" || f.Namespace == ev.GetNamespace()) &&
		(f.Pod == "" || f.Pod == ev.GetPod()) &&
		(f.Container == "" || f.Container == ev.GetContainer()) &&
		(f.Policy == "" || f.Policy == ev.GetPolicy()) &&
		(len(f.Actions) == 0 || slices.Contains(f.Actions, podpolicy.Action(ev.GetAction())))
}

// fanOutEvents is the enforcer's only event consumer. It also counts and logs
// violations; the violation log is its own, so it needs no lock.
func (a *Agent) fanOutEvents(ctx context.Context) {
	vlog := newViolationLog(a.log, violationLogWindow, maxViolationLogKeys, maxViolationLinesPerWindow)
	defer vlog.close()
	tick := time.NewTicker(violationLogWindow / 4)
	defer tick.Stop()
	events := a.enf.Events()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			vlog.expire(now)
		case ev, ok := <-events:
			if !ok {
				return
			}
			if a.learnSuppressed(ev) {
				continue
			}
			out := a.execEvent(ev)
			a.subs.publish(out)
			if isViolation(out.Action) {
				a.metrics.violation(out)
				vlog.observe(out, time.Now())
			}
		}
	}
}

// execEvent names the pod and container an enforcer event happened in.
func (a *Agent) execEvent(ev enforcer.Event) *agentv1.ExecEvent {
	out := &agentv1.ExecEvent{
		Time: timestamppb.New(ev.Time), Node: a.opts.NodeName, Policy: string(ev.Policy),
		Mode: agentv1.Mode(ev.Mode), Action: agentv1.Action(ev.Action),
		Pid: ev.PID, Ppid: ev.PPID, Uid: ev.UID, Executable: ev.Path, Argv: ev.Argv,
		ArgvTruncated: ev.Flags&enforcer.FlagArgvTruncated != 0, ParentExecutable: ev.Parent,
		CgroupId: ev.CgroupID, Count: 1,
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if p, ok := a.argv[ev.Policy]; ok {
		out.Argv = p.apply(out.Argv)
		if out.Argv == nil {
			out.ArgvTruncated = false
		}
	}
	o, ok := a.owners[ev.BoundCgroupID]
	if !ok {
		return out
	}
	p := a.pods[o.uid]
	if p == nil {
		return out
	}
	out.Namespace, out.Pod, out.Container = p.namespace, p.name, o.container
	if out.Container == "" {
		// Decided by the pod binding: name the container the task runs in
		// if its name is known by now.
		for cid, cg := range p.containers {
			if cg == ev.CgroupID {
				out.Container = p.names[cid]
			}
		}
	}
	return out
}
