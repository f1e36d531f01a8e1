package server_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"

	"stevedore/agent"
	"stevedore/executor"
	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
	"stevedore/transport"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.CleanupBundle()
	os.Exit(code)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p[:len(p)-1])); return len(p), nil }

// env is a server and the identities of its polling agents.
type env struct {
	t       testing.TB
	dir     string
	id      *transport.Identity
	trust   *transport.TrustList
	addr    string
	srv     *server.Server
	lis     net.Listener
	log     hclog.Logger
	agentID *transport.Identity
	// regToken is the registration token of the servers start makes.
	regToken string
	// opts change the configuration of the servers start makes.
	opts []func(*server.Config)
	// backend keeps the state of every server start makes, restarts too.
	backend *server.TestBackend
}

func newEnv(t testing.TB, opts ...func(*server.Config)) *env {
	return newEnvOn(t, server.NewTestBackend(t), opts...)
}

// newEnvOn is newEnv on the given backend rather than the run's.
func newEnvOn(t testing.TB, backend *server.TestBackend, opts ...func(*server.Config)) *env {
	root := t.TempDir()
	os.Chmod(root, 0o755)
	e := &env{t: t, dir: root, log: hclog.New(&hclog.LoggerOptions{Name: "srv", Level: hclog.Info, Output: testWriter{t}}), opts: opts,
		backend: backend}
	e.id, _, _ = transport.LoadOrCreateIdentity(filepath.Join(root, "server"))
	e.agentID, _, _ = transport.LoadOrCreateIdentity(filepath.Join(root, "agent"))
	e.trust, _ = transport.NewTrustList(e.agentID.Thumbprint)
	e.start("127.0.0.1:0")
	t.Cleanup(e.stop)
	return e
}

func (e *env) start(addr string) {
	t := e.t
	var err error
	cfg := server.Config{DataDir: filepath.Join(e.dir, "server"), Identity: e.id, Trust: e.trust, Logger: e.log,
		AdminUsername: adminUser, AdminPassword: adminPassword, RegistrationToken: e.regToken, OpenStore: e.backend.OpenStore()}
	for _, o := range e.opts {
		o(&cfg)
	}
	e.srv, err = server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.id = e.srv.Identity() // a database shared with another env keeps that one's
	if e.lis, err = net.Listen("tcp", addr); err != nil {
		t.Fatal(err)
	}
	e.addr = e.lis.Addr().String()
	go e.srv.ServePolling(e.lis)
}

func (e *env) stop() {
	if e.srv != nil {
		e.lis.Close()
		e.srv.Close()
		e.srv = nil
	}
}

const adminUser, adminPassword = "admin", "test-admin-password"

// pollingAgent starts a real agent in polling mode named name.
func (e *env) pollingAgent(name string, maxSteps int) {
	e.pollingAgentVia(name, maxSteps, e.addr)
}

// pollingAgentVia starts a real polling agent that dials addr (a proxy,
// say) to reach the server.
func (e *env) pollingAgentVia(name string, maxSteps int, addr string) {
	e.pollingAgentServing(name, maxSteps, addr, func(a pb.AgentServer) pb.AgentServer { return a })
}

// pollingWorker is a polling agent a test started; its link to the server
// can be cut and made again while the agent runs on.
type pollingWorker struct {
	agent *agent.Agent
	// link dials the server and serves until its context ends.
	link func(ctx context.Context)
	mu   sync.Mutex
	stop func() // ends the current link and waits for it
}

// disconnect cuts the worker off the server, as a lost network would.
func (p *pollingWorker) disconnect() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stop != nil {
		p.stop()
		p.stop = nil
	}
}

// connect (again) links the worker to the server.
func (p *pollingWorker) connect() {
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.link(ctx); close(done) }()
	p.stop = func() { cancel(); <-done }
}

// pollingAgentServing starts a real polling agent whose service wrap may
// alter, to play an agent of another version.
func (e *env) pollingAgentServing(name string, maxSteps int, addr string, wrap func(pb.AgentServer) pb.AgentServer) *pollingWorker {
	t := e.t
	bundle, err := executor.LoadBundle(testenv.BundleDir(t))
	if err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(e.dir, "agent-"+name)
	os.MkdirAll(stateDir, 0o755)
	a, err := agent.New(agent.Config{StateDir: stateDir, Bundle: bundle, Identity: e.agentID, Name: name, Pools: []string{"linux"}, MaxSteps: maxSteps, Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(transport.PollingServerOptions()...)
	pb.RegisterAgentServer(srv, wrap(a))
	pin, _ := transport.NewTrustList(e.id.Thumbprint)
	p := &transport.Poller{Addr: addr, Identity: e.agentID, Server: pin, MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, Log: e.log}
	pw := &pollingWorker{agent: a, link: func(ctx context.Context) { p.Run(ctx, srv) }}
	pw.connect()
	t.Cleanup(func() { pw.disconnect(); srv.Stop(); a.Close() })
	return pw
}

func numbered(n int, sleep string) *pb.StartStepRequest {
	return &pb.StartStepRequest{Execution: &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}},
		Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: fmt.Sprintf("for i in $(seq 1 %d); do echo line $i; sleep %s; done; exit 3", n, sleep)}}
}

