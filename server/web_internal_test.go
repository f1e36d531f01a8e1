package server

import (
	"testing"
	"time"
)

func TestEndedIn(t *testing.T) {
	started := time.Now()
	for _, c := range []struct {
		rec  StepRecord
		want string
	}{
		{StepRecord{State: StateRunning, StartedAt: started}, ""},
		{StepRecord{State: StateComplete, Outcome: "CANCELLED"}, "queue"},
		{StepRecord{State: StateComplete, Outcome: "TIMED_OUT"}, "queue"},
		{StepRecord{State: StateComplete, Outcome: "PULL_FAILED", StartedAt: started}, "image"},
		{StepRecord{State: StateComplete, Outcome: "IMAGE_REJECTED", StartedAt: started}, "image"},
		{StepRecord{State: StateComplete, Outcome: "ISOLATION_TIMEOUT", StartedAt: started}, "isolation"},
		{StepRecord{State: StateComplete, Outcome: "LOST", StartedAt: started}, "worker"},
		{StepRecord{State: StateComplete, Outcome: "CANCELLED", StartedAt: started}, "script"},
		{StepRecord{State: StateComplete, Outcome: "FAILED", StartedAt: started}, "script"},
	} {
		if got := endedIn(c.rec); got != c.want {
			t.Errorf("%s %s (started %v): %q, want %q", c.rec.State, c.rec.Outcome, !c.rec.StartedAt.IsZero(), got, c.want)
		}
	}
}

// Past maxSessions the oldest session goes; an expired one is gone.
func TestWebSessionsBounded(t *testing.T) {
	var ws webSessions
	first, _, err := ws.open(principal{Name: "a", Role: RoleReader}, [32]byte{})
	if err != nil {
		t.Fatal(err)
	}
	for range maxSessions {
		if _, _, err := ws.open(principal{Name: "b", Role: RoleReader}, [32]byte{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := ws.get(first); ok {
		t.Error("the oldest session outlived maxSessions")
	}
	if len(ws.m) != maxSessions {
		t.Errorf("%d sessions kept, want %d", len(ws.m), maxSessions)
	}
	tok, sess, _ := ws.open(principal{Name: "c", Role: RoleReader}, [32]byte{})
	sess.expires = time.Now().Add(-time.Second)
	if _, ok := ws.get(tok); ok {
		t.Error("an expired session is taken")
	}
}
