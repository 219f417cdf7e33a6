//go:build tools

// Package tools records the control-plane commands built from this module so that
// `go mod tidy` keeps their dependencies. Build them with `make tools` from the repo root.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
