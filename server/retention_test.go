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

// PruneToSize removes the steps that completed first until the completed
// steps' task logs fit the limit; queued steps stay.
func TestPruneToSizeRemovesTheOldestFirst(t *testing.T) {
	e := newEnv(t)
	e.pollingAgent("w1", 1)
	var ids []string
	var sizes []int64
	for _, lines := range []int{40, 20, 30} {
		rec, err := e.srv.Submit(server.SubmitRequest{Worker: "w1", Step: numbered(lines, "0")})
		if err != nil {
			t.Fatal(err)
		}
		e.waitComplete(rec.ID)
		fi, err := os.Stat(e.srv.TaskLogPath(rec.ID))
		if err != nil {
			t.Fatal(err)
		}
		ids, sizes = append(ids, rec.ID), append(sizes, fi.Size())
	}
	queued, err := e.srv.Submit(server.SubmitRequest{Pool: "nowhere", Step: numbered(1, "0")})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		limit    int64
		wantN    int
		wantGone []string
		wantKept []string
	}{
		{"everything fits", sizes[0] + sizes[1] + sizes[2], 0, nil, ids},
		{"one byte over: the first to complete goes", sizes[0] + sizes[1] + sizes[2] - 1, 1, ids[:1], ids[1:]},
		{"the rest fits", sizes[1] + sizes[2], 0, ids[:1], ids[1:]},
		{"no room: every completed step goes", 0, 2, ids, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n, err := e.srv.PruneToSize(tt.limit); err != nil || n != tt.wantN {
				t.Fatalf("pruned %d (%v), want %d", n, err, tt.wantN)
			}
			for _, id := range tt.wantGone {
				if _, ok := e.srv.Step(id); ok {
					t.Errorf("step %s is still there", id)
				}
				if _, err := os.Stat(e.srv.TaskLogPath(id)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("the task log of %s: %v", id, err)
				}
			}
			for _, id := range tt.wantKept {
				if _, ok := e.srv.Step(id); !ok {
					t.Errorf("step %s was pruned", id)
				}
			}
			if _, ok := e.srv.Step(queued.ID); !ok {
				t.Error("a queued step was pruned")
			}
		})
	}
}
