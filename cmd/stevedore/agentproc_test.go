package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

// agentProc is `stevedore agent` run as its own process, as a service
// manager runs it, restartable over the same state dir and port.
type agentProc struct {
	t        *testing.T
	bin      string
	stateDir string
	addr     string
	extra    []string
	clientID *transport.Identity
	agentTP  string
	logPath  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	conn   *grpc.ClientConn
	client pb.AgentClient
}

func newAgentProc(t *testing.T, bin string, extra ...string) *agentProc {
	t.Helper()
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil { // workspaces are mounted into containers
		t.Fatal(err)
	}
	p := &agentProc{t: t, bin: bin, stateDir: filepath.Join(root, "agent"), extra: extra, logPath: filepath.Join(root, "agent.log")}
	id, _, err := transport.LoadOrCreateIdentity(p.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	p.agentTP = id.Thumbprint
	if p.clientID, _, err = transport.LoadOrCreateIdentity(filepath.Join(root, "client")); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = lis.Addr().String()
	lis.Close()
	t.Cleanup(func() {
		p.signal(syscall.SIGKILL)
		p.wait(10 * time.Second)
		if t.Failed() {
			b, _ := os.ReadFile(p.logPath)
			t.Logf("agent log:\n%s", b)
		}
	})
	return p
}

// start runs the agent and waits until it serves.
func (p *agentProc) start() {
	t := p.t
	t.Helper()
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	args := append([]string{"agent", "--state-dir", p.stateDir, "--listen", p.addr, "--trust", p.clientID.Thumbprint,
		"--bundle", testenv.BundleDir(t), "--log-level", "debug"}, p.extra...)
	cmd := exec.Command(p.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.Dial("tcp", p.addr)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(p.logPath)
			t.Fatalf("the agent exited at start-up: %v\n%s", cmd.ProcessState, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent does not listen after 30 s")
		}
	}
	conn, err := transport.Dial(p.addr, p.clientID, p.agentTP)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.cmd, p.exited, p.conn, p.client = cmd, exited, conn, pb.NewAgentClient(conn)
	p.mu.Unlock()
}

func (p *agentProc) current() pb.AgentClient {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.client
}

func (p *agentProc) signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(sig)
	}
}

// wait waits for the agent process to exit; false if it did not within d.
func (p *agentProc) wait(d time.Duration) bool {
	p.mu.Lock()
	exited, conn := p.exited, p.conn
	p.mu.Unlock()
	if exited == nil {
		return true
	}
	select {
	case <-exited:
		if conn != nil {
			conn.Close()
		}
		return true
	case <-time.After(d):
		return false
	}
}

// followStep reads a step to its end through whichever agent process is
// current, riding out restarts; it checks sequences arrive gapless and once.
func followStep(t *testing.T, p *agentProc, tk string) (final *pb.StepStatus, stdout []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var after uint64
	for {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := p.current().GetStatus(cctx, &pb.GetStatusRequest{Ticket: tk, AfterSequence: after, Wait: durationpb.New(2 * time.Second)})
		ccancel()
		if err != nil {
			if fatalCode(err) || ctx.Err() != nil {
				t.Errorf("GetStatus(%s): %v", tk, err)
				return nil, stdout
			}
			time.Sleep(100 * time.Millisecond) // the agent is restarting
			continue
		}
		for _, l := range st.GetLines() {
			if l.GetSequence() != after+1 {
				t.Errorf("%s: line sequence %d after %d: a gap or a repeat", tk, l.GetSequence(), after)
				return nil, stdout
			}
			after = l.GetSequence()
			if l.GetSource() == pb.LogSource_LOG_SOURCE_STDOUT {
				stdout = append(stdout, string(l.GetText()))
			}
		}
		if st.GetState() == pb.StepState_STEP_STATE_COMPLETE && after+1 >= st.GetNextSequence() {
			return st, stdout
		}
	}
}

