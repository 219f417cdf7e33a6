// Package learn turns Learn mode's exec events into proposals: ProposalLearner, an
// agents.ExecEventSink (leader only), merges them into one WorkloadPolicyProposal per
// workload, buffered (bounded) and written in batches. It writes proposals only: a
// proposal becomes a policy when a user promotes it (webhook/promote).
//
// It may import webhook/agents only of the controller's rooms: never binding, policy,
// violations or webhook.
package learn
