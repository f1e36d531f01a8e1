package store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"stevedore/internal/testenv"
	"stevedore/server/store"
	"stevedore/server/store/boltstore"
	"stevedore/server/store/pgstore"
)

// backend opens a fresh database for one test; each call of the opener it
// returns opens that same database again (after the test closed the last
// one), as a restarted server does.
type backend struct {
	name string
	open func(t *testing.T) (opener func() store.Store)
}

// backends are the stores every test here runs against: a new backend is
// one more line.
func backends() []backend {
	return []backend{
		{"bolt", openBolt},
		{"postgres", openPostgres},
	}
}

// openPostgres: a database of the test's own; it fails the test in CI
// when PostgreSQL is missing.
func openPostgres(t *testing.T) func() store.Store {
	url := testenv.Postgres(t)
	return func() store.Store {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := pgstore.Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

func openBolt(t *testing.T) func() store.Store {
	path := filepath.Join(t.TempDir(), "server.db")
	return func() store.Store {
		s, err := boltstore.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

// conformance is what every backend promises (the doc comments of store).
var conformance = []struct {
	name string
	test func(t *testing.T, open func() store.Store)
}{
	{"CreateStepIdempotentByKey", testCreateStepIdempotent},
	{"CreateStepConcurrentSameKey", testCreateStepConcurrent},
	{"CreateStepConflict", testCreateStepConflict},
	{"NotFound", testNotFound},
	{"UpdateStepNoLostUpdates", testUpdateStepConcurrent},
	{"UpdateStepError", testUpdateStepError},
	{"CancelSticky", testCancelSticky},
	{"QueueOrder", testQueueOrder},
	{"Reopen", testReopen},
	{"RoundTrip", testRoundTrip},
	{"DeleteSteps", testDeleteSteps},
	{"Abandoned", testAbandoned},
	{"Workers", testWorkers},
	{"Trust", testTrust},
	{"Users", testUsers},
	{"APIKeys", testAPIKeys},
	{"Backup", testBackup},
	{"KeepSetting", testKeepSetting},
	{"Leases", testLeases},
}

func TestConformance(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			for _, c := range conformance {
				t.Run(c.name, func(t *testing.T) { c.test(t, b.open(t)) })
			}
		})
	}
}

func step(id, state string) store.StepRecord {
	return store.StepRecord{ID: id, Pool: "linux", State: state, Sealed: []byte{0, 1, 2, 0xff}, CreatedAt: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
}

func mustCreate(t *testing.T, s store.Store, rec store.StepRecord, key string) store.StepRecord {
	t.Helper()
	got, created, err := s.CreateStep(rec, key)
	if err != nil || !created {
		t.Fatalf("CreateStep(%s, %q): created %v, %v", rec.ID, key, created, err)
	}
	return got
}

func ids(recs []store.StepRecord) []string {
	out := []string{}
	for _, r := range recs {
		out = append(out, r.ID)
	}
	return out
}

func list(t *testing.T, s store.Store, state string) []string {
	t.Helper()
	recs, err := s.ListSteps(state)
	if err != nil {
		t.Fatal(err)
	}
	return ids(recs)
}

func testCreateStepIdempotent(t *testing.T, open func() store.Store) {
	s := open()
	first := mustCreate(t, s, step("s1", store.StateQueued), "k")
	again, created, err := s.CreateStep(step("s2", store.StateQueued), "k")
	if err != nil || created || again.ID != first.ID || !bytes.Equal(again.Sealed, first.Sealed) {
		t.Fatalf("same key again: %s, created %v, %v; want %s, not created", again.ID, created, err, first.ID)
	}
	mustCreate(t, s, step("s3", store.StateQueued), "other")
	mustCreate(t, s, step("s4", store.StateQueued), "")
	mustCreate(t, s, step("s5", store.StateQueued), "")
	if got := list(t, s, ""); !slices.Equal(got, []string{"s1", "s3", "s4", "s5"}) {
		t.Errorf("steps %v", got)
	}
}

func testCreateStepConcurrent(t *testing.T, open func() store.Store) {
	s := open()
	const n = 16
	var wg sync.WaitGroup
	got := make([]string, n)
	var made sync.Map
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec, created, err := s.CreateStep(step(fmt.Sprintf("s%02d", i), store.StateQueued), "retried")
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = rec.ID
			if created {
				made.Store(rec.ID, true)
			}
		}()
	}
	wg.Wait()
	var created []any
	made.Range(func(k, _ any) bool { created = append(created, k); return true })
	if len(created) != 1 {
		t.Fatalf("%d steps created for one key: %v", len(created), created)
	}
	for _, id := range got {
		if id != created[0] {
			t.Errorf("a submission got %s, not the one step %s", id, created[0])
		}
	}
	if all := list(t, s, ""); len(all) != 1 {
		t.Errorf("steps %v, want one", all)
	}
}

