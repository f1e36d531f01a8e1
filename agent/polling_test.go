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
	"google.golang.org/protobuf/types/known/durationpb"

	"stevedore/agent"
	"stevedore/executor"
	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

// A polling agent runs exactly the listening agent's service; a connection
// cut mid-step is redialed by the agent, and a follower that resumes from
// its cursor gets every line once, in order.
func TestStepThroughPollingAgentSurvivesACutConnection(t *testing.T) {
	root := t.TempDir()
	os.Chmod(root, 0o755)
	agentID, _, _ := transport.LoadOrCreateIdentity(filepath.Join(root, "agent"))
	serverID, _, _ := transport.LoadOrCreateIdentity(filepath.Join(root, "server"))
	bundle, err := executor.LoadBundle(testenv.BundleDir(t))
	if err != nil {
		t.Fatal(err)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "polling", Level: hclog.Info, Output: testWriter{t}})
	a, err := agent.New(agent.Config{StateDir: filepath.Join(root, "agent"), Bundle: bundle, Identity: agentID, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()

	// The server's polling port.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	trust, _ := transport.NewTrustList(agentID.Thumbprint)
	conns := make(chan *transport.PollingConn, 4)
	go func() {
		for {
			raw, err := lis.Accept()
			if err != nil {
				return
			}
			if pc, err := transport.AcceptPolling(context.Background(), raw, serverID, trust, log); err == nil {
				conns <- pc
			}
		}
	}()
	// The agent dials out.
	srv := grpc.NewServer(transport.PollingServerOptions()...)
	pb.RegisterAgentServer(srv, a)
	pin, _ := transport.NewTrustList(serverID.Thumbprint)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go (&transport.Poller{Addr: lis.Addr().String(), Identity: agentID, Server: pin, MinBackoff: 50 * time.Millisecond, Log: log}).Run(ctx, srv)
	defer srv.Stop()

	nextConn := func() *transport.PollingConn {
		select {
		case pc := <-conns:
			return pc
		case <-time.After(20 * time.Second):
			t.Fatal("the polling agent did not connect")
		}
		return nil
	}
	pc := nextConn()
	client := pb.NewAgentClient(pc.Client)
	tk := "poll-" + fmt.Sprint(time.Now().UnixNano())
	if _, err := client.StartStep(ctx, &pb.StartStepRequest{Ticket: tk, Execution: host(),
		Script: bash("for i in $(seq 1 60); do echo line $i; sleep 0.02; done; exit 4")}); err != nil {
		t.Fatal(err)
	}
	var after uint64
	var lines []string
	cut := false
	for {
		st, err := client.GetStatus(ctx, &pb.GetStatusRequest{Ticket: tk, AfterSequence: after, Wait: durationpb.New(5 * time.Second)})
		if err != nil {
			// The link is gone: the next connection carries on from the cursor.
			pc = nextConn()
			client = pb.NewAgentClient(pc.Client)
			continue
		}
		for _, l := range st.GetLines() {
			if l.GetSequence() != after+1 {
				t.Fatalf("sequence %d after %d", l.GetSequence(), after)
			}
			after = l.GetSequence()
			if l.GetSource() == pb.LogSource_LOG_SOURCE_STDOUT {
				lines = append(lines, string(l.GetText()))
			}
		}
		if !cut && len(lines) >= 10 {
			cut = true
			pc.Client.Close() // the proxy drops the connection mid-step
		}
		if st.GetState() == pb.StepState_STEP_STATE_COMPLETE && after+1 >= st.GetNextSequence() {
			if st.GetExitCode() != 4 {
				t.Errorf("exit code %d, want 4", st.GetExitCode())
			}
			break
		}
	}
	if !cut || len(lines) != 60 {
		t.Fatalf("cut %v, %d lines", cut, len(lines))
	}
	for i, l := range lines {
		if l != fmt.Sprintf("line %d", i+1) {
			t.Fatalf("line %d is %q", i+1, l)
		}
	}
	if _, err := client.CompleteStep(ctx, &pb.CompleteStepRequest{Ticket: tk, AfterSequence: after}); err != nil {
		t.Fatal(err)
	}
}
