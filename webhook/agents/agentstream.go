package agents

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// ExecEventSink consumes the exec events of every agent. HandleExecEvent is called on
// the stream goroutine of the event's node: concurrently for different nodes, in order
// for one. It must return quickly (a slow sink holds back its node's stream, and the agent
// then drops events) and must not modify ev, which every sink shares.
type ExecEventSink interface {
	HandleExecEvent(ctx context.Context, ev *agentv1.ExecEvent)
}

// AgentNodes lists the nodes that have an agent. *AgentDirectory implements it.
type AgentNodes interface {
	Nodes() []string
}

// Nodes returns the nodes with a known agent, sorted.
func (d *AgentDirectory) Nodes() []string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.static != nil {
		return slices.Sorted(maps.Keys(d.static))
	}
	return slices.Sorted(maps.Keys(d.byNode))
}

// Defaults of AgentEventStream.
const (
	DefaultStreamResync     = 5 * time.Second
	DefaultStreamMinBackoff = 500 * time.Millisecond
	DefaultStreamMaxBackoff = 30 * time.Second
)

// AgentEventStream keeps one WatchEvents stream open to the agent of every node Nodes
// lists, and hands each event to every sink. A stream that breaks (agent restarted,
// moved, unreachable) is reopened after a backoff that doubles per failure from
// MinBackoff up to MaxBackoff, with jitter; a stream that delivered events or lived
// longer than MaxBackoff starts again from MinBackoff. Connections come from Agents (the
// AgentPool), which redials a node whose agent address changed.
//
// Start owns one goroutine per node, started and stopped as Nodes changes (read every
// Resync); all of them end before Start returns. It runs on the leader only, so that
// every event reaches its sinks once.
type AgentEventStream struct {
	Nodes  AgentNodes
	Agents AgentClients
	// Origin checks each event against the node whose stream it came on; an event it
	// refuses reaches no sink and is counted in
	// execgate_controller_agent_events_dropped_total. Required: a node must not speak
	// for pods it does not run (issue 14).
	Origin EventVerifier
	// Sinks receive every event Origin accepts. Add to it before Start (Learn registers
	// here).
	Sinks []ExecEventSink
	// Filter is sent to every agent; nil streams all events and each sink keeps what
	// it wants.
	Filter *agentv1.EventFilter
	// Resync, MinBackoff and MaxBackoff default to the DefaultStream* values.
	Resync, MinBackoff, MaxBackoff time.Duration
	Log                            *zap.Logger
}

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (s *AgentEventStream) NeedLeaderElection() bool { return true }

// Start implements manager.Runnable: it streams until ctx ends.
func (s *AgentEventStream) Start(ctx context.Context) error {
	if s.Nodes == nil || s.Agents == nil || s.Origin == nil {
		return errors.New("agent event stream: Nodes, Agents and Origin are required")
	}
	cfg := *s // the fields are read once, here
	cfg.Sinks = slices.Clone(s.Sinks)
	if cfg.Resync <= 0 {
		cfg.Resync = DefaultStreamResync
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultStreamMinBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(DefaultStreamMaxBackoff, cfg.MinBackoff)
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}

	var wg sync.WaitGroup
	streams := map[string]context.CancelFunc{} // node -> stop its stream; only this goroutine uses it
	defer func() {
		for _, stop := range streams {
			stop()
		}
		wg.Wait()
	}()
	tick := time.NewTicker(cfg.Resync)
	defer tick.Stop()
	for {
		want := map[string]bool{}
		for _, n := range cfg.Nodes.Nodes() {
			want[n] = true
		}
		for n, stop := range streams {
			if !want[n] {
				stop()
				delete(streams, n)
			}
		}
		for n := range want {
			if _, ok := streams[n]; !ok {
				nctx, stop := context.WithCancel(ctx)
				streams[n] = stop
				wg.Go(func() { cfg.watchNode(nctx, n) })
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// watchNode keeps node's stream open until ctx ends.
func (s *AgentEventStream) watchNode(ctx context.Context, node string) {
	log := s.Log.With(zap.String("node", node))
	backoff, failures := s.MinBackoff, 0
	for {
		started := time.Now()
		received, err := s.watchOnce(ctx, node)
		if ctx.Err() != nil {
			return
		}
		if received > 0 || time.Since(started) > s.MaxBackoff { // it was healthy
			backoff, failures = s.MinBackoff, 0
		}
		failures++
		if failures == 1 {
			log.Warn("agent event stream broken; reopening", zap.Error(err), zap.Int("eventsReceived", received))
		} else {
			log.Debug("agent event stream still broken", zap.Error(err), zap.Int("attempt", failures), zap.Duration("backoff", backoff))
		}
		wait := backoff/2 + rand.N(backoff/2+1) // jitter: agents restarted together do not reconnect together
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(2*backoff, s.MaxBackoff)
	}
}

// watchOnce opens one stream and delivers its events until it breaks.
func (s *AgentEventStream) watchOnce(ctx context.Context, node string) (received int, err error) {
	client, err := s.Agents.Client(node)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.WatchEvents(ctx, &agentv1.WatchEventsRequest{Filter: s.Filter})
	if err != nil {
		return 0, fmt.Errorf("open WatchEvents: %w", err)
	}
	agentEventStreams.Inc()
	defer agentEventStreams.Dec()
	warned := map[DropReason]bool{} // the first drop of each reason per stream is a warning
	for {
		ev, err := stream.Recv()
		if err != nil {
			return received, fmt.Errorf("receive event: %w", err)
		}
		received++
		// The connection, not the message, says which node an event comes from.
		ev.Node = node
		ev.Count = max(ev.Count, 1)
		if reason, detail := s.Origin.VerifyEvent(ctx, node, ev); reason != "" {
			agentEventsDropped.WithLabelValues(node, string(reason)).Inc()
			log := s.Log.Debug
			if !warned[reason] {
				warned[reason] = true
				log = s.Log.Warn
			}
			log("exec event dropped: it cannot be true for the node that sent it", zap.String("node", node), zap.String("reason", string(reason)),
				zap.String("detail", detail), zap.String("namespace", ev.GetNamespace()), zap.String("pod", ev.GetPod()),
				zap.String("policy", ev.GetPolicy()), zap.String("action", ev.GetAction().String()))
			continue
		}
		for _, sink := range s.Sinks {
			sink.HandleExecEvent(ctx, ev)
		}
	}
}