func testCreateStepConflict(t *testing.T, open func() store.Store) {
	s := open()
	mustCreate(t, s, step("s1", store.StateQueued), "")
	if _, _, err := s.CreateStep(step("s1", store.StateComplete), ""); !errors.Is(err, store.ErrConflict) {
		t.Errorf("the same ID again: %v, want ErrConflict", err)
	}
	if rec, _ := s.Step("s1"); rec.State != store.StateQueued {
		t.Errorf("the first step was overwritten: %+v", rec)
	}
}

func testNotFound(t *testing.T, open func() store.Store) {
	s := open()
	_, err := s.Step("nope")
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", what, err)
		}
	}
	check("Step", err)
	_, err = s.UpdateStep("nope", func(*store.StepRecord) error { t.Error("fn called for no step"); return nil })
	check("UpdateStep", err)
	_, err = s.User("nobody")
	check("User", err)
	_, err = s.APIKeyByHash(sha256.Sum256([]byte("nope")))
	check("APIKeyByHash", err)
	_, err = s.DeleteAPIKey("knope")
	check("DeleteAPIKey", err)
	if asked, err := s.CancelRequested("nope"); asked || err != nil {
		t.Errorf("CancelRequested of no step: %v, %v; want false, nil", asked, err)
	}
	if at, err := s.WorkerLeft("nobody"); !at.IsZero() || err != nil {
		t.Errorf("WorkerLeft of no worker: %v, %v", at, err)
	}
}

func testUpdateStepConcurrent(t *testing.T, open func() store.Store) {
	s := open()
	mustCreate(t, s, step("s1", store.StateRunning), "")
	const writers, each = 8, 25
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := s.UpdateStep("s1", func(r *store.StepRecord) error { r.Cursor++; return nil }); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	rec, err := s.Step("s1")
	if err != nil || rec.Cursor != writers*each {
		t.Errorf("cursor %d, %v; want %d", rec.Cursor, err, writers*each)
	}
}

func testUpdateStepError(t *testing.T, open func() store.Store) {
	s := open()
	mustCreate(t, s, step("s1", store.StateQueued), "")
	errNo := errors.New("not now")
	_, err := s.UpdateStep("s1", func(r *store.StepRecord) error {
		r.State, r.Cursor = store.StateRunning, 9
		return errNo
	})
	if !errors.Is(err, errNo) {
		t.Fatalf("UpdateStep: %v, want fn's error", err)
	}
	if rec, _ := s.Step("s1"); rec.State != store.StateQueued || rec.Cursor != 0 {
		t.Errorf("written despite fn's error: %+v", rec)
	}
	if q := list(t, s, store.StateQueued); !slices.Equal(q, []string{"s1"}) {
		t.Errorf("queue %v", q)
	}
	// fn cannot move the record to another ID.
	rec, err := s.UpdateStep("s1", func(r *store.StepRecord) error { r.ID = "s2"; r.Cursor = 1; return nil })
	if err != nil || rec.ID != "s1" {
		t.Errorf("UpdateStep changing the ID: %+v, %v", rec, err)
	}
	if _, err := s.Step("s2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a step s2 appeared: %v", err)
	}
}

