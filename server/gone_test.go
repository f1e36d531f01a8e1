package server_test

import (
	"context"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
)

// waitLine waits until the step's task log has a line.
func (e *env) waitLine(id string) {
	e.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		if lines, _, err := e.srv.Log(context.Background(), id, 0, 1, time.Second); err == nil && len(lines) > 0 {
			return
		}
	}
	e.t.Fatalf("step %s logged nothing", id)
}

// waitCollected waits until the step ended CANCELLED on the agent and was
// collected there (its workspace removed): the server cancelled and
// completed it.
func (e *env) waitCollected(w *pollingWorker, name, ticket string) {
	t := e.t
	t.Helper()
	dir := filepath.Join(e.dir, "agent-"+name, "steps", ticket)
	var st *pb.StepStatus
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var err error
		st, err = w.agent.GetStatus(context.Background(), &pb.GetStatusRequest{Ticket: ticket, AfterSequence: ^uint64(0) >> 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(dir); st.GetOutcome() == pb.Outcome_OUTCOME_CANCELLED && errors.Is(err, fs.ErrNotExist) {
			return
		}
	}
	t.Fatalf("the worker did not cancel and collect step %s: %v %v", ticket, st.GetState(), st.GetOutcome())
}

// A worker that goes away mid-step and stays away (a cloud worker scaled
// in without a drain) does not hold its step for ever: past
// WorkerLostAfter the step ends LOST, saying why; when the worker comes
// back after all, the step is cancelled and collected there, so nothing of
// it runs on unseen.
func TestStepOfAWorkerThatStaysAwayEndsLost(t *testing.T) {
	e := newEnv(t, func(c *server.Config) { c.WorkerLostAfter = 2 * time.Second })
	w := e.pollingAgentServing("w1", 2, e.addr, func(a pb.AgentServer) pb.AgentServer { return a })
	rec, err := e.srv.Submit(server.SubmitRequest{Worker: "w1", Step: numbered(300, "0.1")})
	if err != nil {
		t.Fatal(err)
	}
	e.waitLine(rec.ID)
	w.disconnect()
	start := time.Now()
	_, final := e.waitComplete(rec.ID)
	if final.Outcome != "LOST" || !strings.Contains(final.Reason, "away since") || !strings.Contains(final.Reason, "2s") {
		t.Fatalf("outcome %q reason %q, want LOST naming how long the worker was away", final.Outcome, final.Reason)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("the step ended %s after its worker went", took)
	}
	if st, err := w.agent.GetStatus(context.Background(), &pb.GetStatusRequest{Ticket: rec.ID}); err != nil || st.GetState() == pb.StepState_STEP_STATE_COMPLETE {
		t.Fatalf("the step should still run on the cut-off worker: %v %v", st.GetState(), err)
	}
	w.connect()
	e.waitCollected(w, "w1", rec.ID)
}

// An admin forgets a worker that is gone for good: refused while it is
// connected; once it is not, its running step ends LOST at once and it
// leaves the worker list.
func TestForgetWorker(t *testing.T) {
	e := newEnv(t)
	a := e.api()
	w := e.pollingAgentServing("w1", 2, e.addr, func(a pb.AgentServer) pb.AgentServer { return a })
	rec, err := e.srv.Submit(server.SubmitRequest{Worker: "w1", Step: numbered(300, "0.1")})
	if err != nil {
		t.Fatal(err)
	}
	e.waitLine(rec.ID)
	if code, b := a.do("DELETE", "/api/workers/w1", nil); code != http.StatusConflict {
		t.Fatalf("forgetting a connected worker: %d %s, want 409", code, b)
	}
	w.disconnect()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		code, b := a.do("DELETE", "/api/workers/w1", nil)
		if code == http.StatusNoContent {
			break
		}
		if code != http.StatusConflict || time.Now().After(deadline) {
			t.Fatalf("forgetting a disconnected worker: %d %s, want 204", code, b)
		}
	}
	_, final := e.waitComplete(rec.ID)
	if final.Outcome != "LOST" || !strings.Contains(final.Reason, "removed") {
		t.Fatalf("outcome %q reason %q, want LOST: the worker was removed", final.Outcome, final.Reason)
	}
	for _, ws := range e.srv.Workers() {
		if ws.Name == "w1" {
			t.Errorf("the forgotten worker is still listed: %+v", ws)
		}
	}
	if code, _ := a.do("DELETE", "/api/workers/w1", nil); code != http.StatusNotFound {
		t.Errorf("forgetting it again: %d, want 404", code)
	}
	// Back under the same name, it is admitted again and its abandoned
	// step is collected.
	w.connect()
	e.waitCollected(w, "w1", rec.ID)
}

// When a worker went away is kept across a server restart, so that
// WorkerLostAfter counts from then, not from the restart.
func TestWorkerAwaySinceSurvivesARestart(t *testing.T) {
	e := newEnv(t)
	w := e.pollingAgentServing("w1", 1, e.addr, func(a pb.AgentServer) pb.AgentServer { return a })
	status := func() server.WorkerStatus { // zero until w1 first connects
		for _, ws := range e.srv.Workers() {
			if ws.Name == "w1" {
				return ws
			}
		}
		return server.WorkerStatus{}
	}
	for deadline := time.Now().Add(30 * time.Second); !status().Connected; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("w1 did not connect")
		}
	}
	w.disconnect()
	var left time.Time
	for deadline := time.Now().Add(10 * time.Second); left.IsZero(); time.Sleep(20 * time.Millisecond) {
		if st := status(); !st.Connected {
			left = st.DisconnectedSince
		}
		if time.Now().After(deadline) {
			t.Fatal("the server did not see w1 go")
		}
	}
	time.Sleep(50 * time.Millisecond)
	e.stop()
	e.start("127.0.0.1:0")
	if got := status(); got.Name != "w1" || !got.DisconnectedSince.Equal(left) {
		t.Errorf("after a restart w1 is %+v, want it away since %v (when it went)", got, left)
	}
}
