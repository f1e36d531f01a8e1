package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
)

func isolated(level pb.IsolationLevel, mutex string, wait time.Duration) *pb.Isolation {
	iso := &pb.Isolation{Level: level, MutexName: mutex}
	if wait > 0 {
		iso.WaitTimeout = durationpb.New(wait)
	}
	return iso
}

// waitForState polls until the step reaches state.
func waitForState(t *testing.T, ta *testAgent, tk string, state pb.StepState) *pb.StepStatus {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		st, err := ta.client.GetStatus(context.Background(), &pb.GetStatusRequest{Ticket: tk, AfterSequence: ^uint64(0)})
		if err != nil {
			t.Fatal(err)
		}
		if st.GetState() == state {
			return st
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never reached %v", tk, state)
	return nil
}

// touchFile is a script line that waits for a file the test creates.
func waitFileScript(path string) string {
	return "echo started; while [ ! -e " + path + " ]; do sleep 0.1; done; echo released"
}

// A FULL step holds its mutex while others on it wait and time out, each
// waiter's log naming the holder; a step on another mutex runs meanwhile.
func TestIsolationFullHolderMakesOthersWait(t *testing.T) {
	ta := startAgent(t)
	release := filepath.Join(t.TempDir(), "release")
	holder := ticket(t)
	_, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: holder, StepName: "migrate-db", Execution: host(),
		Script: bash(waitFileScript(release)), Isolation: isolated(pb.IsolationLevel_ISOLATION_LEVEL_FULL, "db", 0)})
	if err != nil {
		t.Fatal(err)
	}
	waitForLine(t, ta, holder, "started")

	tests := []struct {
		name    string
		iso     *pb.Isolation
		outcome pb.Outcome
	}{
		{"full on the same mutex", isolated(pb.IsolationLevel_ISOLATION_LEVEL_FULL, "db", time.Second), pb.Outcome_OUTCOME_ISOLATION_TIMEOUT},
		{"shared on the same mutex", isolated(pb.IsolationLevel_ISOLATION_LEVEL_NONE, "db", time.Second), pb.Outcome_OUTCOME_ISOLATION_TIMEOUT},
		{"full on another mutex", isolated(pb.IsolationLevel_ISOLATION_LEVEL_FULL, "cache", time.Second), pb.Outcome_OUTCOME_SUCCEEDED},
		{"no isolation: the default mutex", nil, pb.Outcome_OUTCOME_SUCCEEDED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tk := ticket(t)
			run := ta.run(t, &pb.StartStepRequest{Ticket: tk, StepName: "waiter", Execution: host(), Script: bash("echo ran"), Isolation: tt.iso})
			if run.final.GetOutcome() != tt.outcome {
				t.Fatalf("outcome %v (%s), want %v", run.final.GetOutcome(), run.final.GetReason(), tt.outcome)
			}
			if tt.outcome != pb.Outcome_OUTCOME_ISOLATION_TIMEOUT {
				return
			}
			if len(run.stdout) != 0 || run.final.GetStartedAt() != nil {
				t.Errorf("a step that timed out waiting ran: %q", run.stdout)
			}
			log := strings.Join(run.agent, "\n")
			for _, want := range []string{`waiting for isolation mutex "db"`, "held by ticket " + holder, `step "migrate-db"`} {
				if !strings.Contains(log, want) {
					t.Errorf("the waiter's log does not say %q:\n%s", want, log)
				}
			}
			reason := run.final.GetReason()
			if !strings.Contains(reason, "waited 1s") || !strings.Contains(reason, holder) {
				t.Errorf("reason %q does not say how long it waited and for whom", reason)
			}
		})
	}

	// A waiter without a timeout waits in PENDING, and runs once the holder ends.
	later := ticket(t)
	if _, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: later, Execution: host(), Script: bash("echo ran"),
		Isolation: isolated(pb.IsolationLevel_ISOLATION_LEVEL_FULL, "db", 0)}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if st := waitForState(t, ta, later, pb.StepState_STEP_STATE_PENDING); st.GetStartedAt() != nil {
		t.Fatalf("the waiter started while the holder ran")
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	h := ta.follow(t, holder)
	run := ta.follow(t, later)
	if run.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED || run.final.GetStartedAt().AsTime().Before(h.final.GetFinishedAt().AsTime()) {
		t.Fatalf("waiter %v started %v, holder finished %v", run.final.GetOutcome(), run.final.GetStartedAt().AsTime(), h.final.GetFinishedAt().AsTime())
	}
	ta.complete(t, holder)
	ta.complete(t, later)
}

