package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"

	pb "stevedore/proto/stevedore/v1"
)

// nameAgent answers GetCapabilities with its name: enough to tell agents apart.
type nameAgent struct {
	pb.UnimplementedAgentServer
	name string
}

func (a nameAgent) GetCapabilities(context.Context, *pb.GetCapabilitiesRequest) (*pb.Capabilities, error) {
	return &pb.Capabilities{Name: a.name}, nil
}

// pollingServer accepts polling agents on loopback and hands over each
// authenticated connection.
type pollingServer struct {
	id    *Identity
	trust *TrustList
	addr  string
	lis   net.Listener
	conns chan *PollingConn
	errs  chan error
	logs  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func newPollingServer(t testing.TB, trusted ...string) *pollingServer {
	t.Helper()
	return newPollingServerAt(t, "127.0.0.1:0", trusted...)
}

// newPollingServerAt is newPollingServer listening on addr.
func newPollingServerAt(t testing.TB, addr string, trusted ...string) *pollingServer {
	t.Helper()
	id, _, err := LoadOrCreateIdentity(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	trust, err := NewTrustList(trusted...)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &pollingServer{id: id, trust: trust, addr: lis.Addr().String(), lis: lis, conns: make(chan *PollingConn, 1024), errs: make(chan error, 1024), logs: &syncBuffer{}}
	log := hclog.New(&hclog.LoggerOptions{Output: s.logs})
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			raw, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				pc, err := AcceptPolling(context.Background(), raw, id, trust, log)
				if err != nil {
					s.errs <- err
					return
				}
				s.conns <- pc
			}()
		}
	}()
	return s
}

// stop closes the listener: the node is gone, and dials to it are refused.
// Connections accepted stay up.
func (s *pollingServer) stop() { s.lis.Close() }

// startPoller runs a polling agent named name until the test ends.
func startPoller(t testing.TB, serverAddr, serverThumbprint string, id *Identity, name string) {
	t.Helper()
	pin, _ := NewTrustList(serverThumbprint)
	srv := grpc.NewServer(PollingServerOptions()...)
	pb.RegisterAgentServer(srv, nameAgent{name: name})
	ctx, cancel := context.WithCancel(context.Background())
	p := &Poller{Addr: serverAddr, Identity: id, Server: pin, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	done := make(chan struct{})
	go func() { p.Run(ctx, srv); close(done) }()
	t.Cleanup(func() { cancel(); <-done; srv.Stop() })
}

func next(t testing.TB, s *pollingServer) *PollingConn {
	t.Helper()
	select {
	case pc := <-s.conns:
		return pc
	case err := <-s.errs:
		t.Fatalf("accept: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("no polling agent connected")
	}
	return nil
}

func capsName(t testing.TB, pc *PollingConn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	caps, err := pb.NewAgentClient(pc.Client).GetCapabilities(ctx, &pb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatalf("GetCapabilities over the polled connection: %v", err)
	}
	return caps.GetName()
}

func TestPollingAgentServedOverTheConnectionItDialed(t *testing.T) {
	agentID, _, _ := LoadOrCreateIdentity(t.TempDir())
	s := newPollingServer(t, agentID.Thumbprint)
	startPoller(t, s.addr, s.id.Thumbprint, agentID, "w1")

	pc := next(t, s)
	if pc.Thumbprint != agentID.Thumbprint {
		t.Errorf("server sees thumbprint %s, want the agent's %s", pc.Thumbprint, agentID.Thumbprint)
	}
	// Many calls share the one connection.
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if got := capsName(t, pc); got != "w1" {
				t.Errorf("name %q", got)
			}
		})
	}
	wg.Wait()

	// The link drops: the agent dials again and is served again.
	pc.Client.Close()
	<-pc.Done
	pc2 := next(t, s)
	if got := capsName(t, pc2); got != "w1" {
		t.Errorf("after reconnecting: name %q", got)
	}
}

func TestPollingRefusals(t *testing.T) {
	agentID, _, _ := LoadOrCreateIdentity(t.TempDir())
	other, _, _ := LoadOrCreateIdentity(t.TempDir())

	t.Run("server does not trust the agent", func(t *testing.T) {
		s := newPollingServer(t, other.Thumbprint)
		startPoller(t, s.addr, s.id.Thumbprint, agentID, "stranger")
		select {
		case err := <-s.errs:
			if !errors.Is(err, ErrUntrusted) {
				t.Errorf("err %v, want ErrUntrusted", err)
			}
		case pc := <-s.conns:
			t.Fatalf("an untrusted agent was admitted: %s", pc.Thumbprint)
		case <-time.After(20 * time.Second):
			t.Fatal("no handshake")
		}
		if !strings.Contains(s.logs.String(), agentID.Thumbprint) {
			t.Errorf("the refusal is not logged with the agent's thumbprint: %q", s.logs.String())
		}
	})
	t.Run("agent does not trust the server", func(t *testing.T) {
		s := newPollingServer(t, agentID.Thumbprint)
		startPoller(t, s.addr, other.Thumbprint, agentID, "wary")
		select {
		case pc := <-s.conns:
			// The server's handshake may complete before the agent's verdict
			// arrives; the agent must never serve it.
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if _, err := pb.NewAgentClient(pc.Client).GetCapabilities(ctx, &pb.GetCapabilitiesRequest{}); err == nil {
				t.Fatal("the agent served a server whose thumbprint it had not pinned")
			}
		case <-s.errs:
		case <-time.After(20 * time.Second):
			t.Fatal("no handshake")
		}
	})
}

// 500 polling agents on one server, each answering on its own connection.
func TestFiveHundredPollingAgents(t *testing.T) {
	const n = 500
	ids := make([]*Identity, n)
	prints := make([]string, n)
	for i := range n {
		id, _, err := LoadOrCreateIdentity(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		ids[i], prints[i] = id, id.Thumbprint
	}
	s := newPollingServer(t, prints...)
	for i := range n {
		startPoller(t, s.addr, s.id.Thumbprint, ids[i], fmt.Sprintf("w%d", i))
	}
	seen := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range n {
		pc := next(t, s)
		wg.Go(func() {
			name := capsName(t, pc)
			mu.Lock()
			seen[name] = true
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(seen) != n {
		t.Errorf("%d distinct agents answered, want %d", len(seen), n)
	}
}
