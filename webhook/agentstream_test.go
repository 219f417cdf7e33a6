package webhook

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/execgate/execgate/nodeagent/podpolicy"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// eventSource is an agent backend whose exec events the test emits; the rest answers
// like recordingBackend.
type eventSource struct {
	*recordingBackend
	mu   sync.Mutex
	subs map[chan *agentv1.ExecEvent]struct{}
}

func newEventSource() *eventSource {
	return &eventSource{recordingBackend: newRecordingBackend(), subs: map[chan *agentv1.ExecEvent]struct{}{}}
}

func (b *eventSource) Subscribe(ctx context.Context, _ podpolicy.EventFilter) (<-chan *agentv1.ExecEvent, func()) {
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

func (b *eventSource) subscribers() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

// emit hands ev to every subscriber, as the agent's fan-out does (the queues are deep
// enough that nothing is dropped in these tests).
func (b *eventSource) emit(t *testing.T, ev *agentv1.ExecEvent) {
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

// acceptingOrigin accepts every event: for tests of the stream's transport and of the
// sinks, whose events are not about real pods. TestForgedEventsDropped tests EventOrigin.
type acceptingOrigin struct{}

func (acceptingOrigin) VerifyEvent(context.Context, string, *agentv1.ExecEvent) (DropReason, string) {
	return "", ""
}

// sinkFunc adapts a function to ExecEventSink.
type sinkFunc func(ctx context.Context, ev *agentv1.ExecEvent)

func (f sinkFunc) HandleExecEvent(ctx context.Context, ev *agentv1.ExecEvent) { f(ctx, ev) }

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAgentEventStreamReconnects runs the stream against real agent gRPC servers (mTLS)
// found through agent discovery and the connection pool: it follows an agent that
// restarts on the same address, one that moves to another address, a node that joins,
// and stops streaming from a node whose agent is gone. Every sink gets every event, with
// the node it was streamed from.
func TestAgentEventStreamReconnects(t *testing.T) {
	fleet := newAgentFleet(t)
	dir := NewAgentDirectory("execgate", labels.Everything(), 0, zaptest.NewLogger(t))
	pool, err := NewAgentPool(fleet.dialer, dir, 8, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)

	type received struct {
		sink int
		ev   *agentv1.ExecEvent
	}
	got := make(chan received, 64)
	var sinks []ExecEventSink
	for i := range 2 {
		sinks = append(sinks, sinkFunc(func(_ context.Context, ev *agentv1.ExecEvent) { got <- received{i, ev} }))
	}
	stream := &AgentEventStream{Nodes: dir, Agents: pool, Origin: acceptingOrigin{}, Sinks: sinks,
		Resync: 50 * time.Millisecond, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Log: zaptest.NewLogger(t)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- stream.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start: %v", err)
		}
	}()

	expect := func(src *eventSource, node, exe string) {
		t.Helper()
		waitUntil(t, node+" stream open", func() bool { return src.subscribers() == 1 })
		src.emit(t, &agentv1.ExecEvent{Node: "claims-another-node", Namespace: "shop", Pod: "web-1", Executable: exe,
			Action: agentv1.Action_ACTION_DENIED})
		seen := map[int]bool{}
		for len(seen) < len(sinks) {
			select {
			case r := <-got:
				if r.ev.Executable != exe || r.ev.Node != node || r.ev.Count != 1 {
					t.Fatalf("sink %d got %v, want %s from %s with count 1", r.sink, r.ev, exe, node)
				}
				seen[r.sink] = true
			case <-time.After(10 * time.Second):
				t.Fatalf("event %s from %s not delivered to every sink: %v", exe, node, seen)
			}
		}
	}

	a1 := newEventSource()
	addr, stop := fleet.serve(t, "node-a", "127.0.0.1:0", a1)
	dir.set("agent-a", "node-a", addr)
	expect(a1, "node-a", "/bin/first")

	// The agent restarts: same address, a new process with no subscribers.
	stop()
	a2 := newEventSource()
	_, stop2 := fleet.serve(t, "node-a", addr, a2)
	expect(a2, "node-a", "/bin/after-restart")

	// The agent moves (new pod, new IP): discovery says so, the pool redials.
	a3 := newEventSource()
	addr3, _ := fleet.serve(t, "node-a", "127.0.0.1:0", a3)
	dir.set("agent-a", "node-a", addr3)
	expect(a3, "node-a", "/bin/after-move")
	waitUntil(t, "stream to the old address closed", func() bool { return a2.subscribers() == 0 })
	stop2()

	// A node joins; then node-a's agent goes away: its stream stops, node-b's stays.
	b := newEventSource()
	addrB, _ := fleet.serve(t, "node-b", "127.0.0.1:0", b)
	dir.set("agent-b", "node-b", addrB)
	expect(b, "node-b", "/bin/on-b")
	dir.set("agent-a", "", "")
	waitUntil(t, "node-a stream stopped", func() bool { return a3.subscribers() == 0 })
	time.Sleep(200 * time.Millisecond) // a few resyncs and backoffs: node-a must stay closed
	if n := a3.subscribers(); n != 0 {
		t.Fatalf("node-a streamed again after its agent left discovery (%d subscribers)", n)
	}
	expect(b, "node-b", "/bin/still-on-b")
}
