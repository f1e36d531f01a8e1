package testenv

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy is a TCP proxy for fault tests: it can refuse connections (Refuse),
// go silent on a connection once it has passed StallAt bytes to the client
// (a registry that stops mid-pull), or drop every connection at once (Cut,
// a NAT timeout or a firewall).
type Proxy struct {
	lis    net.Listener
	target string
	// Refuse closes new connections at once.
	Refuse atomic.Bool
	// StallAt is how many bytes a connection passes to the client before
	// going silent; below zero (the default), never.
	StallAt atomic.Int64

	mu       sync.Mutex
	conns    []net.Conn
	accepted int
}

// NewProxy starts a proxy to target on a loopback port; it ends with t.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{lis: lis, target: target}
	p.StallAt.Store(-1)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); lis.Close(); p.Cut() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			if p.Refuse.Load() {
				c.Close()
				continue
			}
			go p.serve(c, stop)
		}
	}()
	return p
}

// Addr is where clients connect.
func (p *Proxy) Addr() string { return p.lis.Addr().String() }

// Accepted is how many connections the proxy has passed on.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Cut drops every open connection.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *Proxy) serve(c net.Conn, stop <-chan struct{}) {
	defer c.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	p.mu.Lock()
	p.conns = append(p.conns, c, up)
	p.accepted++
	p.mu.Unlock()
	go func() { io.Copy(up, c); up.Close() }()
	buf := make([]byte, 32<<10)
	var sent int64
	for {
		n, err := up.Read(buf)
		if limit := p.StallAt.Load(); limit >= 0 && sent+int64(n) > limit {
			// Silent from here: hold the connection open, send nothing.
			<-stop
			return
		}
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
			sent += int64(n)
		}
		if err != nil {
			return
		}
	}
}

// SyncBuffer is a writer safe for concurrent use whose content can be read
// while it is written: a process's output, a logger's sink.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
