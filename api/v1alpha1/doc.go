// Package v1alpha1 owns execgate's Kubernetes API, group execgate.io, version v1alpha1:
// the WorkloadPolicy (the allowlist a workload's pods run under, with its Learn, Monitor or
// Protect mode), the WorkloadPolicyProposal (what Learn mode observed, ready to be
// promoted into a policy) and the ExecgateNode (cluster-scoped, one per node: what that
// node's agent reports it enforces). An ExecgateNode has a status and no spec: only
// that node's agent writes it, and nothing is configured through it.
//
// The package is the single place that defines what a valid policy is. The CRD schema
// (OpenAPI and CEL rules generated from the markers here) rejects bad objects at the API
// server; Validate applies the same rules in Go so that the webhook and the node agent
// never act on an object that slipped past an older or hand-edited CRD.
//
// It must not import anything but the Go standard library, k8s.io/apimachinery and
// internal/execpath (a standard-library-only leaf holding the path rules the node agent
// applies too): it is imported by every other execgate package and by users' tooling, so
// it stays free of controller-runtime, client-go and of execgate's other packages.
//
// +kubebuilder:object:generate=true
// +groupName=execgate.io
package v1alpha1

// Generated files are committed (see mk/api.mk, target generate-api).
//go:generate go tool controller-gen object paths=.
//go:generate go tool controller-gen crd paths=. output:crd:dir=../../deploy/helm/execgate/crds
