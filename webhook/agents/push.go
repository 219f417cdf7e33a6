package agents

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// AgentClients returns the agent client of a node, or an error wrapping ErrNoAgent.
// *AgentPool implements it.
type AgentClients interface {
	Client(node string) (agentv1.AgentServiceClient, error)
}

// Pusher sends ApplyPodPolicy to the agent of a node with a bounded deadline, and counts
// the outcome and duration.
type Pusher struct {
	Agents  AgentClients
	Timeout time.Duration
}

// Push returns the outcome (pushed, noop, timeout, no_agent, error) and, unless pushed or
// noop, the error that explains it.
func (p *Pusher) Push(ctx context.Context, node string, req *agentv1.ApplyPodPolicyRequest) (Outcome, error) {
	outcome, err := p.push(ctx, node, req)
	pushesTotal.WithLabelValues(string(outcome)).Inc()
	return outcome, err
}

func (p *Pusher) push(ctx context.Context, node string, req *agentv1.ApplyPodPolicyRequest) (Outcome, error) {
	client, err := p.Agents.Client(node)
	if errors.Is(err, ErrNoAgent) {
		return OutcomeNoAgent, err
	}
	if err != nil {
		return OutcomeError, fmt.Errorf("connect to agent: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, p.Timeout) // or less: the caller's deadline
	defer cancel()
	start := time.Now()
	deadline, _ := ctx.Deadline()
	resp, err := client.ApplyPodPolicy(ctx, req)
	pushDuration.Observe(time.Since(start).Seconds())
	switch {
	case err == nil && resp.GetApplied():
		return OutcomePushed, nil
	case err == nil:
		return OutcomeNoop, nil
	case status.Code(err) == codes.DeadlineExceeded || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return OutcomeTimeout, fmt.Errorf("apply pod policy on node %s: no answer within %s: %w", node, deadline.Sub(start).Round(time.Millisecond), err)
	default:
		return OutcomeError, fmt.Errorf("apply pod policy on node %s: %w", node, err)
	}
}
