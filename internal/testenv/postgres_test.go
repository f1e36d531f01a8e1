package testenv_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"stevedore/internal/testenv"
)

func connect(t *testing.T, dbURL string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Each call gives a database of its own, empty, owned by the test role,
// and gone after its test.
func TestPostgresGivesIsolatedDatabases(t *testing.T) {
	var urls []string
	t.Run("two databases", func(t *testing.T) {
		a, b := testenv.Postgres(t), testenv.Postgres(t)
		urls = append(urls, a, b)
		if a == b {
			t.Fatalf("both %s", a)
		}
		ctx := context.Background()
		// Never closed, on purpose: the cleanup drops its database all the same.
		ca, err := pgx.Connect(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		cb := connect(t, b)
		if _, err := ca.Exec(ctx, "CREATE TABLE only_in_a (id int); INSERT INTO only_in_a VALUES (1)"); err != nil {
			t.Fatal(err)
		}
		var tables int
		if err := cb.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables); err != nil {
			t.Fatal(err)
		}
		if tables != 0 {
			t.Errorf("the second database has %d tables, want none", tables)
		}
		var owner string
		if err := cb.QueryRow(ctx, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()").Scan(&owner); err != nil {
			t.Fatal(err)
		}
		if owner != testenv.PostgresUser {
			t.Errorf("owned by %s, want %s", owner, testenv.PostgresUser)
		}
	})
	if len(urls) != 2 {
		return // the subtest failed or skipped, and said why
	}
	admin := connect(t, testenv.PostgresURL)
	for _, u := range urls {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(parsed.Path, "/")
		var exists bool
		if err := admin.QueryRow(context.Background(), "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if exists {
			t.Errorf("database %s outlived its test", name)
		}
	}
}
