package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
)

// The agent process is SIGKILLed at random moments while 20 steps (host and
// container) print numbered lines, and restarted each time: every step's
// whole log arrives once, in order, with its exit code, and each script
// ran once.
func TestFaultAgentKilled(t *testing.T) {
	if os.Getenv("STEVEDORE_FAULTS") != "1" {
		t.Skip("the fault suite: run with STEVEDORE_FAULTS=1 (`make fault`)")
	}
	const steps, lines, maxKills = 20, 40, 10
	cli, _ := testenv.Docker(t)
	testenv.Image(t, cli, testenv.Bookworm)
	p := newAgentProc(t, testenv.Binary(t), "--max-steps", "6")
	p.start()
	marks := t.TempDir() // host scripts leave a mark per run
	if err := os.Chmod(marks, 0o777); err != nil {
		t.Fatal(err)
	}

	// The killer: SIGKILL at a random moment, restart after a random pause.
	done := make(chan struct{})
	var kills int
	killerDone := make(chan struct{})
	go func() {
		defer close(killerDone)
		for kills < maxKills {
			select {
			case <-done:
				return
			case <-time.After(time.Duration(200+rand.IntN(1800)) * time.Millisecond):
			}
			p.signal(syscall.SIGKILL)
			if !p.wait(10 * time.Second) {
				t.Error("the agent did not die of SIGKILL")
				return
			}
			kills++
			time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
			p.start()
		}
	}()

	type result struct {
		final  *pb.StepStatus
		stdout []string
	}
	results := make([]result, steps)
	var wg sync.WaitGroup
	for i := range steps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i*150) * time.Millisecond) // arrivals spread over the kills
			tk := fmt.Sprintf("chaos-%d", i)
			body := fmt.Sprintf("for n in $(seq 1 %d); do echo \"step %d line $n\"; sleep 0.05; done; exit %d", lines, i, i%4)
			req := hostStep(tk, fmt.Sprintf("echo run >> %s/%s; %s", marks, tk, body))
			if i%2 == 1 {
				req = hostStep(tk, body)
				req.Execution = &pb.Execution{Target: &pb.Execution_Container{Container: &pb.ContainerExecution{Image: testenv.Bookworm}}}
			}
			// A StartStep whose reply is lost is simply sent again: same ticket, one run.
			retryCall(t, p, "StartStep "+tk, func(ctx context.Context, c pb.AgentClient) error {
				_, err := c.StartStep(ctx, req)
				return err
			})
			final, stdout := followStep(t, p, tk)
			results[i] = result{final, stdout}
		}()
	}
	wg.Wait()
	close(done)
	<-killerDone
	t.Logf("%d SIGKILLs across %d steps", kills, steps)

	for i, r := range results {
		tk := fmt.Sprintf("chaos-%d", i)
		if r.final == nil {
			t.Errorf("%s: no final status", tk)
			continue
		}
		want := pb.Outcome_OUTCOME_SUCCEEDED
		if i%4 != 0 {
			want = pb.Outcome_OUTCOME_FAILED
		}
		if r.final.GetOutcome() != want || r.final.GetExitCode() != int32(i%4) {
			t.Errorf("%s: %v exit %d (%s), want %v exit %d", tk, r.final.GetOutcome(), r.final.GetExitCode(), r.final.GetReason(), want, i%4)
		}
		if len(r.stdout) != lines {
			t.Errorf("%s: %d lines, want %d", tk, len(r.stdout), lines)
		}
		for n, l := range r.stdout {
			if l != fmt.Sprintf("step %d line %d", i, n+1) {
				t.Errorf("%s: line %d is %q", tk, n+1, l)
				break
			}
		}
		if i%2 == 0 {
			b, err := os.ReadFile(filepath.Join(marks, tk))
			if runs := strings.Count(string(b), "run"); err != nil || runs != 1 {
				t.Errorf("%s ran %d times (%v)", tk, runs, err)
			}
		}
		retryCall(t, p, "CompleteStep "+tk, func(ctx context.Context, c pb.AgentClient) error {
			_, err := c.CompleteStep(ctx, &pb.CompleteStepRequest{Ticket: tk, AfterSequence: ^uint64(0) >> 1})
			return err
		})
	}
}
