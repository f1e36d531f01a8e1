package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
)

// A draining worker's refusal of a new step is not the step's failure:
// the server queues the step again and gives it to a worker that takes
// steps, and dispatch passes the draining worker by from then on.
func TestDrainingWorkerGetsNoSteps(t *testing.T) {
	e := newEnv(t)
	a := e.api()
	w1 := e.pollingAgentServing("w1", 2, e.addr, func(a pb.AgentServer) pb.AgentServer { return a })
	for deadline := time.Now().Add(30 * time.Second); len(e.srv.Workers()) == 0 || !e.srv.Workers()[0].Connected; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("w1 did not connect")
		}
	}
	// The server still thinks w1 takes steps: its capabilities are older
	// than the drain.
	if err := w1.agent.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	pinned := a.submit(map[string]any{"worker": "w1"}, numbered(1, "0"))
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		v := a.step(pinned.ID)
		if v.State != server.StateQueued && v.State != server.StateRunning {
			t.Fatalf("the step went %s (%s %s): a draining worker's refusal failed it", v.State, v.Outcome, v.Reason)
		}
		if v.State == server.StateQueued && strings.Contains(v.WaitingFor, "draining") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("state %s waiting for %q: want it queued again, saying w1 is draining", v.State, v.WaitingFor)
		}
	}
	var w1Status server.WorkerStatus
	for _, ws := range e.srv.Workers() {
		if ws.Name == "w1" {
			w1Status = ws
		}
	}
	if !strings.Contains(w1Status.NotAccepting, "draining") {
		t.Errorf("w1's status %+v does not say it is draining", w1Status)
	}
	e.pollingAgent("w2", 2)
	for i := range 2 {
		rec := a.submit(map[string]any{"pool": "linux"}, numbered(1, "0"))
		if _, final := e.waitComplete(rec.ID); final.Assigned != "w2" || final.Outcome != "FAILED" {
			t.Fatalf("pool step %d: %q on %q, want FAILED (exit 3) on w2", i, final.Outcome, final.Assigned)
		}
	}
	if got := seriesValue(t, scrapeServer(t, e), `stevedore_server_steps_requeued_total{why="not_accepting"}`); got < 1 {
		t.Errorf("steps_requeued_total{why=\"not_accepting\"} = %v, want the refused step counted", got)
	}
	if code, b := a.do("POST", "/api/steps/"+pinned.ID+"/cancel", nil); code >= 300 {
		t.Fatalf("cancel: %d %s", code, b)
	}
}
