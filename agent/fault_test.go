package agent_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
)

// requireFaults skips tests that stop the shared Docker Engine unless the
// fault suite (`make fault`) asked for them.
func requireFaults(t *testing.T) {
	t.Helper()
	if os.Getenv("STEVEDORE_FAULTS") != "1" {
		t.Skip("stops the shared Docker Engine: run with STEVEDORE_FAULTS=1 (`make fault`)")
	}
}

// dockerdPIDFile is where dockerd records its pid (its default --pidfile).
const dockerdPIDFile = "/var/run/docker.pid"

// stopEngine stops the local dockerd as a host shutdown does (SIGTERM: it
// stops running containers, then exits) and makes sure the engine is
// started again when the test ends, whatever happens.
func stopEngine(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { startEngine(t) })
	b, err := os.ReadFile(dockerdPIDFile)
	if err != nil {
		t.Fatalf("dockerd pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("dockerd pid %q: %v", b, err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatalf("stop dockerd %d: %v", pid, err)
	}
	for deadline := time.Now().Add(90 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("dockerd %d still running 90 s after SIGTERM", pid)
		}
	}
	t.Logf("dockerd %d stopped", pid)
}

// startEngine starts the engine the way `make setup` does (scripts/setup.sh
// is idempotent and waits until the engine answers).
func startEngine(t *testing.T) {
	t.Helper()
	out, err := exec.Command("bash", "../scripts/setup.sh").CombinedOutput()
	if err != nil {
		t.Errorf("restart the Docker Engine: %v\n%s", err, out)
	}
}

// With no engine at start-up the agent runs: its capabilities say why
// Docker is unavailable, host steps run, container steps fail clearly.
func TestEngineAbsentAtStartup(t *testing.T) {
	sock := t.TempDir() + "/no-docker.sock"
	t.Setenv("DOCKER_HOST", "unix://"+sock)
	ta := startAgent(t)
	caps, err := ta.client.GetCapabilities(context.Background(), &pb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if caps.GetDocker().GetAvailable() || !strings.Contains(caps.GetDocker().GetError(), sock) {
		t.Errorf("docker capability %+v, want unavailable naming %s", caps.GetDocker(), sock)
	}
	tests := []struct {
		name string
		exec *pb.Execution
		want pb.Outcome
	}{
		{"host step runs", host(), pb.Outcome_OUTCOME_SUCCEEDED},
		{"container step fails clearly", inContainer(testenv.Bookworm), pb.Outcome_OUTCOME_AGENT_ERROR},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tk := ticket(t)
			run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Execution: tt.exec, Script: bash("echo ok")})
			if run.final.GetOutcome() != tt.want {
				t.Fatalf("%v (%s), want %v", run.final.GetOutcome(), run.final.GetReason(), tt.want)
			}
			if tt.want != pb.Outcome_OUTCOME_SUCCEEDED && !strings.Contains(run.final.GetReason(), sock) {
				t.Errorf("reason %q does not name the engine it tried", run.final.GetReason())
			}
			ta.complete(t, tk)
		})
	}
}

// The Docker Engine restarts while a container step runs: the step ends
// with the exit code Docker recorded (or LOST) and a reason naming the
// engine; meanwhile capabilities say Docker is unavailable, an agent started
// without an engine runs host steps; once the engine is back both agents
// run container steps again.
func TestFaultEngineRestart(t *testing.T) {
	requireFaults(t)
	withImages(t, testenv.Bookworm)
	ctx := context.Background()
	ta := startAgent(t)
	tk := ticket(t)
	if _, err := ta.client.StartStep(ctx, &pb.StartStepRequest{Ticket: tk, Execution: inContainer(testenv.Bookworm),
		Script: bash("for i in $(seq 1 600); do echo line $i; sleep 0.1; done")}); err != nil {
		t.Fatal(err)
	}
	waitForLine(t, ta, tk, "line 3")
	stopEngine(t)

	caps, err := ta.client.GetCapabilities(ctx, &pb.GetCapabilitiesRequest{})
	if err != nil || caps.GetDocker().GetAvailable() || caps.GetDocker().GetError() == "" {
		t.Errorf("capabilities while the engine is down: %+v %v", caps.GetDocker(), err)
	}
	tb := startAgent(t) // starts without an engine
	caps, err = tb.client.GetCapabilities(ctx, &pb.GetCapabilitiesRequest{})
	if err != nil || caps.GetDocker().GetAvailable() || caps.GetDocker().GetError() == "" {
		t.Errorf("capabilities of an agent started without an engine: %+v %v", caps.GetDocker(), err)
	}
	if run := tb.run(t, &pb.StartStepRequest{Ticket: ticket(t), Execution: host(), Script: bash("echo ok")}); run.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED {
		t.Errorf("host step without an engine: %v %s", run.final.GetOutcome(), run.final.GetReason())
	}
	startEngine(t)

	run := ta.follow(t, tk)
	st := run.final
	t.Logf("after the engine restart: %v exit %d: %s", st.GetOutcome(), exitCode(st), st.GetReason())
	switch st.GetOutcome() {
	case pb.Outcome_OUTCOME_FAILED:
		if st.ExitCode == nil {
			t.Error("FAILED without the exit code Docker recorded")
		}
	case pb.Outcome_OUTCOME_LOST:
	default:
		t.Errorf("outcome %v, want FAILED or LOST", st.GetOutcome())
	}
	if !strings.Contains(st.GetReason(), "Docker Engine") {
		t.Errorf("reason %q does not say the engine went away", st.GetReason())
	}
	for i, l := range run.stdout {
		if l != fmt.Sprintf("line %d", i+1) {
			t.Fatalf("line %d is %q", i+1, l)
		}
	}
	ta.complete(t, tk)

	for name, x := range map[string]*testAgent{"agent that saw the restart": ta, "agent started without an engine": tb} {
		t.Run(name, func(t *testing.T) {
			caps, err := x.client.GetCapabilities(ctx, &pb.GetCapabilitiesRequest{})
			if err != nil || !caps.GetDocker().GetAvailable() {
				t.Errorf("capabilities once the engine is back: %+v %v", caps.GetDocker(), err)
			}
			tk := ticket(t)
			run := x.run(t, &pb.StartStepRequest{Ticket: tk, Execution: inContainer(testenv.Bookworm), Script: bash("echo ok")})
			if run.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED {
				t.Errorf("container step after the engine came back: %v %s", run.final.GetOutcome(), run.final.GetReason())
			}
			x.complete(t, tk)
		})
	}
}
