// Package policy is the WorkloadPolicy reconciler (leader only): PolicyReconciler rolls a
// policy out to the nodes that run its pods, reports whether it is in force (status,
// conditions Ready, Degraded, Weakened, Deleting, WritableRootFilesystem), keeps a
// deleted policy while pods bound to it run (finalizer) and then unloads it on its nodes.
// Weakened and deleted-in-use policies are Warning Events and metrics.
//
// It may import webhook/agents only of the controller's rooms: never binding, learn,
// violations or webhook.
package policy