// retryCall calls f until it succeeds or fails for a reason a restart does not explain.
func retryCall(t *testing.T, p *agentProc, what string, f func(ctx context.Context, c pb.AgentClient) error) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := f(ctx, p.current())
		cancel()
		if err == nil {
			return
		}
		if fatalCode(err) || time.Now().After(deadline) {
			t.Errorf("%s: %v", what, err)
			return
		}
	}
}

// fatalCode: errors that no agent restart explains.
func fatalCode(err error) bool {
	switch status.Code(err) {
	case codes.NotFound, codes.InvalidArgument, codes.PermissionDenied, codes.FailedPrecondition:
		return true
	}
	return false
}

func hostStep(tk, body string) *pb.StartStepRequest {
	return &pb.StartStepRequest{Ticket: tk, Execution: &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}},
		Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: body}}
}

// SIGTERM and SIGINT stop the agent at once and leave the running step
// running, for the next agent to follow; a drain (the command, or SIGQUIT)
// refuses new steps and exits once the running one has ended.
func TestAgentSignals(t *testing.T) {
	const lines = 30
	script := fmt.Sprintf("for i in $(seq 1 %d); do echo line $i; sleep 0.1; done", lines)
	tests := []struct {
		name  string
		stop  func(p *agentProc)
		drain bool
	}{
		{"SIGTERM", func(p *agentProc) { p.signal(syscall.SIGTERM) }, false},
		{"SIGINT", func(p *agentProc) { p.signal(syscall.SIGINT) }, false},
		{"SIGQUIT drains", func(p *agentProc) { p.signal(syscall.SIGQUIT) }, true},
		{"agent drain", func(p *agentProc) {
			go func() {
				out, err := exec.Command(p.bin, "agent", "drain", "--state-dir", p.stateDir, "--timeout", "1m").CombinedOutput()
				if err != nil {
					p.t.Errorf("stevedore agent drain: %v\n%s", err, out)
				}
			}()
		}, true},
	}
	bin := testenv.Binary(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newAgentProc(t, bin)
			p.start()
			tk := "signals-1"
			retryCall(t, p, "StartStep", func(ctx context.Context, c pb.AgentClient) error {
				_, err := c.StartStep(ctx, hostStep(tk, script))
				return err
			})
			waitLine(t, p, tk, "line 3")
			stopped := time.Now()
			tt.stop(p)
			result := filepath.Join(p.stateDir, "steps", tk, "result.json")
			if tt.drain {
				// Refused once the signal is handled, with a reason; the
				// running step goes on. (Steps taken before that simply run.)
				for i, deadline := 2, time.Now().Add(10*time.Second); ; i++ {
					_, err := p.current().StartStep(context.Background(), hostStep(fmt.Sprintf("signals-%d", i), "true"))
					if status.Code(err) == codes.Unavailable {
						t.Logf("refused: %v", err)
						break
					}
					if err != nil || time.Now().After(deadline) {
						t.Fatalf("StartStep while draining: %v, want Unavailable", err)
					}
					time.Sleep(20 * time.Millisecond)
				}
				if !p.wait(time.Minute) {
					t.Fatal("the draining agent did not exit after its step ended")
				}
				if _, err := os.Stat(result); err != nil {
					t.Errorf("the agent exited before its step ended: %v", err)
				}
			} else {
				if !p.wait(5 * time.Second) {
					t.Fatal("the agent did not exit within 5 s")
				}
				t.Logf("exited %s after the signal", time.Since(stopped).Round(time.Millisecond))
				if _, err := os.Stat(result); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the step should still run after the agent stopped: %v", err)
				}
			}
			if _, err := os.Stat(filepath.Join(p.stateDir, agentPIDFile)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pid file left behind: %v", err)
			}
			p.start()
			final, stdout := followStep(t, p, tk)
			if final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED || len(stdout) != lines {
				t.Errorf("after the restart: %v (%s), %d lines, want SUCCEEDED and %d", final.GetOutcome(), final.GetReason(), len(stdout), lines)
			}
		})
	}
}

