// Package webhook is execgate's controller manager: the pods/binding and pods admission
// webhooks that push a pod's allowlist to the agent on its node the moment the pod is
// assigned one, the WorkloadPolicy reconciler that rolls policy updates out to the nodes
// running the policy's pods and reports status, the agent discovery and connection pool
// both use, and the stream of exec events from the agents that becomes violation Events
// and Learn proposals.
//
// It owns:
//   - BindingHandler (/validate-pods-binding) and PodHandler (/validate-pods). Both fail
//     open: every answer is "allowed", because a slow or broken push must never stop
//     scheduling. Malformed requests are allowed too, with a warning that says what was wrong
//     (the binding must go through; the reconciler catches up from the pod's labels).
//   - AgentDirectory (node -> agent address, from the agent pods or a static map) and
//     AgentPool (one mTLS gRPC connection per node, bounded LRU, closed on eviction and when
//     a node's endpoint changes).
//   - PolicyReconciler (leader-elected) and the controller's Prometheus metrics.
//   - AgentEventStream (leader only): one WatchEvents stream per agent, reopened with
//     backoff, handing every event its Origin accepts to each ExecEventSink. A sink must
//     return quickly and must not modify the event, which all sinks share.
//   - EventOrigin, the Origin the controller wires: an event reaches the sinks only if the
//     pod it names runs on the node whose stream carried it, under the policy it names, in
//     that policy's mode; others are dropped and counted (a node must not speak for pods
//     it does not run).
//   - ViolationEvents, a sink: Monitor and Protect violations as Warning Events on the pod,
//     one Event per series (pod, container, executable, action) whose count it raises at
//     most once per window, with writes rate-limited. It writes Events and nothing else.
//   - ProposalLearner, a sink: Learn events merged into one WorkloadPolicyProposal per
//     workload, buffered (bounded) and written in batches. It writes proposals only: a
//     proposal becomes a policy when a user promotes it.
//
// Subpackage promote is that promotion (proposal -> WorkloadPolicy in Monitor or
// Protect). It must not import this package, so that the kubectl plugin can use it
// without the controller.
//
// It must not import the agent's server (nodeagent/server) outside tests, touch BPF or
// cgroups, or deny an admission request: enforcement happens on the node, not here.
package webhook
