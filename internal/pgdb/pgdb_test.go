package pgdb_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"stevedore/internal/pgdb"
	"stevedore/internal/testenv"
)

func open(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgdb.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func latest(t *testing.T) int {
	t.Helper()
	n, err := pgdb.LatestVersion()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func version(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	v, err := pgdb.Version(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func tableExists(t *testing.T, pool *pgxpool.Pool, name string) bool {
	t.Helper()
	var ok bool
	if err := pool.QueryRow(context.Background(), "SELECT to_regclass($1) IS NOT NULL", name).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

// The shipped migrations: named, numbered from 1 without gaps, and the
// first one is the server's state.
func TestShippedMigrations(t *testing.T) {
	ms, err := pgdb.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 || ms[0].Version != 1 || ms[0].Name != "server_state" {
		t.Fatalf("migrations %+v, want 0001_server_state first", ms)
	}
	for i, m := range ms {
		if m.Version != i+1 || strings.TrimSpace(m.SQL) == "" {
			t.Errorf("migration %d: version %d, %d bytes of SQL", i, m.Version, len(m.SQL))
		}
	}
}

func TestLoadMigrationsRefusesBadLists(t *testing.T) {
	sql := &fstest.MapFile{Data: []byte("SELECT 1;")}
	tests := []struct {
		name  string
		files fstest.MapFS
		want  []int // versions; nil: refused
	}{
		{"in order", fstest.MapFS{"m/0002_b.sql": sql, "m/0001_a.sql": sql}, []int{1, 2}},
		{"a gap", fstest.MapFS{"m/0001_a.sql": sql, "m/0003_c.sql": sql}, nil},
		{"not from 1", fstest.MapFS{"m/0002_b.sql": sql}, nil},
		{"a version twice", fstest.MapFS{"m/0001_a.sql": sql, "m/0001_b.sql": sql}, nil},
		{"a bad name", fstest.MapFS{"m/0001_a.sql": sql, "m/2_b.sql": sql}, nil},
		{"not SQL", fstest.MapFS{"m/0001_a.sql": sql, "m/0002_b.txt": sql}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms, err := pgdb.LoadMigrations(tt.files, "m")
			if tt.want == nil {
				if err == nil {
					t.Fatalf("loaded %+v, want an error", ms)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []int
			for _, m := range ms {
				got = append(got, m.Version)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("versions %v, want %v", got, tt.want)
			}
		})
	}
}

var serverTables = []string{"steps", "submission_keys", "workers", "workers_left", "abandoned_steps", "users", "api_keys", "trust"}

func TestMigrateEmptyDatabase(t *testing.T) {
	pool := open(t, testenv.Postgres(t))
	ctx := context.Background()
	if v := version(t, pool); v != 0 {
		t.Fatalf("a fresh database at version %d, want 0", v)
	}
	applied, err := pgdb.Migrate(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if applied != latest(t) {
		t.Errorf("applied %d migrations, want %d", applied, latest(t))
	}
	if v := version(t, pool); v != latest(t) {
		t.Errorf("version %d, want %d", v, latest(t))
	}
	for _, table := range serverTables {
		if !tableExists(t, pool, table) {
			t.Errorf("no table %s", table)
		}
	}
	var rows int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM schema_migrations WHERE name <> '' AND applied_at <= now()").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != latest(t) {
		t.Errorf("schema_migrations has %d rows, want %d", rows, latest(t))
	}
}

// The schema holds a step as the server records one, and refuses what the
// server never writes.
func TestServerSchemaConstraints(t *testing.T) {
	pool := open(t, testenv.Postgres(t))
	ctx := context.Background()
	if _, err := pgdb.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"s_b", "s2", "sZ", "s1"} {
		if _, err := pool.Exec(ctx, `INSERT INTO steps (id, pool, labels, sealed, state, created_at) VALUES ($1, 'linux', '{"zone":"a"}', '\x00ff'::bytea, 'queued', now())`, id); err != nil {
			t.Fatal(err)
		}
	}
	// The queue is in the IDs' byte order, whatever the database's locale.
	rows, err := pool.Query(ctx, "SELECT id FROM steps WHERE state = 'queued' ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	order, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || strings.Join(order, " ") != "s1 s2 sZ s_b" {
		t.Errorf("queue %v, %v; want s1 s2 sZ s_b", order, err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO submission_keys (key, step_id) VALUES ('k1', 's1')`); err != nil {
		t.Fatal(err)
	}
	// Removing a step (retention) takes its key along.
	if _, err := pool.Exec(ctx, `DELETE FROM steps WHERE id = 's1'`); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM submission_keys").Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d keys outlived their step", left)
	}

	tests := []struct {
		name, sql, code string
	}{
		{"unknown state", `INSERT INTO steps (id, pool, sealed, state, created_at) VALUES ('x', 'p', '', 'lost', now())`, "23514"},
		{"no target", `INSERT INTO steps (id, sealed, state, created_at) VALUES ('x', '', 'queued', now())`, "23514"},
		{"not sealed", `INSERT INTO steps (id, pool, state, created_at) VALUES ('x', 'p', 'queued', now())`, "23502"},
		{"labels not an object", `INSERT INTO steps (id, pool, sealed, state, labels, created_at) VALUES ('x', 'p', '', 'queued', '[]', now())`, "23514"},
		{"artifacts not an array", `INSERT INTO steps (id, pool, sealed, state, artifacts, created_at) VALUES ('x', 'p', '', 'queued', '{}', now())`, "23514"},
		{"a key of an unknown step", `INSERT INTO submission_keys (key, step_id) VALUES ('k', 'nope')`, "23503"},
		{"a short hash", `INSERT INTO api_keys (id, secret_sha256, name, role, created_at) VALUES ('k', '\x00', 'n', 'admin', now())`, "23514"},
		{"a key name twice", `INSERT INTO api_keys (id, secret_sha256, name, role, created_at) VALUES ('k1', sha256('x'), 'n', 'admin', now()), ('k2', sha256('y'), 'n', 'admin', now())`, "23505"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := pool.Exec(ctx, tt.sql)
			pgErr, ok := errors.AsType[*pgconn.PgError](err)
			if !ok || pgErr.Code != tt.code {
				t.Fatalf("got %v, want SQLSTATE %s", err, tt.code)
			}
		})
	}
}

func TestMigrateAgainIsNoOp(t *testing.T) {
	pool := open(t, testenv.Postgres(t))
	ctx := context.Background()
	if _, err := pgdb.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	var before time.Time
	if err := pool.QueryRow(ctx, "SELECT max(applied_at) FROM schema_migrations").Scan(&before); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		applied, err := pgdb.Migrate(ctx, pool)
		if err != nil {
			t.Fatalf("run %d: %v", i+2, err)
		}
		if applied != 0 {
			t.Errorf("run %d applied %d migrations, want none", i+2, applied)
		}
	}
	var after time.Time
	var rows int
	if err := pool.QueryRow(ctx, "SELECT max(applied_at), count(*) FROM schema_migrations").Scan(&after, &rows); err != nil {
		t.Fatal(err)
	}
	if !after.Equal(before) || rows != latest(t) {
		t.Errorf("schema_migrations changed: %d rows, last applied %v, was %v", rows, after, before)
	}
}

// Server nodes starting at once on a fresh database: every one succeeds,
// and each migration is applied once. The slow list makes the nodes
// overlap for certain: the first holds the lock for a while.
func TestMigrateConcurrently(t *testing.T) {
	shipped, err := pgdb.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	slow := []pgdb.Migration{
		{Version: 1, Name: "slow", SQL: "SELECT pg_sleep(0.3); CREATE TABLE a (id int PRIMARY KEY);"},
		{Version: 2, Name: "rows", SQL: "INSERT INTO a VALUES (1);"},
	}
	tests := []struct {
		name string
		ms   []pgdb.Migration
	}{
		{"shipped", shipped},
		{"slow", slow},
	}
	const nodes = 4
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := testenv.Postgres(t)
			// A pool each, as separate nodes have.
			pools := make([]*pgxpool.Pool, nodes)
			for i := range pools {
				pools[i] = open(t, url)
			}
			applied := make([]int, nodes)
			errs := make([]error, nodes)
			var start, done sync.WaitGroup
			start.Add(1)
			for i := range nodes {
				done.Go(func() {
					start.Wait()
					applied[i], errs[i] = pgdb.MigrateList(context.Background(), pools[i], tt.ms)
				})
			}
			start.Done()
			done.Wait()
			total := 0
			for i := range nodes {
				if errs[i] != nil {
					t.Errorf("node %d: %v", i, errs[i])
				}
				total += applied[i]
			}
			if total != len(tt.ms) {
				t.Errorf("the nodes applied %v migrations, %d in all, want %d", applied, total, len(tt.ms))
			}
			var rows, distinct int
			if err := pools[0].QueryRow(context.Background(), "SELECT count(*), count(DISTINCT version) FROM schema_migrations").Scan(&rows, &distinct); err != nil {
				t.Fatal(err)
			}
			if rows != len(tt.ms) || distinct != len(tt.ms) {
				t.Errorf("schema_migrations: %d rows, %d versions, want %d", rows, distinct, len(tt.ms))
			}
			if tt.name == "slow" {
				var n int
				if err := pools[0].QueryRow(context.Background(), "SELECT count(*) FROM a").Scan(&n); err != nil {
					t.Fatal(err)
				}
				if n != 1 {
					t.Errorf("migration 2 ran %d times", n)
				}
			}
		})
	}
}

func TestSchemaTooNewIsRefused(t *testing.T) {
	pool := open(t, testenv.Postgres(t))
	ctx := context.Background()
	if _, err := pgdb.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	known := latest(t)
	// What a newer server would have left.
	if _, err := pool.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_the_future')", known+1); err != nil {
		t.Fatal(err)
	}
	applied, err := pgdb.Migrate(ctx, pool)
	if !errors.Is(err, pgdb.ErrSchemaTooNew) {
		t.Fatalf("Migrate: %v, want ErrSchemaTooNew", err)
	}
	tooNew, ok := errors.AsType[*pgdb.SchemaTooNewError](err)
	if !ok || tooNew.Database != known+1 || tooNew.Known != known {
		t.Fatalf("Migrate: %#v, want versions %d and %d", err, known+1, known)
	}
	for _, v := range []int{known, known + 1} {
		if !strings.Contains(err.Error(), fmt.Sprint(v)) {
			t.Errorf("%q does not say version %d", err, v)
		}
	}
	if applied != 0 || version(t, pool) != known+1 {
		t.Errorf("applied %d, version %d: the database was touched", applied, version(t, pool))
	}
	// Refused before any of its own migrations, however far behind the binary is.
	if _, err := pgdb.MigrateList(ctx, pool, nil); !errors.Is(err, pgdb.ErrSchemaTooNew) {
		t.Errorf("a binary with no migrations: %v, want ErrSchemaTooNew", err)
	}
}

// A migration that fails is rolled back whole: the schema stays at the
// version before it, with nothing of it left, and a fixed list goes on
// from there.
func TestBrokenMigrationRollsBack(t *testing.T) {
	good := pgdb.Migration{Version: 1, Name: "good", SQL: "CREATE TABLE good (id int);"}
	tests := []struct {
		name  string
		ms    []pgdb.Migration
		want  int // version after
		code  string
		table string // made by the broken one before it failed
	}{
		{"undefined table", []pgdb.Migration{good, {Version: 2, Name: "broken", SQL: "CREATE TABLE half (id int); INSERT INTO nowhere VALUES (1);"}}, 1, "42P01", "half"},
		{"syntax", []pgdb.Migration{good, {Version: 2, Name: "broken", SQL: "CREATE TABLE half (id int); CREATE TABLEX oops;"}}, 1, "42601", "half"},
		{"the first one", []pgdb.Migration{{Version: 1, Name: "broken", SQL: "CREATE TABLE half (id int); SELECT 1/0;"}}, 0, "22012", "half"},
		// PostgreSQL runs a many-statement string as one implicit
		// transaction anyway; this one fails only at its version row,
		// after its SQL succeeded, which only the migration's own
		// transaction takes back.
		{"its version row", []pgdb.Migration{good, {Version: 2, Name: "broken", SQL: "CREATE TABLE half (id int); INSERT INTO schema_migrations (version, name) VALUES (2, 'squatter');"}}, 1, "23505", "half"},
		{"a later one after good ones", []pgdb.Migration{good, {Version: 2, Name: "ok", SQL: "CREATE TABLE ok (id int);"}, {Version: 3, Name: "broken", SQL: "CREATE TABLE half (id int); ALTER TABLE good ADD COLUMN id int;"}}, 2, "42701", "half"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool := open(t, testenv.Postgres(t))
			ctx := context.Background()
			applied, err := pgdb.MigrateList(ctx, pool, tt.ms)
			pgErr, ok := errors.AsType[*pgconn.PgError](err)
			if !ok || pgErr.Code != tt.code {
				t.Fatalf("Migrate: %v, want SQLSTATE %s", err, tt.code)
			}
			if applied != tt.want || version(t, pool) != tt.want {
				t.Errorf("applied %d, version %d, want %d", applied, version(t, pool), tt.want)
			}
			if tableExists(t, pool, tt.table) {
				t.Errorf("table %s of the broken migration is left", tt.table)
			}
			// Fixed, the list applies from where it stopped.
			fixed := append([]pgdb.Migration(nil), tt.ms...)
			fixed[len(fixed)-1].SQL = "CREATE TABLE half (id int);"
			if _, err := pgdb.MigrateList(ctx, pool, fixed); err != nil {
				t.Fatal(err)
			}
			if v := version(t, pool); v != len(fixed) || !tableExists(t, pool, tt.table) {
				t.Errorf("after the fix: version %d, want %d", v, len(fixed))
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	good := testenv.Postgres(t)
	const secret = "Wr0ng-s3cret-PASS"
	withPassword := strings.Replace(good, ":"+testenv.PostgresPassword+"@", ":"+secret+"@", 1)
	if withPassword == good {
		t.Fatal("fixtures.env's URL has no password to replace")
	}
	tests := []struct {
		name string
		url  string
		want error
	}{
		{"wrong password", withPassword, pgdb.ErrAuth},
		{"unknown database", strings.Replace(good, "/stevedore_t_", "/no_such_", 1), pgdb.ErrNoDatabase},
		{"nobody listening", strings.Replace(withPassword, testenv.PostgresAddr, "127.0.0.1:1", 1), pgdb.ErrUnreachable},
		{"not a URL", "host=127.0.0.1 password=" + secret, pgdb.ErrBadURL},
		{"a bad port", "postgres://stevedore:" + secret + "@127.0.0.1:port/db", pgdb.ErrBadURL},
		{"a bad option", "postgres://stevedore:" + secret + "@127.0.0.1/db?sslmode=sometimes", pgdb.ErrBadURL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			pool, err := pgdb.Open(ctx, tt.url)
			if err == nil {
				pool.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("Open: %v, want %v", err, tt.want)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(fmt.Sprintf("%+v", err), secret) {
				t.Errorf("the error shows the password: %v", err)
			}
		})
	}
	t.Run("good", func(t *testing.T) {
		pool := open(t, good)
		var app string
		if err := pool.QueryRow(context.Background(), "SHOW application_name").Scan(&app); err != nil {
			t.Fatal(err)
		}
		if app != "stevedore" {
			t.Errorf("application_name %q", app)
		}
	})
}

// Hermetic: whatever wrote the password into an error, it does not show,
// escaped or not, while the error underneath is still there.
func TestRedact(t *testing.T) {
	base := errors.New("base")
	tests := []struct {
		url, text, secret string
	}{
		{"postgres://u:pw%2Fx@h/db", "dial postgres://u:pw%2Fx@h/db: pw/x", "pw"},
		{"postgres://u:p@ss@h/db", "cannot parse postgres://u:p@ss@h/db", "p@ss"},
		{"postgresql://u:s3cret@h:bad/db", `parse "postgresql://u:s3cret@h:bad/db": invalid port`, "s3cret"},
	}
	for _, tt := range tests {
		err := pgdb.Redact(fmt.Errorf("%s: %w", tt.text, base), tt.url)
		if strings.Contains(err.Error(), tt.secret) {
			t.Errorf("%q shows %q", err, tt.secret)
		}
		if !errors.Is(err, base) {
			t.Errorf("%v no longer wraps its cause", err)
		}
	}
}

// 0002 on a database at 0001 that has its admin: the admin keeps its
// password and reads back with no email; users written after have one.
func TestUserEmailMigrationKeepsUsers(t *testing.T) {
	pool := open(t, testenv.Postgres(t))
	ctx := context.Background()
	shipped, err := pgdb.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pgdb.MigrateList(ctx, pool, shipped[:1]); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO users (username, salt, hash, iterations) VALUES ('admin', 'salt', 'hash', 600000)"); err != nil {
		t.Fatal(err)
	}
	if applied, err := pgdb.Migrate(ctx, pool); err != nil || applied != latest(t)-1 {
		t.Fatalf("Migrate from version 1: applied %d, %v; want %d", applied, err, latest(t)-1)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO users (username, salt, hash, iterations, email) VALUES ('later', 's', 'h', 1, 'later@example.com')"); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		user, hash, email string
	}{
		{"admin", "hash", ""},
		{"later", "h", "later@example.com"},
	} {
		var hash, email string
		if err := pool.QueryRow(ctx, "SELECT convert_from(hash, 'UTF8'), email FROM users WHERE username = $1", tt.user).Scan(&hash, &email); err != nil {
			t.Fatalf("user %s: %v", tt.user, err)
		}
		if hash != tt.hash || email != tt.email {
			t.Errorf("user %s: hash %q, email %q; want %q, %q", tt.user, hash, email, tt.hash, tt.email)
		}
	}
}
