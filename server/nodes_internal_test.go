package server

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

// newNode is a server node named name on the database url (PostgreSQL).
func newNode(t *testing.T, name, url string) *Server {
	t.Helper()
	dir := t.TempDir()
	id, _, err := transport.LoadOrCreateIdentity(filepath.Join(dir, "id"))
	if err != nil {
		t.Fatal(err)
	}
	trust, _ := transport.NewTrustList()
	b := &TestBackend{Name: testenv.BackendPostgres, URL: url}
	s, err := New(Config{DataDir: dir, Identity: id, Trust: trust, AdminPassword: "x", MasterKey: "AAAAAAAAAAAAAAAAAAAAAA==", Node: name,
		StepLease: time.Hour, WorkerLostAfter: time.Minute, Logger: hclog.NewNullLogger(), OpenStore: b.OpenStore()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Which running steps a node may take over, by whose lease and where the
// worker is connected.
func TestMayTake(t *testing.T) {
	s := newNode(t, "a", testenv.Postgres(t))
	up, down := newWorker(WorkerRecord{Name: "up"}), newWorker(WorkerRecord{Name: "down"})
	up.client = pb.NewAgentClient(nil)
	s.mu.Lock()
	s.workers["up"], s.workers["down"] = up, down
	s.mu.Unlock()
	now := time.Now()
	cases := []struct {
		name   string
		node   string
		worker string
		lease  time.Time
		want   bool
	}{
		{"its own, from an earlier process", "a", "down", now.Add(time.Minute), true},
		{"another node's, held", "b", "up", now.Add(time.Second), false},
		{"another node's, run out, worker here", "b", "up", now.Add(-time.Second), true},
		{"another node's, run out, worker elsewhere", "b", "down", now.Add(-time.Second), false},
		{"run out longer than WorkerLostAfter, worker nowhere", "b", "down", now.Add(-2 * time.Minute), true},
		{"never leased (an older server's), worker here", "", "up", time.Time{}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := s.mayTake(StepRecord{Node: c.node, Assigned: c.worker, LeaseUntil: c.lease}, now); got != c.want {
				t.Errorf("mayTake = %v, want %v", got, c.want)
			}
		})
	}
}

// A node whose step was taken over by another writes nothing more to it,
// and its driver is stopped at the next renewal.
func TestLostLeaseFencesTheDriver(t *testing.T) {
	url := testenv.Postgres(t)
	a, b := newNode(t, "a", url), newNode(t, "b", url)
	rec, err := a.Submit(SubmitRequest{Pool: "p", Step: &pb.StartStepRequest{Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: "true"}}})
	if err != nil {
		t.Fatal(err)
	}
	if rec, err = a.claim(rec.ID, "w1"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.claim(rec.ID, "w2"); !errors.Is(err, errStateChanged) {
		t.Fatalf("a second claim: %v, want errStateChanged", err)
	}
	ctx, h, _ := a.tryHold(rec.ID)
	defer a.unhold(rec.ID, h)
	// b takes it over, as it would once a's lease ran out.
	if _, err := b.db.UpdateStep(rec.ID, func(cur *StepRecord) error {
		cur.Node, cur.LeaseUntil = "b", time.Now().Add(time.Hour)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rec.Cursor = 5
	if err := a.putStep(rec); !errors.Is(err, errLeaseLost) {
		t.Fatalf("a's write after the takeover: %v, want errLeaseLost", err)
	}
	if got, _ := b.Step(rec.ID); got.Cursor != 0 || got.Node != "b" {
		t.Errorf("a's write landed: cursor %d, node %q", got.Cursor, got.Node)
	}
	a.renewLeases()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a's driver was not stopped")
	}
}

// Nodes on one database present the first node's identity, whatever their
// data dirs hold; a node with another master key cannot open it.
func TestNodesShareTheKeptIdentity(t *testing.T) {
	url := testenv.Postgres(t)
	a, b := newNode(t, "a", url), newNode(t, "b", url)
	if a.Identity().Thumbprint != b.Identity().Thumbprint {
		t.Fatalf("node b presents %s, node a %s", b.Identity().Thumbprint, a.Identity().Thumbprint)
	}
	dir := t.TempDir()
	id, _, _ := transport.LoadOrCreateIdentity(dir)
	trust, _ := transport.NewTrustList()
	_, err := New(Config{DataDir: dir, Identity: id, Trust: trust, AdminPassword: "x", MasterKey: "BBBBBBBBBBBBBBBBBBBBBB==", Node: "c",
		Logger: hclog.NewNullLogger(), OpenStore: (&TestBackend{Name: testenv.BackendPostgres, URL: url}).OpenStore()})
	if err == nil {
		t.Fatal("a node with another master key started on the database")
	}
}

// A step this node holds (its dispatch is under way) is not taken over by
// this node a second time, though it is the node's own.
func TestTakeOverSkipsAHeldStep(t *testing.T) {
	s := newNode(t, "a", testenv.Postgres(t))
	w := newWorker(WorkerRecord{Name: "w1"})
	s.mu.Lock()
	s.workers["w1"] = w
	s.mu.Unlock()
	rec, err := s.Submit(SubmitRequest{Pool: "p", Step: &pb.StartStepRequest{Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: "true"}}})
	if err != nil {
		t.Fatal(err)
	}
	_, h, ok := s.tryHold(rec.ID)
	if !ok {
		t.Fatal("a fresh step is held")
	}
	defer s.unhold(rec.ID, h)
	if _, err := s.claim(rec.ID, "w1"); err != nil {
		t.Fatal(err)
	}
	s.takeOver()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.inflight != 0 {
		t.Errorf("takeover started a driver of a held step: %d in flight", w.inflight)
	}
}

// A thumbprint trusted, then distrusted, through one node is trusted,
// then distrusted, on the other at its next look at the store.
func TestTrustReachesEveryNode(t *testing.T) {
	url := testenv.Postgres(t)
	a, b := newNode(t, "a", url), newNode(t, "b", url)
	tp := strings.Repeat("ab", 32)
	trusted := func(s *Server) bool { return slices.Contains(s.Trusted(), tp) }
	if _, err := a.Trust(tp); err != nil {
		t.Fatal(err)
	}
	if err := b.loadTrust(); err != nil || !trusted(b) {
		t.Fatalf("node b after a trusted it: trusted %v (%v)", trusted(b), err)
	}
	if err := a.Distrust(tp); err != nil {
		t.Fatal(err)
	}
	if err := b.loadTrust(); err != nil || trusted(b) {
		t.Fatalf("node b after a distrusted it: trusted %v (%v)", trusted(b), err)
	}
}
