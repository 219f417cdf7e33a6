//go:build tools

// Package tools records the kubeconform command built from this module. Build it with
// `make tools` from the repo root.
package tools

import _ "github.com/yannh/kubeconform/cmd/kubeconform"
