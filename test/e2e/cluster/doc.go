// Package cluster runs a real Kubernetes control plane for execgate's e2e tests: etcd,
// kube-apiserver and kube-scheduler as child processes on loopback, with a PKI, service
// account keys and kubeconfigs generated in a temporary directory.
//
// It owns those processes and that directory: Stop (or the test's Cleanup) kills every
// process group it started and removes the directory. It runs no kubelet, no
// kube-controller-manager and no kube-proxy, so it must not be used to assert anything
// that those components do (node lifecycle taints, service accounts in new namespaces,
// Service routing); helpers such as CreateNodes and CreateNamespace stand in for the
// few of their effects that the tests need.
//
// The binaries come from `make tools` (see mk/tools.mk) and are looked up in
// $EXECGATE_BIN, else <repo>/bin. RequireE2E skips a test when they are missing, or
// fails it when EXECGATE_REQUIRE_E2E=1.
package cluster
