package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgreSQL from fixtures.env: the test role's own database, from which
// Postgres creates one per test.
var (
	PostgresURL      = env("STEVEDORE_TEST_DB_URL")
	PostgresAddr     = env("STEVEDORE_TEST_DB_HOST") + ":" + env("STEVEDORE_TEST_DB_PORT")
	PostgresUser     = env("STEVEDORE_TEST_DB_USER")
	PostgresPassword = env("STEVEDORE_TEST_DB_PASSWORD")
)

// testDBPrefix begins the name of every database Postgres creates,
// followed by its creation time (Unix seconds), so that those a killed
// test process left behind can be told and dropped.
const testDBPrefix = "stevedore_t_"

// staleTestDB: a test database older than this is a killed process's (no
// `go test` run here lasts it).
const staleTestDB = 6 * time.Hour

var admin = sync.OnceValues(func() (*pgxpool.Pool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cfg, err := pgxpool.ParseConfig(PostgresURL)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 4
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	dropStale(ctx, pool)
	return pool, nil
})

// Postgres returns the URL of a database of its own for the test, fresh
// and empty, dropped when the test ends; it fails the test in CI and skips
// it elsewhere when PostgreSQL is not there (`make setup` provides it).
//
// A database per test rather than a schema: what the server will rely on
// is per database (advisory locks, LISTEN/NOTIFY channels, the migrations'
// search for schema_migrations), so only a database isolates it. One
// created from template0 and dropped takes about 0.2 s here.
func Postgres(t testing.TB) string {
	t.Helper()
	pool, err := admin()
	if err != nil {
		Unavailable(t, "postgresql at %s as %s: %v", PostgresAddr, PostgresUser, err)
		return ""
	}
	b := make([]byte, 6)
	rand.Read(b)
	name := fmt.Sprintf("%s%d_%s", testDBPrefix, time.Now().Unix(), hex.EncodeToString(b))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// template0: nothing connects to it, unlike template1, whose
	// sessions would make a concurrent CREATE DATABASE fail.
	if _, err := pool.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE template0"); err != nil {
		t.Fatalf("create test database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := dropDatabase(ctx, pool, name); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	u, err := url.Parse(PostgresURL)
	if err != nil {
		t.Fatalf("fixtures.env: STEVEDORE_TEST_DB_URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// codeInsufficientPrivilege is the SQLSTATE of a DROP … WITH (FORCE) that
// met a process it may not end: an autovacuum worker on the database,
// which has no role the test role is a member of.
const codeInsufficientPrivilege = "42501"

// dropDatabase drops database name. FORCE: a connection the test left open
// does not keep it. An autovacuum worker busy on it (tests that update
// rows often wake one) makes FORCE fail; it is soon done, so the drop is
// tried again.
func dropDatabase(ctx context.Context, pool *pgxpool.Pool, name string) error {
	for {
		_, err := pool.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
		if pgErr, ok := errors.AsType[*pgconn.PgError](err); !ok || pgErr.Code != codeInsufficientPrivilege {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// dropStale drops the test databases of test processes killed before
// their cleanup ran; best effort, as what it finds is only litter.
func dropStale(ctx context.Context, pool *pgxpool.Pool) {
	rows, err := pool.Query(ctx, "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", testDBPrefix)
	if err != nil {
		return
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return
	}
	for _, name := range names {
		ts, _, _ := strings.Cut(strings.TrimPrefix(name, testDBPrefix), "_")
		created, err := strconv.ParseInt(ts, 10, 64)
		if err != nil || time.Since(time.Unix(created, 0)) < staleTestDB {
			continue
		}
		dropDatabase(ctx, pool, name)
	}
}
