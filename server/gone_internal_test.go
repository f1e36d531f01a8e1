package server

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

// A step whose worker went away before the step was sent to it never ran:
// past WorkerLostAfter it goes back to the queue, and the worker's slot is
// given back.
func TestStepNeverSentIsQueuedAgain(t *testing.T) {
	dir := t.TempDir()
	id, _, err := transport.LoadOrCreateIdentity(filepath.Join(dir, "id"))
	if err != nil {
		t.Fatal(err)
	}
	trust, _ := transport.NewTrustList()
	s, err := New(Config{DataDir: dir, Identity: id, Trust: trust, WorkerLostAfter: 200 * time.Millisecond, AdminPassword: "x",
		Logger: hclog.NewNullLogger(), OpenStore: NewTestBackend(t).OpenStore()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	w := newWorker(WorkerRecord{Name: "w1", Pools: []string{"p"}}) // never connects
	// The dispatcher reads the slots under the worker's lock, as these must.
	inflight := func(delta int) int {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.inflight += delta
		return w.inflight
	}
	s.mu.Lock()
	s.workers["w1"] = w
	s.mu.Unlock()
	rec, err := s.Submit(SubmitRequest{Pool: "p", Step: &pb.StartStepRequest{Execution: &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}},
		Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: "true"}}})
	if err != nil {
		t.Fatal(err)
	}
	// As dispatch does, had the worker been up a moment before.
	inflight(1)
	if rec, err = s.claim(rec.ID, "w1"); err != nil {
		t.Fatal(err)
	}
	s.drive(context.Background(), rec, w, false)
	got, _ := s.Step(rec.ID)
	if got.State != StateQueued || got.Assigned != "" || got.Outcome != "" {
		t.Fatalf("state %q assigned %q outcome %q, want queued again", got.State, got.Assigned, got.Outcome)
	}
	if n := inflight(0); n != 0 {
		t.Errorf("the worker's slot was not given back: %d in flight", n)
	}
	// A step an earlier server process drove may have been sent: LOST.
	if got, err = s.claim(rec.ID, "w1"); err != nil {
		t.Fatal(err)
	}
	inflight(1)
	s.drive(context.Background(), got, w, true)
	if got, _ = s.Step(rec.ID); got.Outcome != "LOST" {
		t.Fatalf("outcome %q (%s), want LOST", got.Outcome, got.Reason)
	}

	// One whose cancel was asked for meanwhile is not queued again: it ends.
	rec, err = s.Submit(SubmitRequest{Pool: "p", Step: &pb.StartStepRequest{Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: "true"}}})
	if err != nil {
		t.Fatal(err)
	}
	inflight(1)
	if rec, err = s.claim(rec.ID, "w1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Cancel(rec.ID); err != nil {
		t.Fatal(err)
	}
	s.drive(context.Background(), rec, w, false)
	if got, _ = s.Step(rec.ID); got.Outcome != "CANCELLED" || inflight(0) != 0 {
		t.Fatalf("outcome %q (%s), %d in flight; want CANCELLED and the slot back", got.Outcome, got.Reason, inflight(0))
	}
}
