//go:build tools

// Package tools records the helm command built from this module. Build it with
// `make tools` from the repo root.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
