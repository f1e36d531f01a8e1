package main

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"stevedore/internal/pgdb"
	"stevedore/internal/testenv"
)

// `stevedore server` keeps its state in the PostgreSQL database that
// DB_CONNECTION_STRING (or --db) names, and does not start on one it
// cannot use, saying why without the password.
func TestServerDatabase(t *testing.T) {
	good := testenv.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	unreachable := "postgres://stevedore:unreachable-secret@" + testenv.FreeAddr(t) + "/stevedore?sslmode=disable"
	wrongPassword := strings.Replace(good, ":"+testenv.PostgresPassword+"@", ":wrong-secret@", 1)
	future := testenv.Postgres(t)
	pool, err := pgdb.Open(ctx, future)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pgdb.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	known, _ := pgdb.LatestVersion()
	_, err = pool.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_the_future')", known+1)
	pool.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"not a postgres URL", nil, []string{"--db", "mysql://u:bad-url-secret@db/x"}, "bad PostgreSQL URL"},
		{"unreachable", []string{"DB_CONNECTION_STRING=" + unreachable}, nil, "PostgreSQL unreachable"},
		{"a wrong password", []string{"DB_CONNECTION_STRING=" + wrongPassword}, nil, "PostgreSQL refused the credentials"},
		{"a newer schema", nil, []string{"--db", future}, "newer than this server knows"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newServerSetup(t)
			s.args = withoutDB(s.args)
			code, stdout, stderr := runStevedore(t, c.env, append(s.args, c.args...)...)
			if code == 0 || !strings.Contains(stderr, c.want) {
				t.Fatalf("exit %d, want a failure saying %q\n%s%s", code, c.want, stdout, stderr)
			}
			for _, secret := range []string{"bad-url-secret", "unreachable-secret", "wrong-secret", testenv.PostgresPassword} {
				if strings.Contains(stdout+stderr, secret) {
					t.Errorf("the output shows a password:\n%s%s", stdout, stderr)
				}
			}
		})
	}

	t.Run("a good one", func(t *testing.T) {
		s := newServerSetup(t)
		s.args = withoutDB(s.args)
		p := s.start(t, "DB_CONNECTION_STRING="+good)
		pool, err := pgdb.Open(ctx, good)
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		var users int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM users WHERE username = $1", testAdmin).Scan(&users); err != nil || users != 1 {
			t.Errorf("the admin in the database: %d rows, %v", users, err)
		}
		p.kill()
		b, err := os.ReadFile(p.out)
		if err != nil {
			t.Fatal(err)
		}
		log := string(b)
		if !strings.Contains(log, "database=\"postgres "+testenv.PostgresUser+"@"+testenv.PostgresAddr) || strings.Contains(log, testenv.PostgresPassword) {
			t.Errorf("the server's log should name the database, without the password:\n%s", log)
		}
	})
}

// withoutDB is a server's arguments without the --db of the test backend,
// for a test that chooses the database itself.
func withoutDB(args []string) []string {
	if i := slices.Index(args, "--db"); i >= 0 {
		return slices.Delete(slices.Clone(args), i, i+2)
	}
	return args
}
