// Package webhook is execgate's controller manager: the pods/binding and pods admission
// webhooks that push a pod's allowlist to the agent on its node the moment the pod is
// assigned one, the WorkloadPolicy reconciler that rolls policy updates out to the nodes
// running the policy's pods and reports status, and the agent discovery and connection pool
// both use.
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
//
// It must not import the agent's server (nodeagent/server) outside tests, touch BPF or
// cgroups, or deny an admission request: enforcement happens on the node, not here.
package webhook
