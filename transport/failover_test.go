package transport

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"

	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
)

// runPoller runs p, serving an agent named name, until the test ends, and
// returns its log.
func runPoller(t testing.TB, p *Poller, name string) *syncBuffer {
	t.Helper()
	logs := &syncBuffer{}
	p.Log = hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Info})
	srv := grpc.NewServer(PollingServerOptions()...)
	pb.RegisterAgentServer(srv, nameAgent{name: name})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx, srv); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		srv.Stop()
		if t.Failed() {
			t.Logf("poller log:\n%s", logs)
		}
	})
	return logs
}

// nextWithin is next, failing unless the connection comes within d.
func nextWithin(t testing.TB, s *pollingServer, d time.Duration) *PollingConn {
	t.Helper()
	select {
	case pc := <-s.conns:
		return pc
	case err := <-s.errs:
		t.Fatalf("accept at %s: %v", s.addr, err)
	case <-time.After(d):
		t.Fatalf("the poller did not connect to %s within %s", s.addr, d)
	}
	return nil
}

// waitConnectedLog waits until the poller's log says n times that it
// connected to addr.
func waitConnectedLog(t testing.TB, logs *syncBuffer, addr string, n int) {
	t.Helper()
	line := "connected to the server: server=" + addr + "\n"
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(logs.String(), line) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the poller's log does not say %d times %q", n, line)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A round of dials goes through every address before any backoff: with a
// backoff of ten minutes, only a poller that moves on at once reaches the
// second server in time.
func TestPollerTriesTheNextAddressInTheSameRound(t *testing.T) {
	agentID, _, _ := LoadOrCreateIdentity(t.TempDir())
	tests := []struct {
		name  string
		first func(t testing.TB) string
	}{
		{"the first refuses", testenv.FreeAddr},
		{"the first is a server the agent has not pinned", func(t testing.TB) string {
			return newPollingServer(t, agentID.Thumbprint).addr
		}},
		{"the first closes every connection it accepts", func(t testing.TB) string {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { lis.Close() })
			go func() {
				for {
					c, err := lis.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
			return lis.Addr().String()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			second := newPollingServer(t, agentID.Thumbprint)
			pin, _ := NewTrustList(second.id.Thumbprint)
			first := tt.first(t)
			logs := runPoller(t, &Poller{Addrs: []string{first, second.addr}, Identity: agentID, Server: pin,
				MinBackoff: 10 * time.Minute, MaxBackoff: 10 * time.Minute}, "w")
			if got := capsName(t, nextWithin(t, second, 5*time.Second)); got != "w" {
				t.Errorf("name %q", got)
			}
			waitConnectedLog(t, logs, second.addr, 1)
		})
	}
}

// When a connection ends, the poller dials the node it was connected to
// first (a restart of one node is the common case), and the others at once
// when that one is gone: well within the first backoff, far below the
// maximum.
func TestPollerRedialsTheSameNodeThenTheOthers(t *testing.T) {
	agentID, _, _ := LoadOrCreateIdentity(t.TempDir())
	tests := []struct {
		name string
		// firstDown: nothing listens on the first address when the poller
		// starts, so it connects to the second; the first comes up after.
		firstDown bool
		// gone: the connected node stops listening as it drops the
		// connection.
		gone      bool
		wantOther bool
	}{
		{"a node drops the connection: the same node again", false, false, false},
		{"a node is gone: the next node at once", false, true, true},
		{"the node that last connected comes first, not the first address", true, false, false},
		{"the last address is gone: the first again", true, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a *pollingServer
			addrA := testenv.FreeAddr(t)
			if !tt.firstDown {
				a = newPollingServerAt(t, addrA, agentID.Thumbprint)
			}
			b := newPollingServer(t, agentID.Thumbprint)
			// Each node has a certificate of its own; the agent pins both.
			pin, _ := NewTrustList(b.id.Thumbprint)
			if a != nil {
				pin.Add(a.id.Thumbprint)
			}
			logs := runPoller(t, &Poller{Addrs: []string{addrA, b.addr}, Identity: agentID, Server: pin,
				MinBackoff: 20 * time.Millisecond, MaxBackoff: time.Minute}, "w")

			cur := a
			if tt.firstDown {
				cur = b
			}
			pc := nextWithin(t, cur, 5*time.Second)
			waitConnectedLog(t, logs, cur.addr, 1)
			if tt.firstDown {
				a = newPollingServerAt(t, addrA, agentID.Thumbprint)
				pin.Add(a.id.Thumbprint)
			}
			other := a
			if cur == a {
				other = b
			}

			if tt.gone {
				cur.stop()
			}
			started := time.Now()
			pc.Client.Close()
			<-pc.Done
			want, notWant := cur, other
			if tt.wantOther {
				want, notWant = other, cur
			}
			if got := capsName(t, nextWithin(t, want, 5*time.Second)); got != "w" {
				t.Errorf("name %q", got)
			}
			t.Logf("redialed %s in %s", want.addr, time.Since(started).Round(time.Millisecond))
			waitConnectedLog(t, logs, want.addr, map[bool]int{true: 1, false: 2}[tt.wantOther])
			select {
			case <-notWant.conns:
				t.Errorf("the poller also connected to %s", notWant.addr)
			default:
			}
		})
	}
}
