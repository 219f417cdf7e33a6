package agents

import (
	"errors"
	"fmt"
	"sync"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"

	"github.com/execgate/execgate/nodeagent/agentclient"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// ErrNoAgent means no agent is known for a node (not discovered yet, not ready, or not
// in the static map).
var ErrNoAgent = errors.New("no agent known for node")

// DefaultPoolSize bounds the open agent connections: one per node, least recently used
// closed first. Pods per cluster are many, nodes are at most a few thousand.
const DefaultPoolSize = 1024

// AgentPool hands out one gRPC connection per node, dialled on first use with the
// Dialer's mTLS credentials; every handshake requires the agent's certificate to name
// that node (agentclient.Dialer.DialNode). A connection is closed when the LRU evicts it and when the
// node's agent address changes. Safe for concurrent use.
type AgentPool struct {
	dialer    *agentclient.Dialer
	directory *AgentDirectory
	log       *zap.Logger

	mu    sync.Mutex // serialises get-or-dial so two callers never dial the same node twice
	conns *lru.Cache[string, *pooledConn]
}

type pooledConn struct {
	address string
	client  *agentclient.Client
}

// NewAgentPool returns a pool of at most size connections (DefaultPoolSize if <= 0) and
// subscribes it to the directory's endpoint changes.
func NewAgentPool(dialer *agentclient.Dialer, directory *AgentDirectory, size int, log *zap.Logger) (*AgentPool, error) {
	if size <= 0 {
		size = DefaultPoolSize
	}
	if log == nil {
		log = zap.NewNop()
	}
	p := &AgentPool{dialer: dialer, directory: directory, log: log}
	conns, err := lru.NewWithEvict(size, func(node string, c *pooledConn) {
		if err := c.client.Close(); err != nil {
			log.Debug("close agent connection", zap.String("node", node), zap.Error(err))
		}
	})
	if err != nil {
		return nil, fmt.Errorf("agent pool: %w", err)
	}
	p.conns = conns
	directory.onChange = p.Forget
	return p, nil
}

// Client returns the client of node's agent, dialling it if needed.
func (p *AgentPool) Client(node string) (agentv1.AgentServiceClient, error) {
	addr, ok := p.directory.Lookup(node)
	if !ok {
		return nil, fmt.Errorf("node %q: %w", node, ErrNoAgent)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns.Get(node); ok {
		if c.address == addr {
			return c.client, nil
		}
		p.conns.Remove(node) // the agent moved (restart, new IP): close the old connection
	}
	// The agent must prove it is node's: its certificate names node (DialNode).
	client, err := p.dialer.DialNode(node, addr)
	if err != nil {
		return nil, fmt.Errorf("node %q: %w", node, err)
	}
	p.conns.Add(node, &pooledConn{address: addr, client: client})
	return client, nil
}

// Forget closes node's connection, if any.
func (p *AgentPool) Forget(node string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns.Remove(node)
}

// Close closes every connection.
func (p *AgentPool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns.Purge()
}

// Len is the number of open connections.
func (p *AgentPool) Len() int { return p.conns.Len() }