func waitLine(t *testing.T, p *agentProc, tk, want string) {
	t.Helper()
	var after uint64
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		st, err := p.current().GetStatus(context.Background(), &pb.GetStatusRequest{Ticket: tk, AfterSequence: after, Wait: durationpb.New(2 * time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range st.GetLines() {
			after = l.GetSequence()
			if string(l.GetText()) == want {
				return
			}
		}
		if st.GetState() == pb.StepState_STEP_STATE_COMPLETE {
			t.Fatalf("step ended before %q", want)
		}
	}
	t.Fatalf("no line %q", want)
}

// `stevedore run` in direct mode rides out an agent killed and restarted
// mid-step: it prints every line once, in order, and exits with the step's
// real code.
func TestRunRidesOutAnAgentRestart(t *testing.T) {
	p := newAgentProc(t, testenv.Binary(t))
	p.start()
	var stdout, stderr testenv.SyncBuffer
	run := exec.Command(p.bin, "run", "--state-dir", filepath.Join(filepath.Dir(p.stateDir), "client"), "--agent", p.addr,
		"--agent-thumbprint", p.agentTP, "--script", "for i in $(seq 1 40); do echo line $i; sleep 0.05; done; exit 6")
	run.Stdout, run.Stderr = &stdout, &stderr
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); !strings.Contains(stdout.String(), "line 10\n"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no line 10; stderr: %s", stderr.String())
		}
	}
	p.signal(syscall.SIGKILL)
	p.wait(10 * time.Second)
	time.Sleep(time.Second) // the run client finds the agent gone
	p.start()
	err := run.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 6 {
		t.Fatalf("run: %v, want exit code 6\nstderr: %s", err, stderr.String())
	}
	want := make([]string, 40)
	for i := range want {
		want[i] = fmt.Sprintf("line %d", i+1)
	}
	if got := strings.TrimSpace(stdout.String()); got != strings.Join(want, "\n") {
		t.Errorf("run's stdout:\n%s", got)
	}
}

// Ctrl-C on `stevedore run` cancels the step (its script gets TERM) and run
// ends with the step's own end; it does not leave the step running.
func TestRunInterruptCancelsTheStep(t *testing.T) {
	p := newAgentProc(t, testenv.Binary(t))
	p.start()
	result := filepath.Join(t.TempDir(), "result.json")
	run, stdout, stderr := startRunUntil(t, "line 3", "--state-dir", filepath.Join(filepath.Dir(p.stateDir), "client"), "--agent", p.addr,
		"--agent-thumbprint", p.agentTP, "--result", result,
		"--script", "trap 'echo got TERM; exit 7' TERM; for i in $(seq 1 600); do echo line $i; sleep 0.1; done")
	run.Process.Signal(syscall.SIGINT)
	err := run.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("run: %v, want the script's exit code 7\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "got TERM") || !strings.Contains(stderr.String(), "cancelling the step") {
		t.Errorf("stdout: %s\nstderr: %s", stdout.String(), stderr.String())
	}
	b, err := os.ReadFile(result)
	if err != nil || !strings.Contains(string(b), `"outcome": "CANCELLED"`) {
		t.Errorf("result: %s %v", b, err)
	}
}

// startRunUntil starts `stevedore run` with args and waits until its stdout
// has the line want.
func startRunUntil(t *testing.T, want string, args ...string) (*exec.Cmd, *testenv.SyncBuffer, *testenv.SyncBuffer) {
	t.Helper()
	var stdout, stderr testenv.SyncBuffer
	run := exec.Command(testenv.Binary(t), append([]string{"run"}, args...)...)
	run.Stdout, run.Stderr = &stdout, &stderr
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if run.ProcessState == nil {
			run.Process.Kill()
			run.Wait()
		}
	})
	for deadline := time.Now().Add(time.Minute); !strings.Contains(stdout.String(), want+"\n"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("run printed no %q; stderr: %s", want, stderr.String())
		}
	}
	return run, &stdout, &stderr
}
