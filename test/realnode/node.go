package realnode

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/execgate/execgate/test/kernels"
)

// NodeConfig is one boot of a built node.
type NodeConfig struct {
	Name       string // the Node's name (kubelet --hostname-override)
	Kubeconfig []byte // the kubelet's, pointing at the host side of the link
	Link       *Link
	Log        io.Writer // the VM's console, also kept in the node's log file
	// Agent, when set, runs execgate-agent on the node before the kubelet starts.
	Agent *AgentConfig
	MemMB int
	CPUs  int
}

// AgentConfig is the node agent's command line and the files it names
// (path in the VM -> content).
type AgentConfig struct {
	Args  []string
	Files map[string][]byte
}

// Node is a running VM.
type Node struct {
	Name    string
	LogPath string

	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error

	mu    sync.Mutex
	marks map[string]bool
	cond  *sync.Cond
}

// Boot starts the VM; Stop ends it. The console goes to nc.Log and to
// <Dir>/<name>.log.
func (b *Built) Boot(ctx context.Context, nc NodeConfig) (*Node, error) {
	if nc.MemMB == 0 {
		nc.MemMB = 3072
	}
	if nc.CPUs == 0 {
		nc.CPUs = 2
	}
	stage := filepath.Join(b.Dir, "boot-"+nc.Name)
	if err := os.RemoveAll(stage); err != nil {
		return nil, err
	}
	files := map[string]string{
		"etc/containerd/config.toml":         containerdConfig,
		"etc/cni/net.d/10-execgate.conflist": cniConfig,
		"etc/kubelet/config.yaml":            kubeletConfig,
		"etc/kubelet/kubeconfig":             string(nc.Kubeconfig),
		"etc/resolv.conf":                    "",
		"etc/hosts":                          "127.0.0.1 localhost\n",
		"etc/machine-id":                     machineID(nc.Name) + "\n",
		"stage2":                             stage2(b, nc),
	}
	if nc.Agent != nil {
		for name, body := range nc.Agent.Files {
			files[strings.TrimPrefix(name, "/")] = string(body)
		}
	}
	for name, body := range files {
		p := filepath.Join(stage, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			return nil, err
		}
	}
	initrd := filepath.Join(b.Dir, "initrd-"+nc.Name+".cpio")
	if err := kernels.BuildRow(b.Base, filepath.Join(b.Dir, "init-"+nc.Name), initrd, stage1, nil); err != nil {
		return nil, err
	}
	if err := kernels.AppendTree(initrd, stage); err != nil {
		return nil, err
	}
	vm := kernels.VM{Arch: "amd64", Kernel: b.Kernel, Initrd: initrd, MemMB: nc.MemMB, CPUs: nc.CPUs,
		Net: []string{"-netdev", "tap,id=n0,ifname=" + nc.Link.Tap + ",script=no,downscript=no",
			"-device", "virtio-net-pci,netdev=n0,mac=52:54:00:65:67:02"}}
	cmd, err := vm.Command(ctx)
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(b.Dir, nc.Name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	n := &Node{Name: nc.Name, LogPath: logPath, cmd: cmd, done: make(chan struct{}), marks: map[string]bool{}}
	n.cond = sync.NewCond(&n.mu)
	w := io.Writer(logFile)
	if nc.Log != nil {
		w = io.MultiWriter(logFile, nc.Log)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			fmt.Fprintln(w, line)
			if mark, ok := strings.CutPrefix(line, "REALNODE "); ok {
				n.mu.Lock()
				n.marks[mark] = true
				n.cond.Broadcast()
				n.mu.Unlock()
			}
		}
		n.waitErr = cmd.Wait()
		logFile.Close()
		n.mu.Lock()
		close(n.done)
		n.cond.Broadcast()
		n.mu.Unlock()
	}()
	return n, nil
}

// WaitMark waits until the console printed "REALNODE <mark>".
func (n *Node) WaitMark(ctx context.Context, mark string) error {
	stop := context.AfterFunc(ctx, func() {
		n.mu.Lock()
		n.cond.Broadcast()
		n.mu.Unlock()
	})
	defer stop()
	n.mu.Lock()
	defer n.mu.Unlock()
	for !n.marks[mark] {
		for m := range n.marks {
			if strings.HasPrefix(m, "FAIL ") {
				return fmt.Errorf("node %s: %s (log %s)", n.Name, m, n.LogPath)
			}
		}
		select {
		case <-n.done:
			return fmt.Errorf("node %s: the VM ended before %q (qemu: %v; log %s)", n.Name, mark, n.waitErr, n.LogPath)
		default:
		}
		if ctx.Err() != nil {
			return fmt.Errorf("node %s: waiting for %q: %w (log %s)", n.Name, mark, ctx.Err(), n.LogPath)
		}
		n.cond.Wait()
	}
	return nil
}

// Stop kills the VM and waits for it.
func (n *Node) Stop() error {
	if n.cmd.Process != nil {
		_ = n.cmd.Process.Kill()
	}
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		return errors.New("qemu did not exit after kill")
	}
	return nil
}

func machineID(name string) string {
	id := fmt.Sprintf("%x", []byte(name))
	for len(id) < 32 {
		id += "0"
	}
	return id[:32]
}
