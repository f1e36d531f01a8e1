package agent_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"stevedore/agent"
	"stevedore/executor"
	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.CleanupBundle()
	os.Exit(code)
}

// testAgent is a listening agent on loopback and a trusted client of it.
// stop and start restart it over the same state dir, as a service manager would.
type testAgent struct {
	t        testing.TB
	opts     []agentOpt
	stateDir string
	id       *transport.Identity
	clientID *transport.Identity

	agent  *agent.Agent
	srv    *grpc.Server
	conn   *grpc.ClientConn
	client pb.AgentClient
	addr   string
	logs   *testenv.SyncBuffer
}

type agentOpt func(*agent.Config)

func startAgent(t testing.TB, opts ...agentOpt) *testAgent {
	t.Helper()
	root := t.TempDir()
	// Step directories are bind-mounted into containers whose user may not
	// be root: the path to them must be traversable.
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	ta := &testAgent{t: t, opts: opts, stateDir: filepath.Join(root, "agent"), logs: &testenv.SyncBuffer{}}
	var err error
	if ta.id, _, err = transport.LoadOrCreateIdentity(ta.stateDir); err != nil {
		t.Fatal(err)
	}
	if ta.clientID, _, err = transport.LoadOrCreateIdentity(filepath.Join(root, "client")); err != nil {
		t.Fatal(err)
	}
	ta.start()
	t.Cleanup(func() {
		if ta.agent != nil {
			ta.stop()
		}
	})
	return ta
}

func (ta *testAgent) start() {
	t := ta.t
	t.Helper()
	bundle, err := executor.LoadBundle(testenv.BundleDir(t))
	if err != nil {
		t.Fatal(err)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Debug, Output: io.MultiWriter(testWriter{t}, ta.logs)})
	cfg := agent.Config{StateDir: ta.stateDir, Bundle: bundle, MaxSteps: 4, DefaultGrace: 3 * time.Second, Identity: ta.id, Logger: log}
	for _, o := range ta.opts {
		o(&cfg)
	}
	if ta.agent, err = agent.New(cfg); err != nil {
		t.Fatal(err)
	}
	trust, _ := transport.NewTrustList(ta.clientID.Thumbprint)
	ta.srv = grpc.NewServer(transport.ServerOptions(ta.id, trust, log)...)
	pb.RegisterAgentServer(ta.srv, ta.agent)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ta.srv.Serve(lis)
	ta.addr = lis.Addr().String()
	if ta.conn, err = transport.Dial(ta.addr, ta.clientID, ta.id.Thumbprint); err != nil {
		t.Fatal(err)
	}
	ta.client = pb.NewAgentClient(ta.conn)
}

// stop ends the agent as SIGTERM does: running steps go on.
func (ta *testAgent) stop() {
	ta.conn.Close()
	ta.srv.Stop()
	ta.agent.Close()
	ta.agent = nil
}

// testWriter sends the agent's log to the test's log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// stepRun is what a test saw of a step.
type stepRun struct {
	final  *pb.StepStatus
	lines  []*pb.LogLine
	stdout []string
	stderr []string
	agent  []string
}

// follow reads the step's log until it is complete and returns everything,
// checking that sequences arrive gapless and in order.
func (ta *testAgent) follow(t testing.TB, ticket string) *stepRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	run := &stepRun{}
	var after uint64
	for {
		st, err := ta.client.GetStatus(ctx, &pb.GetStatusRequest{Ticket: ticket, AfterSequence: after, Wait: durationpb.New(10 * time.Second)})
		if err != nil {
			t.Fatalf("GetStatus(%s, %d): %v", ticket, after, err)
		}
		for _, l := range st.GetLines() {
			if l.GetSequence() != after+1 {
				t.Fatalf("line sequence %d after %d: a gap or a repeat", l.GetSequence(), after)
			}
			after = l.GetSequence()
			run.lines = append(run.lines, l)
			switch l.GetSource() {
			case pb.LogSource_LOG_SOURCE_STDOUT:
				run.stdout = append(run.stdout, string(l.GetText()))
			case pb.LogSource_LOG_SOURCE_STDERR:
				run.stderr = append(run.stderr, string(l.GetText()))
			default:
				run.agent = append(run.agent, string(l.GetText()))
			}
		}
		if st.GetState() == pb.StepState_STEP_STATE_COMPLETE && after+1 >= st.GetNextSequence() {
			run.final = st
			return run
		}
	}
}

// run starts req and follows it to the end.
func (ta *testAgent) run(t testing.TB, req *pb.StartStepRequest) *stepRun {
	t.Helper()
	if _, err := ta.client.StartStep(context.Background(), req); err != nil {
		t.Fatalf("StartStep: %v", err)
	}
	return ta.follow(t, req.Ticket)
}

// complete calls CompleteStep until every line is delivered.
func (ta *testAgent) complete(t testing.TB, ticket string) {
	t.Helper()
	if _, err := ta.client.CompleteStep(context.Background(), &pb.CompleteStepRequest{Ticket: ticket, AfterSequence: ^uint64(0) >> 1}); err != nil {
		t.Fatalf("CompleteStep(%s): %v", ticket, err)
	}
}

var ticketSeq int

func ticket(t *testing.T) string {
	ticketSeq++
	return fmt.Sprintf("t%d-%d", time.Now().UnixNano()%1e9, ticketSeq)
}

func inContainer(image string) *pb.Execution {
	return &pb.Execution{Target: &pb.Execution_Container{Container: &pb.ContainerExecution{Image: image}}}
}

func host() *pb.Execution {
	return &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}}
}

// hostOrContainer is a host execution, or one in the bookworm fixture
// (made present first) when container is true.
func hostOrContainer(t *testing.T, container bool) *pb.Execution {
	t.Helper()
	if !container {
		return host()
	}
	withImages(t, testenv.Bookworm)
	return inContainer(testenv.Bookworm)
}

func bash(body string) *pb.Script { return &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: body} }

func exitCode(st *pb.StepStatus) int {
	if st.ExitCode == nil {
		return -1
	}
	return int(st.GetExitCode())
}
