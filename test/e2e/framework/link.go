package framework

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Link is the network path from the controller to one node's agent: a TCP relay the
// controller dials instead of the agent. Tests make it slow (every chunk held for a
// delay, as a congested or distant node) or cut it (new connections refused, open ones
// reset, as a partition). The agent's own watch of the API server does not cross it.
type Link struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	delay time.Duration
	down  bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newLink(target string) (*Link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &Link{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

// Addr is the address the controller dials for this node.
func (l *Link) Addr() string { return l.ln.Addr().String() }

// SetDelay holds every chunk of data, both ways, for d (0 = none).
func (l *Link) SetDelay(d time.Duration) {
	l.mu.Lock()
	l.delay = d
	l.mu.Unlock()
}

// SetDown cuts the link (true) or heals it (false). Cutting resets open connections.
func (l *Link) SetDown(down bool) {
	l.mu.Lock()
	l.down = down
	var open []net.Conn
	if down {
		for c := range l.conns {
			open = append(open, c)
		}
	}
	l.mu.Unlock()
	for _, c := range open {
		_ = c.Close()
	}
}

func (l *Link) accept() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		down := l.down
		if !down {
			l.conns[c] = struct{}{}
		}
		l.mu.Unlock()
		if down {
			_ = c.Close()
			continue
		}
		l.wg.Add(1)
		go l.relay(c)
	}
}

func (l *Link) relay(client net.Conn) {
	defer l.wg.Done()
	server, err := net.Dial("tcp", l.target)
	if err != nil {
		l.forget(client)
		_ = client.Close()
		return
	}
	l.mu.Lock()
	l.conns[server] = struct{}{}
	l.mu.Unlock()
	done := make(chan struct{}, 2)
	pump := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				l.mu.Lock()
				d := l.delay
				l.mu.Unlock()
				if d > 0 {
					time.Sleep(d)
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		done <- struct{}{}
	}
	go pump(server, client)
	go pump(client, server)
	<-done
	_ = client.Close()
	_ = server.Close()
	<-done
	l.forget(client)
	l.forget(server)
}

func (l *Link) forget(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// Close stops the relay and closes every connection.
func (l *Link) Close() error {
	err := l.ln.Close()
	l.SetDown(true)
	l.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

var _ io.Closer = (*Link)(nil)
