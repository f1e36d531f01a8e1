package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"stevedore/internal/testenv"
	"stevedore/server/store"
	"stevedore/server/store/pgstore"
)

// TestBackend is the store a test's servers keep their state in, as
// STEVEDORE_TEST_BACKEND picks it for the package's run (testenv.Backend):
// bbolt in the data dir, or a PostgreSQL database of the test's own,
// created once, so that every server the test starts or restarts with it
// opens the same state.
type TestBackend struct {
	Name string
	// URL is the PostgreSQL database's; empty on bbolt.
	URL string
}

// NewTestBackend gives a test its backend; on PostgreSQL without a
// PostgreSQL it fails in CI and skips elsewhere.
func NewTestBackend(t testing.TB) *TestBackend {
	t.Helper()
	return NewTestBackendFor(t, testenv.Backend(t))
}

// NewTestBackendFor is NewTestBackend on the named backend (testenv's
// BackendBolt or BackendPostgres) whatever STEVEDORE_TEST_BACKEND says,
// for a benchmark that compares the two in one run.
func NewTestBackendFor(t testing.TB, name string) *TestBackend {
	t.Helper()
	b := &TestBackend{Name: name}
	if b.Name == testenv.BackendPostgres {
		b.URL = testenv.Postgres(t)
	}
	return b
}

// OpenStore is Config.OpenStore for the backend: nil, the data dir's
// file, on bbolt.
func (b *TestBackend) OpenStore() func() (store.Store, error) {
	if b.URL == "" {
		return nil
	}
	return func() (store.Store, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return pgstore.Open(ctx, b.URL)
	}
}

// StateBytes is everything the backend holds of the server's state, for
// scans for a secret in the clear: the bbolt file of dataDir, or every
// row of every table in the database, bytea columns as their raw bytes.
func (b *TestBackend) StateBytes(t testing.TB, dataDir string) []byte {
	t.Helper()
	if b.URL == "" {
		db, err := os.ReadFile(filepath.Join(dataDir, dbFile))
		if err != nil {
			t.Fatal(err)
		}
		return db
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, b.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(tables) == 0 {
		t.Fatalf("tables %v, %v", tables, err)
	}
	var out []byte
	for _, table := range tables {
		rows, err := conn.Query(ctx, "SELECT * FROM "+pgx.Identifier{table}.Sanitize())
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			values, err := rows.Values()
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range values {
				if raw, ok := v.([]byte); ok {
					out = append(out, raw...)
				} else {
					out = fmt.Appendf(out, "%v", v)
				}
				out = append(out, '\n')
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}
