// Package agents is the controller's side of the node agents' gRPC API: what every
// other room of webhook uses to reach them.
//
// It owns:
//   - AgentDirectory (node -> agent address, from the agent pods or a static map) and
//     AgentPool (one mTLS gRPC connection per node, bounded LRU, closed on eviction and
//     when a node's endpoint changes; the agent's certificate must name the node).
//   - CompilePodPolicy, the ApplyPodPolicy request for a pod under its policy, and
//     WritableRootContainers, the containers where that policy can be bypassed.
//   - Pusher: one ApplyPodPolicy with a bounded deadline, its Outcome counted
//     (execgate_controller_pushes_total, push_duration_seconds).
//   - AgentEventStream (leader only): one WatchEvents stream per agent, reopened with
//     backoff, handing every event its Origin accepts to each ExecEventSink. A sink must
//     return quickly and must not modify the event, which all sinks share.
//   - EventOrigin, the Origin the controller wires: an event reaches the sinks only if
//     the pod it names runs on the node whose stream carried it, under the policy it
//     names, in that policy's mode; others are dropped and counted (a node must not speak
//     for pods it does not run).
//
// It must not import any other room of webhook (binding, policy, learn, violations,
// agentsigner) nor webhook itself: they all import it. It writes nothing to the API
// server.
package agents
