package webhooktest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/execgate/execgate/nodeagent/podpolicy"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/webhook/agents"
)

// EventSource is an agent backend whose exec events the test emits; the rest answers
// like RecordingBackend.
type EventSource struct {
	*RecordingBackend
	mu   sync.Mutex
	subs map[chan *agentv1.ExecEvent]struct{}
}

// NewEventSource is an event source without subscribers.
func NewEventSource() *EventSource {
	return &EventSource{RecordingBackend: NewRecordingBackend(), subs: map[chan *agentv1.ExecEvent]struct{}{}}
}

// Subscribe opens a stream that Emit feeds until ctx ends or the returned cancel runs.
func (b *EventSource) Subscribe(ctx context.Context, _ podpolicy.EventFilter) (<-chan *agentv1.ExecEvent, func()) {
	ch := make(chan *agentv1.ExecEvent, 4096)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	var once sync.Once
	cancel := func() {
		once.Do(func() {
			b.mu.Lock()
			delete(b.subs, ch)
			b.mu.Unlock()
			close(ch)
		})
	}
	stop := context.AfterFunc(ctx, cancel)
	return ch, func() { stop(); cancel() }
}

// Subscribers counts the open streams.
func (b *EventSource) Subscribers() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

// Emit hands ev to every subscriber, as the agent's fan-out does (the queues are deep
// enough that nothing is dropped in these tests).
func (b *EventSource) Emit(t *testing.T, ev *agentv1.ExecEvent) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- ev:
		default:
			t.Fatal("event source: subscriber queue full")
		}
	}
}

// AcceptingOrigin accepts every event: for tests of the stream's transport and of the
// sinks, whose events are not about real pods. TestForgedEventsDropped tests EventOrigin.
type AcceptingOrigin struct{}

// VerifyEvent accepts ev.
func (AcceptingOrigin) VerifyEvent(context.Context, string, *agentv1.ExecEvent) (agents.DropReason, string) {
	return "", ""
}

// SinkFunc adapts a function to ExecEventSink.
type SinkFunc func(ctx context.Context, ev *agentv1.ExecEvent)

// HandleExecEvent calls f.
func (f SinkFunc) HandleExecEvent(ctx context.Context, ev *agentv1.ExecEvent) { f(ctx, ev) }

// WaitUntil polls cond every 10ms and fails the test after 15s.
func WaitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
