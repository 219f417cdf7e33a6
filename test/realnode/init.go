package realnode

import (
	"fmt"
	"strings"

	"github.com/execgate/execgate/test/kernels"
)

// stage1 is the initramfs's /init: it copies the root into a tmpfs and
// switches to it, because runc's pivot_root refuses the initial rootfs.
const stage1 = `#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /newroot
$B mount -t tmpfs -o size=85%,mode=0755 tmpfs /newroot
for d in $($B ls -A /); do
	case "$d" in newroot|init) ;; *) $B cp -a "/$d" /newroot/ ;; esac
done
exec $B switch_root /newroot /stage2
`

// Addresses inside the VM; the pod network is the CNI bridge's own.
const podSubnet = "10.244.0.0/24"

// stage2 brings the node up: mounts, modules, the link to the host, cgroup
// controllers, containerd with the local images, the kubelet. Each step
// prints a REALNODE mark the host waits for; a failed step prints
// "REALNODE FAIL <what>".
func stage2(b *Built, nc NodeConfig) string {
	var s strings.Builder
	fmt.Fprintf(&s, `#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
$B mkdir -p /dev/pts /dev/shm
$B mount -t devpts devpts /dev/pts
$B mount -t tmpfs tmpfs /dev/shm
$B mount -t cgroup2 cgroup2 /sys/fs/cgroup
$B mount -t bpf bpf /sys/fs/bpf
$B mount -t tracefs tracefs /sys/kernel/tracing
$B mount -t securityfs securityfs /sys/kernel/security
$B mount -t tmpfs tmpfs /run
$B mkdir -p /usr/local/bin
$B --install -s /usr/local/bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/bin HOME=/root
echo "REALNODE kernel $($B uname -r) lsm $($B cat /sys/kernel/security/lsm)"
fail() { echo "REALNODE FAIL $*"; }
`)
	for _, m := range b.Modules {
		fmt.Fprintf(&s, "$B insmod %s || fail insmod %s\n", m, m)
	}
	fmt.Fprintf(&s, `$B hostname %[1]s
$B ip link set lo up
$B ip link set eth0 up || fail eth0
$B ip addr add %[2]s/30 dev eth0
$B ip route add default via %[3]s
echo 1 > /proc/sys/net/ipv4/ip_forward
echo "+cpuset +cpu +io +memory +pids" > /sys/fs/cgroup/cgroup.subtree_control || fail cgroup controllers
$B mkdir -p /var/lib/containerd /var/lib/kubelet /var/log/pods /var/log /run/containerd /var/run/nri /tmp /root
$B chmod 1777 /tmp
echo "REALNODE network $($B ip -4 -o addr show dev eth0)"
# Each daemon runs under a restart loop, as a service manager would run it: a test
# kills one (TestRealNodeRestarts) and it comes back; each exit is a mark.
supervise() {
	name=$1; shift
	( while true; do "$@"; echo "REALNODE exited $name $?"; $B sleep 1; done ) &
}
supervise containerd sh -c 'exec containerd --config /etc/containerd/config.toml >>/var/log/containerd.log 2>&1'
i=0
until [ -S /run/containerd/containerd.sock ]; do
	i=$((i+1))
	if [ $i -gt 600 ]; then
		$B ps; $B ls -la /run/containerd /var/log; $B cat /var/log/containerd.log
		fail containerd socket not there after 120 s
		break
	fi
	$B sleep 0.2
done
echo "REALNODE containerd socket after $((i/5)) s"
for img in /images/*.tar; do
	ctr -n k8s.io images import "$img" >/dev/null || fail import $img
done
echo "REALNODE containerd ready"
%[4]ssupervise kubelet sh -c 'exec kubelet --config=/etc/kubelet/config.yaml --kubeconfig=/etc/kubelet/kubeconfig \
	--hostname-override=%[1]s --node-ip=%[2]s >>/var/log/kubelet.log 2>&1'
echo "REALNODE kubelet started"
exec $B tail -n +1 -F /var/log/kubelet.log /var/log/containerd.log
`, nc.Name, nc.Link.NodeIP, nc.Link.HostIP, agentStart(nc.Agent))
	return s.String()
}

// agentStart starts the agent and waits for its /readyz (health address
// 127.0.0.1:9091, the agent's default port) before the kubelet comes up.
func agentStart(a *AgentConfig) string {
	if a == nil {
		return ""
	}
	quoted := make([]string, len(a.Args))
	for i, arg := range a.Args {
		quoted[i] = kernels.ShellQuote(arg)
	}
	return `supervise agent sh -c ` + kernels.ShellQuote(`exec execgate-agent `+strings.Join(quoted, " ")+` >>/var/log/agent.log 2>&1`) + `
i=0
until $B wget -q -O /dev/null http://127.0.0.1:9091/readyz; do
	i=$((i+1))
	if [ $i -gt 300 ]; then $B cat /var/log/agent.log; fail agent not ready after 300 s; break; fi
	$B sleep 1
done
echo "REALNODE agent ready after ${i} s"
$B tail -n +1 -F /var/log/agent.log &
`
}

// containerdConfig: CRI with runc (cgroupfs, as the kubelet), the local
// pause image, the CNI bridge, and NRI enabled for the agent.
const containerdConfig = `version = 2
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "` + PauseImage + `"
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"

[plugins."io.containerd.nri.v1.nri"]
  disable = false
  socket_path = "/var/run/nri/nri.sock"
  plugin_path = "/opt/nri/plugins"
  plugin_config_path = "/etc/nri/conf.d"
`

const cniConfig = `{
  "cniVersion": "1.0.0",
  "name": "execgate",
  "plugins": [{
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": true,
    "ipMasq": false,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "` + podSubnet + `"}]], "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
`

// kubeletConfig: the cgroupfs driver (no systemd in the VM). The API server
// reaches the kubelet (exec, logs) without a client certificate, so the
// kubelet's API allows anonymous requests: the VM's link is reachable only
// from this machine's host side, and a test node holds no secrets.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
failSwapOn: false
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
resolvConf: /etc/resolv.conf
registerNode: true
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "50Mi"
protectKernelDefaults: false
nodeStatusReportFrequency: 10s
podPidsLimit: -1
`
