package pgstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"stevedore/internal/testenv"
	"stevedore/server/store"
)

func TestRetryable(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"serialization failure", &pgconn.PgError{Code: "40001"}, true},
		{"deadlock, wrapped", fmt.Errorf("step s1: %w", &pgconn.PgError{Code: "40P01"}), true},
		{"unique violation", &pgconn.PgError{Code: "23505"}, false},
		{"fn's own error, even one of PostgreSQL's", fnError{&pgconn.PgError{Code: "40001"}}, false},
		{"not PostgreSQL's", errors.New("40001"), false},
		{"none", nil, false},
	} {
		if got := retryable(tt.err); got != tt.want {
			t.Errorf("%s: retryable %v, want %v", tt.name, got, tt.want)
		}
	}
}

// Two transactions that lock two steps in opposite orders deadlock;
// PostgreSQL aborts one, and inTx runs it again, so both end done.
func TestInTxRetriesADeadlock(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Open(ctx, testenv.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, id := range []string{"a", "b"} {
		if _, _, err := s.CreateStep(store.StepRecord{ID: id, Pool: "p", State: store.StateRunning, CreatedAt: time.Now()}, ""); err != nil {
			t.Fatal(err)
		}
	}
	// Both hold their first lock before either asks for its second.
	var first sync.WaitGroup
	first.Add(2)
	var runs atomic.Int32
	lock := func(c context.Context, tx pgx.Tx, id string) error {
		_, err := tx.Exec(c, `UPDATE steps SET log_cursor = log_cursor + 1 WHERE id = $1`, id)
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, order := range [][2]string{{"a", "b"}, {"b", "a"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			attempt := 0
			errs[i] = s.inTx(func(c context.Context, tx pgx.Tx) error {
				runs.Add(1)
				attempt++
				if err := lock(c, tx, order[0]); err != nil {
					return err
				}
				if attempt == 1 {
					first.Done()
					first.Wait()
				}
				return lock(c, tx, order[1])
			})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("inTx: %v", err)
		}
	}
	if n := runs.Load(); n < 3 {
		t.Errorf("%d runs: the deadlock was not retried", n)
	}
	for _, id := range []string{"a", "b"} {
		if rec, _ := s.Step(id); rec.Cursor != 2 {
			t.Errorf("step %s: cursor %d, want 2 (each transaction once)", id, rec.Cursor)
		}
	}
}