// waitComplete follows the step through the server's task log.
func (e *env) waitComplete(id string) ([]server.LogEntry, server.StepRecord) {
	e.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	var all []server.LogEntry
	var after uint64
	for time.Now().Before(deadline) {
		if e.srv == nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		lines, rec, err := e.srv.Log(context.Background(), id, after, 10000, 2*time.Second)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, l := range lines {
			if l.Sequence != after+1 {
				e.t.Fatalf("task log sequence %d after %d", l.Sequence, after)
			}
			after = l.Sequence
			all = append(all, l)
		}
		if rec.State == server.StateComplete && len(lines) == 0 {
			return all, rec
		}
	}
	e.t.Fatal("the step did not complete")
	return nil, server.StepRecord{}
}

func checkNumbered(t *testing.T, entries []server.LogEntry, n int) {
	t.Helper()
	var out []string
	for _, l := range entries {
		if l.Source == "stdout" {
			out = append(out, string(l.Content()))
		}
	}
	if len(out) != n {
		t.Fatalf("%d stdout lines in the task log, want %d", len(out), n)
	}
	for i, l := range out {
		if l != fmt.Sprintf("line %d", i+1) {
			t.Fatalf("line %d is %q", i+1, l)
		}
	}
}

func TestStepThroughThePollingServer(t *testing.T) {
	e := newEnv(t)
	e.pollingAgent("w1", 2)
	rec, err := e.srv.Submit(server.SubmitRequest{Pool: "linux", Step: numbered(50, "0")})
	if err != nil {
		t.Fatal(err)
	}
	entries, final := e.waitComplete(rec.ID)
	checkNumbered(t, entries, 50)
	if final.Outcome != "FAILED" || final.ExitCode == nil || *final.ExitCode != 3 || final.Assigned != "w1" {
		t.Errorf("final %+v", final)
	}
}

// The server goes away mid-step and comes back on the same data dir and
// port: the step is resumed from its stored cursor; the task log ends up
// complete, with no line twice.
func TestServerRestartMidStep(t *testing.T) {
	e := newEnv(t)
	e.pollingAgent("w1", 2)
	rec, err := e.srv.Submit(server.SubmitRequest{Worker: "w1", Step: numbered(40, "0.05")})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		r, _ := e.srv.Step(rec.ID)
		if r.Cursor >= 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the step did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	addr := e.addr
	e.stop()
	time.Sleep(300 * time.Millisecond)
	e.start(addr)
	entries, final := e.waitComplete(rec.ID)
	checkNumbered(t, entries, 40)
	if final.ExitCode == nil || *final.ExitCode != 3 {
		t.Errorf("final %+v", final)
	}
}

// Dispatch never gives a worker more steps than its slots.
func TestDispatchRespectsSlots(t *testing.T) {
	e := newEnv(t)
	e.pollingAgent("w1", 2)
	var ids []string
	for range 6 {
		rec, err := e.srv.Submit(server.SubmitRequest{Worker: "w1", Step: numbered(3, "0.1")})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rec.ID)
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	var mu sync.Mutex
	most := 0
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, w := range e.srv.Workers() {
				mu.Lock()
				most = max(most, w.Running)
				mu.Unlock()
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	for _, id := range ids {
		e.waitComplete(id)
	}
	close(stop)
	<-stopped
	if most > 2 || most == 0 {
		t.Errorf("a worker with 2 slots ran %d steps at once", most)
	}
}

// A listening worker, registered by address and thumbprint, runs steps the
// same way; the registration outlives a server restart.
func TestListeningWorker(t *testing.T) {
	e := newEnv(t)
	addr, tp := e.startListeningAgent("l1")
	if err := e.srv.RegisterListening("l1", addr, tp); err != nil {
		t.Fatal(err)
	}
	rec, err := e.srv.Submit(server.SubmitRequest{Worker: "l1", Step: numbered(5, "0")})
	if err != nil {
		t.Fatal(err)
	}
	entries, final := e.waitComplete(rec.ID)
	checkNumbered(t, entries, 5)
	if final.Assigned != "l1" {
		t.Errorf("assigned %q", final.Assigned)
	}
	// After a restart the server dials it again.
	srvAddr := e.addr
	e.stop()
	e.start(srvAddr)
	rec, err = e.srv.Submit(server.SubmitRequest{Worker: "l1", Step: numbered(3, "0")})
	if err != nil {
		t.Fatal(err)
	}
	entries, _ = e.waitComplete(rec.ID)
	checkNumbered(t, entries, 3)
}

// startListeningAgent starts a real agent in listening mode, trusting the
// server's identity, and returns its address and thumbprint.
func (e *env) startListeningAgent(name string) (addr, thumbprint string) {
	t := e.t
	bundle, err := executor.LoadBundle(testenv.BundleDir(t))
	if err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(e.dir, "listening-"+name)
	os.MkdirAll(stateDir, 0o755)
	id, _, _ := transport.LoadOrCreateIdentity(stateDir)
	a, err := agent.New(agent.Config{StateDir: stateDir, Bundle: bundle, Identity: id, Name: name, Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	trust, _ := transport.NewTrustList(e.id.Thumbprint)
	g := grpc.NewServer(transport.ServerOptions(id, trust, e.log)...)
	pb.RegisterAgentServer(g, a)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(func() { g.Stop(); a.Close() })
	return lis.Addr().String(), id.Thumbprint
}

// listeningAgent starts a listening agent and returns a client of it
// with the server's identity.
func (e *env) listeningAgent(name string) pb.AgentClient {
	addr, tp := e.startListeningAgent(name)
	conn, err := transport.Dial(addr, e.id, tp)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return pb.NewAgentClient(conn)
}