func testCancelSticky(t *testing.T, open func() store.Store) {
	s := open()
	old := mustCreate(t, s, step("s1", store.StateRunning), "")
	if asked, _ := s.CancelRequested("s1"); asked {
		t.Fatal("cancel asked for before it was")
	}
	if _, err := s.UpdateStep("s1", func(r *store.StepRecord) error { r.CancelRequested = true; return nil }); err != nil {
		t.Fatal(err)
	}
	// A driver writes back its copy, read before the cancel.
	old.Cursor = 5
	rec, err := s.UpdateStep("s1", func(r *store.StepRecord) error { *r = old; return nil })
	if err != nil || !rec.CancelRequested || rec.Cursor != 5 {
		t.Fatalf("after an older copy: %+v, %v; want the cursor moved and the cancel kept", rec, err)
	}
	if rec, _ := s.Step("s1"); !rec.CancelRequested {
		t.Error("the stored record lost its cancel")
	}
	if asked, err := s.CancelRequested("s1"); !asked || err != nil {
		t.Errorf("CancelRequested: %v, %v", asked, err)
	}
	// A step created with its cancel asked for has it too.
	c := step("s2", store.StateQueued)
	c.CancelRequested = true
	mustCreate(t, s, c, "")
	if asked, _ := s.CancelRequested("s2"); !asked {
		t.Error("a step created cancelled is not")
	}
}

