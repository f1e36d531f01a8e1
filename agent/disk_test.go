package agent_test

import (
	"context"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"stevedore/agent"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

func freeSpace(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// Below the free-space threshold a new step is refused at StartStep with
// ResourceExhausted saying what is free, the threshold and the directory;
// a ticket already recorded is still answered.
func TestLowDiskRefusesNewSteps(t *testing.T) {
	ta := startAgent(t, func(c *agent.Config) { c.MinFreeDisk = -1 })
	recorded := ticket(t)
	if run := ta.run(t, &pb.StartStepRequest{Ticket: recorded, Execution: host(), Script: bash("echo ok")}); run.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("outcome %v (%s)", run.final.GetOutcome(), run.final.GetReason())
	}
	free := freeSpace(t, ta.stateDir)
	tests := []struct {
		name      string
		threshold int64
		ticket    string
		want      codes.Code
	}{
		{"above the free space: refused", free + 1<<30, ticket(t), codes.ResourceExhausted},
		{"a recorded ticket is still answered", free + 1<<30, recorded, codes.OK},
		{"the default (500 MiB) with room", 0, ticket(t), codes.OK},
		{"check turned off", -1, ticket(t), codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.threshold == 0 && free < agent.DefaultMinFreeDisk+(100<<20) {
				t.Skipf("only %d bytes free: the default threshold would refuse", free)
			}
			ta.stop()
			ta.opts = []agentOpt{func(c *agent.Config) { c.MinFreeDisk = tt.threshold }}
			ta.start()
			caps, cerr := ta.client.GetCapabilities(context.Background(), &pb.GetCapabilitiesRequest{})
			st, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tt.ticket, Execution: host(), Script: bash("echo ok")})
			if status.Code(err) != tt.want {
				t.Fatalf("err %v, want %v", err, tt.want)
			}
			// A server learns it from the capabilities before it tries, and
			// from the refusal's ErrorInfo after: the worker refuses, not the step.
			if refused := tt.threshold > free; cerr != nil || (caps.GetNotAccepting() != "") != refused || transport.IsNotAccepting(err) != (refused && tt.ticket != recorded) {
				t.Errorf("capabilities not_accepting %q (%v), refusal marked %v; want refused %v", caps.GetNotAccepting(), cerr, transport.IsNotAccepting(err), refused)
			}
			if tt.ticket == recorded {
				if st.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED {
					t.Fatalf("the recorded step answers %v", st.GetOutcome())
				}
				return
			}
			if tt.want != codes.ResourceExhausted {
				ta.follow(t, tt.ticket)
				return
			}
			msg := status.Convert(err).Message()
			for _, want := range []string{"free disk space", ta.stateDir, "GiB free", "threshold"} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q does not say %q", msg, want)
				}
			}
			if _, err := ta.client.GetStatus(context.Background(), &pb.GetStatusRequest{Ticket: tt.ticket}); status.Code(err) != codes.NotFound {
				t.Errorf("a refused step was recorded: %v", err)
			}
		})
	}
}
