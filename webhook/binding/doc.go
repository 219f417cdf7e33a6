// Package binding is the admission path: BindingHandler (/validate-pods-binding) and
// PodHandler (/validate-pods) push a pod's policy to the agent on its node the moment
// the pod is assigned one. Both fail open: every answer is "allowed", because a slow or
// broken push must never stop scheduling. Malformed requests are allowed too, with a
// warning that says what was wrong (the binding must go through; the policy reconciler
// catches up from the pod's labels). It counts every request
// (execgate_controller_bindings_total, webhook_duration_seconds) and records Warning
// Events on the pod.
//
// It may import webhook/agents only of the controller's rooms: never learn or
// violations (the exec events are no business of admission), nor policy or webhook.
package binding
