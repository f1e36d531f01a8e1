package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"stevedore/internal/pgdb"
	"stevedore/internal/testenv"
	"stevedore/server/store"
	"stevedore/server/store/pgstore"
)

// One node's writes reach another node's Watch; a watch whose connection
// is killed says so with an empty ID and goes on.
func TestWatchAcrossNodes(t *testing.T) {
	url := testenv.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	open := func() *pgstore.Store {
		s, err := pgstore.Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := open(), open()
	ch := b.Watch(ctx)
	next := func(want string) store.Change {
		t.Helper()
		for {
			select {
			case c := <-ch:
				if c.ID == want {
					return c
				}
			case <-ctx.Done():
				t.Fatalf("no notification %q", want)
			}
		}
	}
	// The watch hears once its connection listens: write until it does.
	for i := 0; ; i++ {
		id := fmt.Sprintf("s%d", i)
		if _, _, err := a.CreateStep(store.StepRecord{ID: id, Pool: "p", State: store.StateQueued, CreatedAt: time.Now()}, ""); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-ch:
			if got != (store.Change{ID: id, State: store.StateQueued}) {
				t.Fatalf("heard %+v, want %s queued", got, id)
			}
		case <-time.After(100 * time.Millisecond):
			continue
		case <-ctx.Done():
			t.Fatal("the watch never heard a step created")
		}
		break
	}
	if _, _, err := a.CreateStep(store.StepRecord{ID: "s1", Pool: "p", State: store.StateQueued, CreatedAt: time.Now()}, ""); err != nil && !errors.Is(err, store.ErrConflict) {
		t.Fatal(err)
	}
	if _, err := a.UpdateStep("s1", func(r *store.StepRecord) error { r.Cursor = 7; return nil }); err != nil {
		t.Fatal(err)
	}
	next("s1")

	pool, err := pgdb.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
	next("") // back, and saying that it may have missed some
	if _, err := a.UpdateStep("s1", func(r *store.StepRecord) error { r.Cursor = 8; return nil }); err != nil {
		t.Fatal(err)
	}
	next("s1")
	// A cancel asked for says so, with the state, for the driver.
	if _, err := a.UpdateStep("s1", func(r *store.StepRecord) error { r.State, r.CancelRequested = store.StateRunning, true; return nil }); err != nil {
		t.Fatal(err)
	}
	if c := next("s1"); c != (store.Change{ID: "s1", State: store.StateRunning, CancelRequested: true}) {
		t.Errorf("a cancel's change: %+v", c)
	}
	cancel()
	for range ch { // closed when ctx ends
	}
}
