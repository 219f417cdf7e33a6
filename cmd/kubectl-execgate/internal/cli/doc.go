// Package cli is the kubectl-execgate plugin: its commands (status, events, proposals,
// promote, explain), their flags, and how their results are printed (tables for people,
// -o json|yaml for scripts).
//
// It reads and writes Kubernetes objects only, through the API server the kubeconfig
// names: ExecgateNodes (what each node's agent reports it enforces), WorkloadPolicies,
// WorkloadPolicyProposals, Pods and Events. The promote command is webhook/promote's
// Promote plus its output, so that the plugin and Go callers promote alike. It must not
// talk to agents or the controller directly (their endpoints are not reachable from a
// user's machine), and it must not print a stack trace: bad arguments are usage errors
// (exit code 2), failures are one "error: ..." line (exit code 1).
package cli