// Shared steps on one mutex run at the same time, in containers and on
// the host: each waits to see the others' start before it ends.
func TestIsolationSharedStepsRunTogether(t *testing.T) {
	tests := []struct {
		name string
		exec func() *pb.Execution
	}{
		{"host", host},
		{"container", func() *pb.Execution { return inContainer(testenv.Bookworm) }},
	}
	withImages(t, testenv.Bookworm)
	ta := startAgent(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const n = 3
			var tks []string
			for i := 0; i < n; i++ {
				tk := ticket(t)
				tks = append(tks, tk)
				_, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tk, Execution: tt.exec(),
					Script: bash("echo started; sleep 3"), Isolation: isolated(pb.IsolationLevel_ISOLATION_LEVEL_NONE, "web", 0)})
				if err != nil {
					t.Fatal(err)
				}
			}
			var runs []*stepRun
			for _, tk := range tks {
				runs = append(runs, ta.follow(t, tk))
			}
			// Every one started before any ended: they overlapped.
			for _, a := range runs {
				if a.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED {
					t.Fatalf("outcome %v (%s)", a.final.GetOutcome(), a.final.GetReason())
				}
				for _, b := range runs {
					if !a.final.GetStartedAt().AsTime().Before(b.final.GetFinishedAt().AsTime()) {
						t.Errorf("shared steps ran one after another")
					}
				}
				if strings.Contains(strings.Join(a.agent, "\n"), "waiting for") {
					t.Errorf("a shared step waited: %q", a.agent)
				}
			}
			for _, tk := range tks {
				ta.complete(t, tk)
			}
		})
	}
}

// A FULL step waits for shared ones ahead of it, and shared ones that come
// after it wait for it: readers cannot starve a writer.
func TestIsolationWriterNotStarvedByReaders(t *testing.T) {
	ta := startAgent(t)
	release := filepath.Join(t.TempDir(), "release")
	reader1, writer, reader2 := ticket(t), ticket(t), ticket(t)
	start := func(tk string, level pb.IsolationLevel, script string) {
		t.Helper()
		if _, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tk, StepName: "s-" + tk, Execution: host(),
			Script: bash(script), Isolation: isolated(level, "", 0)}); err != nil {
			t.Fatal(err)
		}
	}
	start(reader1, pb.IsolationLevel_ISOLATION_LEVEL_NONE, waitFileScript(release))
	waitForLine(t, ta, reader1, "started")
	start(writer, pb.IsolationLevel_ISOLATION_LEVEL_FULL, "echo writer")
	time.Sleep(300 * time.Millisecond)
	start(reader2, pb.IsolationLevel_ISOLATION_LEVEL_UNSPECIFIED, "echo reader2")
	time.Sleep(500 * time.Millisecond)
	for _, tk := range []string{writer, reader2} {
		if st := waitForState(t, ta, tk, pb.StepState_STEP_STATE_PENDING); st.GetStartedAt() != nil {
			t.Fatalf("%s started while the first reader held the mutex", tk)
		}
	}
	os.WriteFile(release, nil, 0o644)
	r1, w, r2 := ta.follow(t, reader1), ta.follow(t, writer), ta.follow(t, reader2)
	if w.final.GetStartedAt().AsTime().Before(r1.final.GetFinishedAt().AsTime()) {
		t.Errorf("the writer started before the reader ahead of it ended")
	}
	if r2.final.GetStartedAt().AsTime().Before(w.final.GetFinishedAt().AsTime()) {
		t.Errorf("the later reader overtook the waiting writer")
	}
	log := strings.Join(r2.agent, "\n")
	if !strings.Contains(log, "the agent's default isolation mutex") || !strings.Contains(log, "1 waiting ahead: ticket "+writer) {
		t.Errorf("the later reader's log does not name the writer ahead of it:\n%s", log)
	}
	for _, tk := range []string{reader1, writer, reader2} {
		ta.complete(t, tk)
	}
}

