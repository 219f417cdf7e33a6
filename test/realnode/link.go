package realnode

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"

	"github.com/execgate/execgate/test/e2e/forward"
)

// Link is the host side of a node's network: a tap device on a /30 of
// 198.18.0.0/22 (RFC 2544's benchmarking range: nothing routes it; the kubelet
// refuses a link-local node address, so the simulated nodes' 169.254.0.0/16
// would leave the Node without an InternalIP and the API server without a way
// to the kubelet) and a forwarder from the host address to the API server's
// loopback address. The VM reaches nothing else: no route leaves the /30 on
// the host side.
type Link struct {
	Tap    string
	HostIP string
	NodeIP string
	// APIServer is the address the node's kubelet dials (host side of the tap).
	APIServer string

	fwd *forward.Forwarder
}

// NewLink creates the tap and the forwarder to apiserver (host:port).
func NewLink(apiserver string) (_ *Link, err error) {
	ips, err := hostIPs()
	if err != nil {
		return nil, err
	}
	idx := -1
	for i := range 256 {
		host := fmt.Sprintf("198.18.%d.%d", i/64, i%64*4+1)
		if _, err := net.InterfaceByName(fmt.Sprintf("egrn%d", i)); err == nil {
			continue // another test's, or left by a killed one
		}
		if !ips[host] {
			idx = i
			break
		}
	}
	if idx < 0 {
		return nil, errors.New("real node: no free /30 in 198.18.0.0/22")
	}
	l := &Link{
		Tap:    fmt.Sprintf("egrn%d", idx),
		HostIP: fmt.Sprintf("198.18.%d.%d", idx/64, idx%64*4+1),
		NodeIP: fmt.Sprintf("198.18.%d.%d", idx/64, idx%64*4+2),
	}
	if err := ip("tuntap", "add", "dev", l.Tap, "mode", "tap"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = ip("link", "del", l.Tap)
		}
	}()
	if err := ip("addr", "add", l.HostIP+"/30", "dev", l.Tap); err != nil {
		return nil, err
	}
	if err := ip("link", "set", l.Tap, "up"); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(l.HostIP, "0"))
	if err != nil {
		return nil, fmt.Errorf("real node: listen on the tap's address: %w", err)
	}
	l.APIServer = ln.Addr().String()
	l.fwd = forward.Start(ln, apiserver)
	return l, nil
}

// Close stops the forwarder and deletes the tap.
func (l *Link) Close() error {
	return errors.Join(l.fwd.Close(), ip("link", "del", l.Tap))
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func hostIPs() (map[string]bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			out[n.IP.String()] = true
		}
	}
	return out, nil
}
