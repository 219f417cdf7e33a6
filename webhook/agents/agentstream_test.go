package agents_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"k8s.io/apimachinery/pkg/labels"

	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
	"github.com/execgate/execgate/webhook/agents"
	"github.com/execgate/execgate/webhook/internal/webhooktest"
)

// TestAgentEventStreamReconnects runs the stream against real agent gRPC servers (mTLS)
// found through agent discovery and the connection pool: it follows an agent that
// restarts on the same address, one that moves to another address, a node that joins,
// and stops streaming from a node whose agent is gone. Every sink gets every event, with
// the node it was streamed from.
func TestAgentEventStreamReconnects(t *testing.T) {
	fleet := webhooktest.NewFleet(t)
	dir := agents.NewAgentDirectory("execgate", labels.Everything(), 0, zaptest.NewLogger(t))
	pool, err := agents.NewAgentPool(fleet.Dialer, dir, 8, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)

	type received struct {
		sink int
		ev   *agentv1.ExecEvent
	}
	got := make(chan received, 64)
	var sinks []agents.ExecEventSink
	for i := range 2 {
		sinks = append(sinks, webhooktest.SinkFunc(func(_ context.Context, ev *agentv1.ExecEvent) { got <- received{i, ev} }))
	}
	stream := &agents.AgentEventStream{Nodes: dir, Agents: pool, Origin: webhooktest.AcceptingOrigin{}, Sinks: sinks,
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

	expect := func(src *webhooktest.EventSource, node, exe string) {
		t.Helper()
		webhooktest.WaitUntil(t, node+" stream open", func() bool { return src.Subscribers() == 1 })
		src.Emit(t, &agentv1.ExecEvent{Node: "claims-another-node", Namespace: "shop", Pod: "web-1", Executable: exe,
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

	a1 := webhooktest.NewEventSource()
	addr, stop := fleet.Serve(t, "node-a", "127.0.0.1:0", a1)
	dir.SetAgent("agent-a", "node-a", addr)
	expect(a1, "node-a", "/bin/first")

	// The agent restarts: same address, a new process with no subscribers.
	stop()
	a2 := webhooktest.NewEventSource()
	_, stop2 := fleet.Serve(t, "node-a", addr, a2)
	expect(a2, "node-a", "/bin/after-restart")

	// The agent moves (new pod, new IP): discovery says so, the pool redials.
	a3 := webhooktest.NewEventSource()
	addr3, _ := fleet.Serve(t, "node-a", "127.0.0.1:0", a3)
	dir.SetAgent("agent-a", "node-a", addr3)
	expect(a3, "node-a", "/bin/after-move")
	webhooktest.WaitUntil(t, "stream to the old address closed", func() bool { return a2.Subscribers() == 0 })
	stop2()

	// A node joins; then node-a's agent goes away: its stream stops, node-b's stays.
	b := webhooktest.NewEventSource()
	addrB, _ := fleet.Serve(t, "node-b", "127.0.0.1:0", b)
	dir.SetAgent("agent-b", "node-b", addrB)
	expect(b, "node-b", "/bin/on-b")
	dir.SetAgent("agent-a", "", "")
	webhooktest.WaitUntil(t, "node-a stream stopped", func() bool { return a3.Subscribers() == 0 })
	time.Sleep(200 * time.Millisecond) // a few resyncs and backoffs: node-a must stay closed
	if n := a3.Subscribers(); n != 0 {
		t.Fatalf("node-a streamed again after its agent left discovery (%d subscribers)", n)
	}
	expect(b, "node-b", "/bin/still-on-b")
}
