package server_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"

	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
	"stevedore/transport"
)

// The TCP connection between a polling agent and the server is dropped in
// the middle of a step printing numbered lines; the agent redials and the
// task log holds every line once, in order.
func TestCutConnectionMidStepThroughTheServer(t *testing.T) {
	e := newEnv(t)
	p := testenv.NewProxy(t, e.addr)
	e.pollingAgentVia("w1", 2, p.Addr())
	rec, err := e.srv.Submit(server.SubmitRequest{Worker: "w1", Step: numbered(80, "0.03")})
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []uint64{15, 45} {
		deadline := time.Now().Add(time.Minute)
		for {
			if r, _ := e.srv.Step(rec.ID); r.Cursor >= at {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the step did not reach line %d", at)
			}
			time.Sleep(10 * time.Millisecond)
		}
		p.Cut()
	}
	entries, final := e.waitComplete(rec.ID)
	checkNumbered(t, entries, 80)
	if final.ExitCode == nil || *final.ExitCode != 3 {
		t.Errorf("final %+v", final)
	}
	if n := p.Accepted(); n < 3 {
		t.Errorf("the agent connected %d times through the proxy, want a redial after each of 2 cuts", n)
	}
}

// An agent whose certificate the server does not trust is refused, and the
// refusal is logged with its thumbprint; it never becomes a worker.
func TestUntrustedAgentIsRefusedAndLogged(t *testing.T) {
	e := newEnv(t)
	var logs testenv.SyncBuffer
	e.stop()
	e.log = hclog.New(&hclog.LoggerOptions{Name: "srv", Level: hclog.Info, Output: &logs})
	e.start(e.addr)
	stranger, _, err := transport.LoadOrCreateIdentity(filepath.Join(e.dir, "stranger"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(transport.PollingServerOptions()...)
	pb.RegisterAgentServer(srv, &lightAgent{name: "stranger"})
	pin, _ := transport.NewTrustList(e.id.Thumbprint)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		(&transport.Poller{Addr: e.addr, Identity: stranger, Server: pin, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
			Log: hclog.NewNullLogger()}).Run(ctx, srv)
		close(done)
	}()
	defer func() { cancel(); <-done; srv.Stop() }()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), stranger.Thumbprint) {
		if time.Now().After(deadline) {
			t.Fatalf("no refusal naming %s in the server's log:\n%s", stranger.Thumbprint, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "refused") {
		t.Errorf("the log does not say refused:\n%s", logs.String())
	}
	if ws := e.srv.Workers(); len(ws) != 0 {
		t.Errorf("an untrusted agent became a worker: %+v", ws)
	}
}

// lightAgent answers GetCapabilities only: enough to be admitted.
type lightAgent struct {
	pb.UnimplementedAgentServer
	name  string
	mu    sync.Mutex
	asked int
}

func (a *lightAgent) GetCapabilities(context.Context, *pb.GetCapabilitiesRequest) (*pb.Capabilities, error) {
	a.mu.Lock()
	a.asked++
	a.mu.Unlock()
	return &pb.Capabilities{Name: a.name, MaxConcurrentSteps: 1, Pools: []string{"many"}}, nil
}

// 500 polling agents (light ones, in this process, each with its own
// identity) connect to one server and are admitted: the server asked each
// for its capabilities. Then the server restarts and all come back.
func TestFiveHundredPollingAgents(t *testing.T) {
	if testing.Short() {
		t.Skip("500 agents: not in -short")
	}
	const n = 500
	e := newEnv(t)
	ids := make([]*transport.Identity, n)
	for i := range ids {
		id, _, err := transport.LoadOrCreateIdentity(filepath.Join(e.dir, fmt.Sprintf("light-%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
		if err := e.trust.Add(id.Thumbprint); err != nil {
			t.Fatal(err)
		}
	}
	pin, _ := transport.NewTrustList(e.id.Thumbprint)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	agents := make([]*lightAgent, n)
	for i := range n {
		agents[i] = &lightAgent{name: fmt.Sprintf("light-%03d", i)}
		srv := grpc.NewServer(transport.PollingServerOptions()...)
		pb.RegisterAgentServer(srv, agents[i])
		wg.Add(1)
		go func() {
			defer wg.Done()
			(&transport.Poller{Addr: e.addr, Identity: ids[i], Server: pin, MinBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second,
				Log: hclog.NewNullLogger()}).Run(ctx, srv)
			srv.Stop()
		}()
	}
	defer func() { cancel(); wg.Wait() }()
	waitConnected := func(what string) {
		t.Helper()
		start := time.Now()
		deadline := start.Add(90 * time.Second)
		for {
			connected := 0
			for _, w := range e.srv.Workers() {
				if w.Connected {
					connected++
				}
			}
			if connected == n {
				t.Logf("%s: %d agents connected in %v", what, n, time.Since(start).Round(time.Millisecond))
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d of %d agents connected", what, connected, n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitConnected("first start")
	for i, a := range agents {
		a.mu.Lock()
		asked := a.asked
		a.mu.Unlock()
		if asked == 0 {
			t.Fatalf("agent %d was never asked for its capabilities", i)
		}
	}
	addr := e.addr
	e.stop()
	e.start(addr)
	waitConnected("after a server restart")
}

// Thumbprints trusted through the API admit agents at once and after a
// restart; distrusting one closes its connection and keeps it out.
func TestTrustThroughTheAPI(t *testing.T) {
	e := newEnv(t)
	a := e.api()
	newcomer, _, err := transport.LoadOrCreateIdentity(filepath.Join(e.dir, "newcomer"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(transport.PollingServerOptions()...)
	pb.RegisterAgentServer(srv, &lightAgent{name: "newcomer"})
	pin, _ := transport.NewTrustList(e.id.Thumbprint)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		(&transport.Poller{Addr: e.addr, Identity: newcomer, Server: pin, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
			Log: hclog.NewNullLogger()}).Run(ctx, srv)
		close(done)
	}()
	defer func() { cancel(); <-done; srv.Stop() }()
	connected := func() bool {
		for _, w := range e.srv.Workers() {
			if w.Name == "newcomer" && w.Connected {
				return true
			}
		}
		return false
	}
	waitFor := func(what string, want bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for connected() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: connected is not %v", what, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if connected() {
		t.Fatal("an agent connected before it was trusted")
	}
	if code, b := a.do("POST", "/api/trust", map[string]string{"thumbprint": "not-a-thumbprint"}); code != 400 {
		t.Errorf("a bad thumbprint: %d %s", code, b)
	}
	if code, b := a.do("POST", "/api/trust", map[string]string{"thumbprint": strings.ToUpper(newcomer.Thumbprint)}); code != 201 {
		t.Fatalf("trust: %d %s", code, b)
	}
	waitFor("trusted", true)
	addr := e.addr
	e.stop()
	e.trust, _ = transport.NewTrustList(e.agentID.Thumbprint) // as --trust gives it, without the newcomer
	e.start(addr)
	waitFor("trusted after a restart", true)
	if code, b := a.do("DELETE", "/api/trust/"+newcomer.Thumbprint, nil); code != 204 {
		t.Fatalf("distrust: %d %s", code, b)
	}
	waitFor("distrusted", false)
	time.Sleep(500 * time.Millisecond)
	if connected() {
		t.Error("a distrusted agent came back")
	}
}
