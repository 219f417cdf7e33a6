// Package forward relays TCP connections accepted on a listener to a target
// address: how the test harness gives a node in its own network (a namespace, a
// VM behind a tap) a way to the API server on the host's loopback.
package forward

import (
	"errors"
	"io"
	"net"
	"sync"
)

// Forwarder serves one listener until Close.
type Forwarder struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// Start relays every connection accepted on ln to target, dialled from the
// caller's network namespace.
func Start(ln net.Listener, target string) *Forwarder {
	f := &Forwarder{ln: ln, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve(target)
	return f
}

func (f *Forwarder) serve(target string) {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		f.conns[c], f.conns[up] = struct{}{}, struct{}{}
		f.mu.Unlock()
		f.wg.Add(2)
		go f.pipe(up, c)
		go f.pipe(c, up)
	}
}

func (f *Forwarder) pipe(dst, src net.Conn) {
	defer f.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
	f.mu.Lock()
	delete(f.conns, dst)
	delete(f.conns, src)
	f.mu.Unlock()
}

// Close stops accepting, cuts every relayed connection and waits for the relays.
func (f *Forwarder) Close() error {
	err := f.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
	return err
}