// A cancelled waiter leaves the queue at once, and the one behind it gets
// the mutex when the holder ends.
func TestIsolationCancelWhileWaiting(t *testing.T) {
	ta := startAgent(t)
	release := filepath.Join(t.TempDir(), "release")
	holder, cancelled, behind := ticket(t), ticket(t), ticket(t)
	full := isolated(pb.IsolationLevel_ISOLATION_LEVEL_FULL, "m", 0)
	for _, tk := range []string{holder, cancelled, behind} {
		script := "echo ran"
		if tk == holder {
			script = waitFileScript(release)
		}
		if _, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tk, Execution: host(), Script: bash(script), Isolation: full}); err != nil {
			t.Fatal(err)
		}
		if tk == holder {
			waitForLine(t, ta, holder, "started")
		}
	}
	waitForLine(t, ta, behind, "waiting for isolation mutex \"m\" (full isolation, exclusive): held by ticket "+holder+" (exclusive); 1 waiting ahead: ticket "+cancelled+" (exclusive)")
	start := time.Now()
	if _, err := ta.client.CancelStep(context.Background(), &pb.CancelStepRequest{Ticket: cancelled}); err != nil {
		t.Fatal(err)
	}
	run := ta.follow(t, cancelled)
	if run.final.GetOutcome() != pb.Outcome_OUTCOME_CANCELLED || !strings.Contains(run.final.GetReason(), "while it waited for its isolation mutex") || len(run.stdout) != 0 {
		t.Fatalf("outcome %v reason %q stdout %q", run.final.GetOutcome(), run.final.GetReason(), run.stdout)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("cancelling a waiting step took %s", took)
	}
	os.WriteFile(release, nil, 0o644)
	if b := ta.follow(t, behind); b.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("the step behind the cancelled one: %v (%s)", b.final.GetOutcome(), b.final.GetReason())
	}
	for _, tk := range []string{holder, cancelled, behind} {
		ta.complete(t, tk)
	}
}

// A step running under a FULL hold when the agent stops keeps the hold in
// the next agent process: the step that waited for it still waits.
func TestIsolationHoldSurvivesRestart(t *testing.T) {
	ta := startAgent(t)
	release := filepath.Join(t.TempDir(), "release")
	holder, waiter := ticket(t), ticket(t)
	full := isolated(pb.IsolationLevel_ISOLATION_LEVEL_FULL, "", 0)
	if _, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: holder, StepName: "holder", Execution: host(),
		Script: bash(waitFileScript(release)), Isolation: full}); err != nil {
		t.Fatal(err)
	}
	waitForLine(t, ta, holder, "started")
	if _, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: waiter, Execution: host(), Script: bash("echo ran"), Isolation: full}); err != nil {
		t.Fatal(err)
	}
	waitForState(t, ta, waiter, pb.StepState_STEP_STATE_PENDING)
	ta.stop()
	ta.start()
	time.Sleep(time.Second)
	if st := waitForState(t, ta, waiter, pb.StepState_STEP_STATE_PENDING); st.GetStartedAt() != nil {
		t.Fatal("the waiter took the mutex of the reattached holder")
	}
	os.WriteFile(release, nil, 0o644)
	h, w := ta.follow(t, holder), ta.follow(t, waiter)
	if h.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED || w.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("holder %v (%s), waiter %v (%s)", h.final.GetOutcome(), h.final.GetReason(), w.final.GetOutcome(), w.final.GetReason())
	}
	if w.final.GetStartedAt().AsTime().Before(h.final.GetFinishedAt().AsTime()) {
		t.Error("the waiter ran beside the holder after the restart")
	}
	if !strings.Contains(strings.Join(w.agent, "\n"), "held by ticket "+holder) {
		t.Errorf("the waiter's log does not name the holder after the restart: %q", w.agent)
	}
	ta.complete(t, holder)
	ta.complete(t, waiter)
}