func testQueueOrder(t *testing.T, open func() store.Store) {
	s := open()
	for _, id := range []string{"s3", "s1", "s4", "s2"} {
		mustCreate(t, s, step(id, store.StateQueued), "")
	}
	mustCreate(t, s, step("s0", store.StateComplete), "")
	if q := list(t, s, store.StateQueued); !slices.Equal(q, []string{"s1", "s2", "s3", "s4"}) {
		t.Fatalf("queue %v, want by ID", q)
	}
	set := func(id, state string) {
		t.Helper()
		if _, err := s.UpdateStep(id, func(r *store.StepRecord) error { r.State = state; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	set("s2", store.StateRunning)
	set("s4", store.StateComplete)
	if q := list(t, s, store.StateQueued); !slices.Equal(q, []string{"s1", "s3"}) {
		t.Errorf("queue %v after dispatch and end", q)
	}
	if n, err := s.CountQueued(); n != 2 || err != nil {
		t.Errorf("CountQueued %d, %v; want 2", n, err)
	}
	set("s2", store.StateQueued) // queued again: back in its place
	if q := list(t, s, store.StateQueued); !slices.Equal(q, []string{"s1", "s2", "s3"}) {
		t.Errorf("queue %v after a requeue", q)
	}
	if r := list(t, s, store.StateRunning); len(r) != 0 {
		t.Errorf("running %v", r)
	}
	if c := list(t, s, store.StateComplete); !slices.Equal(c, []string{"s0", "s4"}) {
		t.Errorf("complete %v", c)
	}
	if all := list(t, s, ""); !slices.Equal(all, []string{"s0", "s1", "s2", "s3", "s4"}) {
		t.Errorf("all %v", all)
	}
}

func testReopen(t *testing.T, open func() store.Store) {
	s := open()
	code := int32(3)
	rec := step("s2", store.StateComplete)
	rec.ExitCode, rec.Labels, rec.SealedOutputs = &code, map[string]string{"zone": "a"}, []byte("sealed")
	rec.Artifacts = []store.Artifact{{Name: "a", Size: 7}}
	mustCreate(t, s, rec, "k2")
	mustCreate(t, s, step("s1", store.StateQueued), "k1")
	if _, err := s.UpdateStep("s1", func(r *store.StepRecord) error { r.CancelRequested = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open()
	if q := list(t, s, store.StateQueued); !slices.Equal(q, []string{"s1"}) {
		t.Errorf("queue after reopening %v", q)
	}
	if asked, _ := s.CancelRequested("s1"); !asked {
		t.Error("cancel flag lost on reopening")
	}
	got, err := s.Step("s2")
	if err != nil || got.ExitCode == nil || *got.ExitCode != 3 || got.Labels["zone"] != "a" || string(got.SealedOutputs) != "sealed" ||
		len(got.Artifacts) != 1 || got.Artifacts[0].Size != 7 || !got.CreatedAt.Equal(rec.CreatedAt) {
		t.Errorf("after reopening: %+v, %v", got, err)
	}
	if again, created, err := s.CreateStep(step("s9", store.StateQueued), "k1"); err != nil || created || again.ID != "s1" {
		t.Errorf("submission key after reopening: %s, %v, %v", again.ID, created, err)
	}
}

// Every field of a record reads back as written, and an unset one as unset.
func testRoundTrip(t *testing.T, open func() store.Store) {
	s := open()
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 123456000, time.UTC)
	code := int32(-1)
	full := store.StepRecord{ID: "s1", Worker: "w1", Pool: "linux", Labels: map[string]string{"zone": "a", "gpu": "1"},
		QueueDeadline: t0.Add(time.Minute), SubmittedBy: "key:ci", SubmitterKey: "k1", Image: "debian:bookworm",
		Sealed: []byte{0, 1, 0xff}, State: store.StateComplete, Assigned: "w1", Cursor: 1 << 40, CancelRequested: true,
		Outcome: "FAILED", ExitCode: &code, Signal: "SIGKILL", Reason: "why", OutputVariables: map[string]string{"a": "1", "s": "********"},
		SensitiveOutputs: []string{"s"}, SealedOutputs: []byte{9, 8}, Artifacts: []store.Artifact{{Name: "b", Path: "/b", File: "b", Size: 2, SHA256: "x"}, {Name: "a", Size: 1}},
		CreatedAt: t0, StartedAt: t0.Add(time.Second), FinishedAt: t0.Add(time.Hour), Node: "node-a", LeaseUntil: t0.Add(2 * time.Second)}
	bare := store.StepRecord{ID: "s2", Pool: "linux", State: store.StateQueued, CreatedAt: t0}
	for _, rec := range []store.StepRecord{full, bare} {
		if made := mustCreate(t, s, rec, ""); !reflect.DeepEqual(made, rec) {
			t.Errorf("CreateStep returned\n%+v\nwant\n%+v", made, rec)
		}
		got, err := s.Step(rec.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, rec) {
			t.Errorf("read back\n%+v\nwant\n%+v", got, rec)
		}
		// An update that changes nothing changes nothing.
		if upd, err := s.UpdateStep(rec.ID, func(*store.StepRecord) error { return nil }); err != nil || !reflect.DeepEqual(upd, got) {
			t.Errorf("after an empty update\n%+v, %v\nwant\n%+v", upd, err, got)
		}
	}
	// Whatever a backend keeps of a time, the record it returns is the one
	// it reads back.
	fine := store.StepRecord{ID: "s3", Pool: "linux", State: store.StateRunning, Labels: map[string]string{},
		CreatedAt: time.Now(), StartedAt: time.Date(2026, 12, 1, 10, 0, 0, 123456789, time.UTC)}
	made := mustCreate(t, s, fine, "")
	upd, err := s.UpdateStep("s3", func(r *store.StepRecord) error { r.FinishedAt = time.Now(); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Step("s3"); !got.FinishedAt.Equal(upd.FinishedAt) || !got.CreatedAt.Equal(made.CreatedAt) || !got.StartedAt.Equal(made.StartedAt) {
		t.Errorf("read back\n%+v\nreturned by CreateStep\n%+v\nand by UpdateStep\n%+v", got, made, upd)
	}
}

func testDeleteSteps(t *testing.T, open func() store.Store) {
	s := open()
	mustCreate(t, s, step("s1", store.StateComplete), "k1")
	c := step("s2", store.StateComplete)
	c.CancelRequested = true
	mustCreate(t, s, c, "k2")
	mustCreate(t, s, step("s3", store.StateQueued), "k3")
	if err := s.DeleteSteps(nil); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSteps([]string{"s1", "s2", "unknown"}); err != nil {
		t.Fatal(err)
	}
	if all := list(t, s, ""); !slices.Equal(all, []string{"s3"}) {
		t.Errorf("steps after delete %v", all)
	}
	if asked, _ := s.CancelRequested("s2"); asked {
		t.Error("a deleted step's cancel flag stayed")
	}
	// Its submission key is gone with it: the key makes a new step.
	if _, created, err := s.CreateStep(step("s4", store.StateQueued), "k1"); err != nil || !created {
		t.Errorf("a deleted step's key: created %v, %v", created, err)
	}
	if again, _, _ := s.CreateStep(step("s5", store.StateQueued), "k3"); again.ID != "s3" {
		t.Errorf("a kept step's key gave %s", again.ID)
	}
	if err := s.DeleteSteps([]string{"s1"}); err != nil {
		t.Errorf("deleting again: %v", err)
	}
	if q := list(t, s, store.StateQueued); !slices.Equal(q, []string{"s3", "s4"}) {
		t.Errorf("queue %v", q)
	}
	s.DeleteSteps([]string{"s3"})
	if q := list(t, s, store.StateQueued); !slices.Equal(q, []string{"s4"}) {
		t.Errorf("queue after deleting a queued step %v", q)
	}
}

func testAbandoned(t *testing.T, open func() store.Store) {
	s := open()
	for id, w := range map[string]string{"s1": "w1", "s2": "w2", "s3": "w1"} {
		if err := s.Abandon(id, w); err != nil {
			t.Fatal(err)
		}
	}
	s.Abandon("s1", "w1")
	got, err := s.AbandonedOn("w1")
	slices.Sort(got)
	if err != nil || !slices.Equal(got, []string{"s1", "s3"}) {
		t.Errorf("abandoned on w1: %v, %v", got, err)
	}
	for range 2 {
		if err := s.ForgetAbandoned("s1"); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := s.AbandonedOn("w1"); !slices.Equal(got, []string{"s3"}) {
		t.Errorf("after forgetting s1: %v", got)
	}
	if got, _ := s.AbandonedOn("w3"); len(got) != 0 {
		t.Errorf("on a worker with none: %v", got)
	}
}

func testWorkers(t *testing.T, open func() store.Store) {
	s := open()
	for _, w := range []store.WorkerRecord{
		{Name: "w2", Thumbprint: "t2", Pools: []string{"linux"}, Labels: map[string]string{"zone": "a"}},
		{Name: "w1", Thumbprint: "t1", Address: "10.0.0.1:10933"},
		{Name: "w2", Thumbprint: "t2", Pools: []string{"linux", "gpu"}},
	} {
		if err := s.PutWorker(w); err != nil {
			t.Fatal(err)
		}
	}
	ws, err := s.ListWorkers()
	if err != nil || len(ws) != 2 || ws[0].Name != "w1" || ws[0].Address != "10.0.0.1:10933" || ws[1].Name != "w2" ||
		!slices.Equal(ws[1].Pools, []string{"linux", "gpu"}) || ws[1].Labels != nil {
		t.Errorf("workers %+v, %v", ws, err)
	}
	// Times are kept to the microsecond, PostgreSQL's resolution.
	at := time.Date(2026, 12, 1, 10, 11, 12, 123456000, time.UTC)
	if err := s.SetWorkerLeft("w2", at); err != nil {
		t.Fatal(err)
	}
	if got, err := s.WorkerLeft("w2"); !got.Equal(at) || err != nil {
		t.Errorf("left at %v, %v; want %v", got, err, at)
	}
	s.SetWorkerLeft("w1", at)
	if err := s.SetWorkerLeft("w1", time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.WorkerLeft("w1"); !got.IsZero() {
		t.Errorf("back, yet left at %v", got)
	}
	for range 2 {
		if err := s.DeleteWorker("w2"); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := s.WorkerLeft("w2"); !got.IsZero() {
		t.Errorf("a forgotten worker's time away stayed: %v", got)
	}
	if ws, _ := s.ListWorkers(); len(ws) != 1 || ws[0].Name != "w1" {
		t.Errorf("after delete %+v", ws)
	}
}

func testTrust(t *testing.T, open func() store.Store) {
	s := open()
	for _, tp := range []string{"bb", "aa", "bb"} {
		if err := s.AddTrusted(tp); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.ListTrusted(); !slices.Equal(got, []string{"aa", "bb"}) || err != nil {
		t.Errorf("trusted %v, %v", got, err)
	}
	for range 2 {
		if err := s.RemoveTrusted("bb"); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := s.ListTrusted(); !slices.Equal(got, []string{"aa"}) {
		t.Errorf("trusted after removal %v", got)
	}
}

func testUsers(t *testing.T, open func() store.Store) {
	s := open()
	if has, err := s.HasUsers(); has || err != nil {
		t.Fatalf("HasUsers of a new store: %v, %v", has, err)
	}
	users := []struct {
		name string
		c    store.Credential
	}{
		{"admin", store.Credential{Salt: []byte("salt"), Hash: []byte{0, 0xff, 3}, Iterations: 600000, Email: "admin@example.com"}},
		{"no-email", store.Credential{Salt: []byte("salt2"), Hash: []byte{4}, Iterations: 1}},
	}
	for _, u := range users {
		if err := s.CreateUser(u.name, u.c); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateUser("admin", store.Credential{Email: "other@example.com"}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("the same user again: %v, want ErrConflict", err)
	}
	if has, _ := s.HasUsers(); !has {
		t.Error("HasUsers false with a user")
	}
	// Read back as written, the first user's email not replaced by the
	// refused second one, in this store and once it is opened again.
	check := func(s store.Store, when string) {
		for _, u := range users {
			got, err := s.User(u.name)
			if err != nil || !bytes.Equal(got.Salt, u.c.Salt) || !bytes.Equal(got.Hash, u.c.Hash) || got.Iterations != u.c.Iterations || got.Email != u.c.Email {
				t.Errorf("%s: user %s %+v, %v; want %+v", when, u.name, got, err, u.c)
			}
		}
	}
	check(s, "written")
	s.Close()
	check(open(), "reopened")
}

func testAPIKeys(t *testing.T, open func() store.Store) {
	s := open()
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	h1, h2 := sha256.Sum256([]byte("sdk_one")), sha256.Sum256([]byte("sdk_two"))
	if err := s.CreateAPIKey(h2, store.APIKey{ID: "k2", Name: "two", Role: "reader", CreatedAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAPIKey(h1, store.APIKey{ID: "k1", Name: "one", Role: "admin", CreatedAt: t0, ExpiresAt: t0.Add(48 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAPIKey(sha256.Sum256([]byte("sdk_three")), store.APIKey{ID: "k3", Name: "one", Role: "reader", CreatedAt: t0}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a taken name: %v, want ErrConflict", err)
	}
	keys, err := s.ListAPIKeys()
	if err != nil || len(keys) != 2 || keys[0].ID != "k1" || keys[1].ID != "k2" {
		t.Fatalf("keys %+v, %v; want oldest first", keys, err)
	}
	k, err := s.APIKeyByHash(h1)
	if err != nil || k.Name != "one" || k.Role != "admin" || !k.ExpiresAt.Equal(t0.Add(48*time.Hour)) || !k.LastUsedAt.IsZero() {
		t.Errorf("by hash %+v, %v", k, err)
	}
	used := t0.Add(2 * time.Hour)
	if err := s.TouchAPIKey(h1, used); err != nil {
		t.Fatal(err)
	}
	if k, _ := s.APIKeyByHash(h1); !k.LastUsedAt.Equal(used) || k.Name != "one" {
		t.Errorf("after use %+v", k)
	}
	hash, err := s.DeleteAPIKey("k1")
	if err != nil || hash != h1 {
		t.Fatalf("DeleteAPIKey: %x, %v; want %x", hash, err, h1)
	}
	if err := s.TouchAPIKey(h1, used); err != nil {
		t.Errorf("touching a revoked key: %v", err)
	}
	if _, err := s.APIKeyByHash(h1); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a revoked key came back: %v", err)
	}
	if _, err := s.DeleteAPIKey("k1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoking again: %v, want ErrNotFound", err)
	}
	// A revoked key's name is free again.
	if err := s.CreateAPIKey(sha256.Sum256([]byte("sdk_four")), store.APIKey{ID: "k4", Name: "one", Role: "reader", CreatedAt: t0}); err != nil {
		t.Errorf("a revoked key's name: %v", err)
	}
}

func testBackup(t *testing.T, open func() store.Store) {
	s := open()
	mustCreate(t, s, step("s1", store.StateQueued), "")
	var buf bytes.Buffer
	n, err := s.Backup(&buf)
	if errors.Is(err, store.ErrUnsupported) {
		t.Skip("the backend takes no backups of its own")
	}
	if err != nil || n == 0 || n != int64(buf.Len()) {
		t.Errorf("Backup: %d bytes (%d written), %v", n, buf.Len(), err)
	}
}

// The first value kept under a name is every writer's, concurrent ones
// too, and a reopened store's.
func testKeepSetting(t *testing.T, open func() store.Store) {
	s := open()
	const n = 8
	got := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			v, err := s.KeepSetting("identity", []byte{byte(i), 0, 0xff})
			if err != nil {
				t.Error(err)
			}
			got[i] = v
		})
	}
	wg.Wait()
	for i, v := range got {
		if !bytes.Equal(v, got[0]) || len(v) != 3 {
			t.Fatalf("writer %d kept %x, writer 0 %x", i, v, got[0])
		}
	}
	if v, err := s.KeepSetting("other", []byte("b")); err != nil || string(v) != "b" {
		t.Errorf("another name: %q, %v", v, err)
	}
	s.Close()
	s = open()
	if v, err := s.KeepSetting("identity", []byte("late")); err != nil || !bytes.Equal(v, got[0]) {
		t.Errorf("after reopening: %x, %v; want %x", v, err, got[0])
	}
}

// A lease is one holder's until it runs out or is dropped; its holder
// renews it.
func testLeases(t *testing.T, open func() store.Store) {
	s := open()
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	steps := []struct {
		name, do, holder string
		now              time.Time
		want             bool
	}{
		{"free: taken", "take", "a", t0, true},
		{"held by a: not b's", "take", "b", t0.Add(time.Second), false},
		{"a renews", "take", "a", t0.Add(5 * time.Second), true},
		{"renewed: still not b's", "take", "b", t0.Add(12 * time.Second), false},
		{"run out: b's", "take", "b", t0.Add(15 * time.Second), true},
		{"a's drop of b's lease does nothing", "drop", "a", t0.Add(16 * time.Second), false},
		{"still b's", "take", "a", t0.Add(17 * time.Second), false},
		{"b drops it", "drop", "b", t0.Add(18 * time.Second), false},
		{"free again: a's", "take", "a", t0.Add(19 * time.Second), true},
	}
	for _, st := range steps {
		if st.do == "drop" {
			if err := s.DropLease("w1", st.holder); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			continue
		}
		got, err := s.TakeLease("w1", st.holder, st.now, st.now.Add(10*time.Second))
		if err != nil || got != st.want {
			t.Fatalf("%s: took %v (%v), want %v", st.name, got, err, st.want)
		}
	}
	// Another name is another lease.
	if got, err := s.TakeLease("w2", "b", t0, t0.Add(time.Minute)); err != nil || !got {
		t.Errorf("another name: %v, %v", got, err)
	}
}
