package server_test

import (
	"errors"
	"io/fs"
	"os"
	"testing"
	"time"

	"stevedore/server"
)

// Completed steps past retention go with their task logs and submission
// keys; queued ones stay.
func TestPruneRemovesOnlyOldCompletedSteps(t *testing.T) {
	e := newEnv(t)
	e.pollingAgent("w1", 2)
	done, err := e.srv.Submit(server.SubmitRequest{Worker: "w1", Step: numbered(3, "0"), Key: "k1"})
	if err != nil {
		t.Fatal(err)
	}
	e.waitComplete(done.ID)
	queued, err := e.srv.Submit(server.SubmitRequest{Pool: "nowhere", Step: numbered(1, "0")})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := e.srv.Prune(time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("a cutoff before every step pruned %d (%v)", n, err)
	}
	if n, err := e.srv.Prune(time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("pruned %d (%v), want the completed step", n, err)
	}
	if _, ok := e.srv.Step(done.ID); ok {
		t.Error("the pruned step is still there")
	}
	if _, err := os.Stat(e.srv.TaskLogPath(done.ID)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("its task log: %v", err)
	}
	if _, ok := e.srv.Step(queued.ID); !ok {
		t.Error("a queued step was pruned")
	}
	again, err := e.srv.Submit(server.SubmitRequest{Worker: "w1", Step: numbered(1, "0"), Key: "k1"})
	if err != nil || again.ID == done.ID {
		t.Errorf("the pruned step's key still answers: %v %v", again.ID, err)
	}
}
