package pgstore_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"stevedore/internal/pgdb"
	"stevedore/internal/testenv"
	"stevedore/server/store"
	"stevedore/server/store/pgstore"
)

// A database migrated by a newer server is refused, untouched, with both
// packages' sentinels; the conformance tests (server/store) cover the rest.
func TestOpenRefusesNewerSchema(t *testing.T) {
	url := testenv.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := pgstore.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	pool, err := pgdb.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	known, _ := pgdb.LatestVersion()
	if _, err := pool.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_the_future')", known+1); err != nil {
		t.Fatal(err)
	}
	_, err = pgstore.Open(ctx, url)
	if !errors.Is(err, store.ErrSchemaTooNew) || !errors.Is(err, pgdb.ErrSchemaTooNew) {
		t.Fatalf("Open of a newer schema: %v; want ErrSchemaTooNew", err)
	}
	if _, ok := errors.AsType[*pgdb.SchemaTooNewError](err); !ok {
		t.Errorf("the versions are lost: %v", err)
	}
	if v, _ := pgdb.Version(ctx, pool); v != known+1 {
		t.Errorf("schema version %d after the refusal, want %d", v, known+1)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	good := testenv.Postgres(t)
	wrongPassword := strings.Replace(good, ":"+testenv.PostgresPassword+"@", ":wrong-secret@", 1)
	for _, tt := range []struct {
		name, url string
		want      error
	}{
		{"not a URL", "host=localhost dbname=x", pgdb.ErrBadURL},
		{"wrong password", wrongPassword, pgdb.ErrAuth},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := pgstore.Open(ctx, tt.url)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Open: %v, want %v", err, tt.want)
			}
			if strings.Contains(err.Error(), "wrong-secret") || strings.Contains(err.Error(), testenv.PostgresPassword) {
				t.Errorf("the password in the error: %v", err)
			}
		})
	}
}

// Backup is pg_dump's.
func TestBackupUnsupported(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := pgstore.Open(ctx, testenv.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Backup(nil); !errors.Is(err, store.ErrUnsupported) {
		t.Errorf("Backup: %v, want ErrUnsupported", err)
	}
}
