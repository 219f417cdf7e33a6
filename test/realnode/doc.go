// Package realnode runs a real Kubernetes node for the end-to-end tests: a qemu VM
// (software emulation) booting the kernel of a test/kernels/matrix row (Debian's
// 6.12) with cgroup v2 at /sys/fs/cgroup, Debian's containerd (CRI plugin, NRI
// enabled), runc and CNI plugins, and the kubelet built from the pinned
// k8s.io/kubernetes module (bin/kubelet, `make tools`). The control plane stays
// on the host; the VM reaches it through a tap device on a link-local /30 and a
// forwarder to the API server's loopback address, and nothing else: no registry
// is reachable, so the pause and test images are built here (images.go) and
// imported with `ctr -n k8s.io images import` at boot.
//
// The VM's root is the initramfs copied into a tmpfs and entered with
// switch_root, so runc's pivot_root works as on a disk-backed node.
//
// The tests are behind the realnode build tag and run by their own `make test`
// stage (one VM at a time on the 2-core machine, not beside the other packages).
package realnode
