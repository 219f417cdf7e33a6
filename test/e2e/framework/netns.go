package framework

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/execgate/execgate/test/e2e/forward"
)

// nodeNetwork is a simulated node's own network: a network namespace the agent
// runs in, joined to the host by a veth pair on a link-local /30 (169.254.0.0/16:
// addresses of this machine's own namespaces, nothing routes them elsewhere). The
// controller reaches the agent across the veth; cutting the veth is a real
// partition (packets dropped by the kernel, no connection reset). The agent's path
// to the API server is a forwarder socket made inside the namespace, which the
// partition does not cut: the fault is between controller and agent.
type nodeNetwork struct {
	name      string // ip netns name; /run/netns/<name>
	hostIf    string
	hostAddr  string // host side of the veth
	agentAddr string // namespace side: the agent listens here

	fwd *forward.Forwarder // inside the namespace, to the API server
}

// networkSeq numbers this process's node networks; with the pid it keeps names
// and subnets of concurrent test processes apart.
var (
	networkMu  sync.Mutex
	networkSeq int
)

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// newNodeNetwork creates the namespace, the veth pair and the forwarder to the
// API server at apiserver (a URL whose host is a loopback address).
func newNodeNetwork(apiserver string) (_ *nodeNetwork, err error) {
	networkMu.Lock()
	networkSeq++
	seq := networkSeq
	networkMu.Unlock()
	subnet, err := freeLinkLocalSubnet()
	if err != nil {
		return nil, err
	}
	id := fmt.Sprintf("%d%02d", os.Getpid()%100000, seq%100)
	n := &nodeNetwork{
		name:      "execgate-" + id,
		hostIf:    "egh" + id, // interface names: 15 bytes at most
		hostAddr:  fmt.Sprintf("169.254.%d.%d", subnet/64, subnet%64*4+1),
		agentAddr: fmt.Sprintf("169.254.%d.%d", subnet/64, subnet%64*4+2),
	}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	peer := "egn" + id
	for _, args := range [][]string{
		{"netns", "add", n.name},
		{"link", "add", n.hostIf, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", n.name},
		{"addr", "add", n.hostAddr + "/30", "dev", n.hostIf},
		{"link", "set", n.hostIf, "up"},
		{"-n", n.name, "addr", "add", n.agentAddr + "/30", "dev", peer},
		{"-n", n.name, "link", "set", peer, "up"},
		{"-n", n.name, "link", "set", "lo", "up"},
	} {
		if err := ipCmd(args...); err != nil {
			return nil, err
		}
	}
	u, err := url.Parse(apiserver)
	if err != nil {
		return nil, fmt.Errorf("API server URL %q: %w", apiserver, err)
	}
	ln, err := n.listenInside("tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("forwarder to the API server in %s: %w", n.name, err)
	}
	n.fwd = forward.Start(ln, u.Host) // dialled from the host's namespace
	return n, nil
}

// freeLinkLocalSubnet picks a /30 in 169.254.100.0/22 that no interface of
// this namespace uses: the index i is 169.254.(100+i/64).(i%64*4)/30.
func freeLinkLocalSubnet() (int, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return 0, err
	}
	used := map[int]bool{}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip := ipn.IP.To4()
		if ip == nil || ip[0] != 169 || ip[1] != 254 || ip[2] < 100 || ip[2] > 103 {
			continue
		}
		used[int(ip[2]-100)*64+int(ip[3])/4] = true
	}
	for i := 0; i < 256; i++ {
		if !used[i] {
			return 100*64 + i, nil
		}
	}
	return 0, errors.New("no free /30 in 169.254.100.0/22")
}

// command wraps an agent command line so that it runs in the namespace. nsenter
// joins the network namespace only; `ip netns exec` would also remount /sys and
// hide bpffs and cgroupfs from the agent.
func (n *nodeNetwork) command(bin string, args []string) (string, []string) {
	return "nsenter", append([]string{"--net=" + filepath.Join("/run/netns", n.name), "--", bin}, args...)
}

// listenInside opens a listener in the namespace from a thread that visits it.
func (n *nodeNetwork) listenInside(network, addr string) (net.Listener, error) {
	ns, err := os.Open(filepath.Join("/run/netns", n.name))
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, err
	}
	defer self.Close()
	runtime.LockOSThread()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter %s: %w", n.name, err)
	}
	ln, lerr := net.Listen(network, addr)
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// This thread stays in the namespace: never unlock it, the runtime
		// then ends it with this goroutine.
		if ln != nil {
			ln.Close()
		}
		return nil, fmt.Errorf("leave %s: %w", n.name, err)
	}
	runtime.UnlockOSThread()
	return ln, lerr
}

// setDown cuts (true) or restores (false) the veth between host and node.
func (n *nodeNetwork) setDown(down bool) error {
	state := "up"
	if down {
		state = "down"
	}
	return ipCmd("link", "set", n.hostIf, state)
}

// close removes the namespace, which destroys the veth pair.
func (n *nodeNetwork) close() error {
	if n.fwd != nil {
		_ = n.fwd.Close()
	}
	_ = ipCmd("link", "del", n.hostIf) // gone already if the namespace went first
	if err := ipCmd("netns", "del", n.name); err != nil && !strings.Contains(err.Error(), "No such file") {
		return err
	}
	return nil
}
