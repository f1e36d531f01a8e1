package agent_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"

	"stevedore/agent"
	"stevedore/executor"
	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

// restartable is an agent whose process can be stopped and started again
// over the same state dir, as a service manager restarts it.
type restartable struct {
	t        *testing.T
	stateDir string
	id       *transport.Identity
	clientID *transport.Identity
	agent    *agent.Agent
	srv      *grpc.Server
	conn     *grpc.ClientConn
	client   pb.AgentClient
}

func (r *restartable) start() {
	r.t.Helper()
	bundle, err := executor.LoadBundle(testenv.BundleDir(r.t))
	if err != nil {
		r.t.Fatal(err)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "restart", Level: hclog.Debug, Output: testWriter{r.t}})
	r.agent, err = agent.New(agent.Config{StateDir: r.stateDir, Bundle: bundle, Identity: r.id, Logger: log})
	if err != nil {
		r.t.Fatal(err)
	}
	trust, _ := transport.NewTrustList(r.clientID.Thumbprint)
	r.srv = grpc.NewServer(transport.ServerOptions(r.id, trust, log)...)
	pb.RegisterAgentServer(r.srv, r.agent)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.t.Fatal(err)
	}
	go r.srv.Serve(lis)
	r.conn, _ = transport.Dial(lis.Addr().String(), r.clientID, r.id.Thumbprint)
	r.client = pb.NewAgentClient(r.conn)
}

func (r *restartable) stop() {
	r.conn.Close()
	r.srv.Stop()
	r.agent.Close()
}

// A step keeps running while the agent is down, and the next agent process
// delivers every line once and the real exit code.
func TestStepSurvivesAgentRestart(t *testing.T) {
	tests := []struct {
		name string
		exec *pb.Execution
	}{
		{"host", host()},
		{"container", inContainer(testenv.Bookworm)},
	}
	withImages(t, testenv.Bookworm)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			os.Chmod(root, 0o755)
			r := &restartable{t: t, stateDir: filepath.Join(root, "agent")}
			r.id, _, _ = transport.LoadOrCreateIdentity(r.stateDir)
			r.clientID, _, _ = transport.LoadOrCreateIdentity(filepath.Join(root, "client"))
			r.start()
			tk := ticket(t)
			_, err := r.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tk, Execution: tt.exec,
				Script: bash("for i in $(seq 1 30); do echo line $i; sleep 0.1; done; exit 7")})
			if err != nil {
				t.Fatal(err)
			}
			ta := &testAgent{client: r.client}
			waitForLine(t, ta, tk, "line 5")
			r.stop()
			time.Sleep(500 * time.Millisecond) // lines keep coming while no agent runs
			r.start()
			defer r.stop()
			ta = &testAgent{client: r.client}
			run := ta.follow(t, tk)
			if exitCode(run.final) != 7 || run.final.GetOutcome() != pb.Outcome_OUTCOME_FAILED {
				t.Fatalf("exit %d outcome %v (%s)", exitCode(run.final), run.final.GetOutcome(), run.final.GetReason())
			}
			if len(run.stdout) != 30 {
				t.Fatalf("%d lines after the restart, want 30: %q", len(run.stdout), run.stdout)
			}
			for i, l := range run.stdout {
				if l != fmt.Sprintf("line %d", i+1) {
					t.Fatalf("line %d is %q", i+1, l)
				}
			}
			if _, err := r.client.CompleteStep(context.Background(), &pb.CompleteStepRequest{Ticket: tk, AfterSequence: 1 << 40}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
