//go:build tools

// Package tools records the etcd command built from this module (the module root of
// go.etcd.io/etcd/server/v3 is package main and calls etcdmain.Main). Build it with
// `make tools` from the repo root.
package tools

import _ "go.etcd.io/etcd/server/v3"
