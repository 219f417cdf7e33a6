// Package webhook is execgate's controller manager: Run reads the Config (one field per
// flag of cmd/execgate-controller), builds the manager and wires the rooms below into it.
// It owns the wiring and nothing else: the webhooks and agent discovery run on every
// replica; the policy reconciler, the agent event stream and its sinks on the leader only.
//
// The rooms, each a package with its own doc:
//   - agents: who the node agents are (AgentDirectory), one mTLS connection per node
//     (AgentPool), what is sent to them (CompilePodPolicy, Pusher) and what comes back
//     (AgentEventStream, checked by EventOrigin, handed to each ExecEventSink).
//   - binding: the pods/binding and pods admission webhooks, which push a pod's policy
//     the moment it is assigned a node. They fail open.
//   - policy: the WorkloadPolicy reconciler (rollout to the nodes running the policy's
//     pods, status, finalizer).
//   - learn: ProposalLearner, a sink: Learn events become WorkloadPolicyProposals.
//   - violations: ViolationEvents, a sink: Monitor and Protect violations become
//     aggregated Warning Events on the pod.
//   - agentsigner: the agents' serving certificates, the controller's client
//     certificate and the published agent CA bundle.
//   - promote: proposal -> WorkloadPolicy, shared with the kubectl plugin.
//
// Imports run one way: webhook -> binding, policy, learn, violations -> agents. The
// admission path (binding) must not import policy, learn or violations, and no room
// imports another sideways or this package; promote imports no other room, so that the
// kubectl plugin can use it without the controller.
//
// None of it may import the agent's server (nodeagent/server) outside tests, touch BPF
// or cgroups, or deny an admission request: enforcement happens on the node, not here.
package webhook
