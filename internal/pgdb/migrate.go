package pgdb

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The schema's migrations, in version order: NNNN_what.sql, numbered from
// 0001 without gaps. A shipped migration is never edited: a change to the
// schema is a new file.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

var migrationName = regexp.MustCompile(`^(\d{4})_([a-z0-9_]+)\.sql$`)

// Migration is one version of the schema: the SQL that takes the schema
// from Version-1 to Version, run in one transaction.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// migrationLock is the key of the advisory lock every server node takes
// around its migration, so that nodes starting at once apply each version
// once, one after the other. Advisory locks are per database: servers of
// other databases on the same PostgreSQL do not wait for each other.
// (The ASCII of "stvdmigr".)
const migrationLock int64 = 0x737476646d696772

// ErrSchemaTooNew: the database's schema is of a version newer than this
// binary knows, written by a newer server; using it could undo or corrupt
// what that server relies on. Test with errors.Is; errors.As to
// *SchemaTooNewError gives both versions.
var ErrSchemaTooNew = errors.New("database schema newer than this server knows")

// SchemaTooNewError says which versions: the database's and this binary's newest.
type SchemaTooNewError struct {
	Database, Known int
}

func (e *SchemaTooNewError) Error() string {
	return fmt.Sprintf("%s: the database is at schema version %d, this server knows versions up to %d: run a server at least as new as the one that migrated it",
		ErrSchemaTooNew, e.Database, e.Known)
}

func (e *SchemaTooNewError) Is(target error) bool { return target == ErrSchemaTooNew }

var embedded = sync.OnceValues(func() ([]Migration, error) { return loadMigrations(migrationFiles, "migrations") })

// Migrations are the migrations this binary ships, in version order.
func Migrations() ([]Migration, error) { return embedded() }

// LatestVersion is the newest schema version this binary knows.
func LatestVersion() (int, error) {
	ms, err := embedded()
	if err != nil {
		return 0, err
	}
	return len(ms), nil
}

func loadMigrations(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	var ms []Migration
	for _, e := range entries {
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("migrations: %s: want NNNN_name.sql", e.Name())
		}
		v, _ := strconv.Atoi(m[1])
		sql, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("migrations: %w", err)
		}
		ms = append(ms, Migration{Version: v, Name: m[2], SQL: string(sql)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	if err := checkOrder(ms); err != nil {
		return nil, err
	}
	return ms, nil
}

// checkOrder: versions 1, 2, … n, so that "version" and "how many applied"
// are one number and a missing file cannot be skipped silently.
func checkOrder(ms []Migration) error {
	for i, m := range ms {
		if m.Version != i+1 {
			return fmt.Errorf("migrations: version %d (%s) where %d was due", m.Version, m.Name, i+1)
		}
	}
	return nil
}

// Migrate brings the database's schema to the newest version this binary
// knows, applying each missing migration in order, each in a transaction
// of its own with its row in schema_migrations, so that a failed one
// leaves the schema at the version before it. Every node may call it at
// start-up at once: an advisory lock runs them one at a time, and the
// later ones find nothing to do. A database already newer than this binary
// is refused with a *SchemaTooNewError (ErrSchemaTooNew), untouched.
//
// The URL's role needs to create tables in the database's public schema:
// since PostgreSQL 15 only the database's owner may, so the server's role
// should own its database.
func Migrate(ctx context.Context, pool *pgxpool.Pool) (applied int, err error) {
	ms, err := embedded()
	if err != nil {
		return 0, err
	}
	return migrate(ctx, pool, ms)
}

func migrate(ctx context.Context, pool *pgxpool.Pool, ms []Migration) (applied int, err error) {
	if err := checkOrder(ms); err != nil {
		return 0, err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrate: %w", classify(err))
	}
	// The lock is the session's: it is held on this one connection, and
	// released on it, or with it should the unlock fail.
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLock); err != nil {
		return 0, fmt.Errorf("migrate: wait for the migration lock: %w", err)
	}
	defer func() {
		// Unlocked even when ctx has ended, so the next node need not
		// wait for this connection to be closed.
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, uerr := conn.Exec(uctx, "SELECT pg_advisory_unlock($1)", migrationLock); uerr != nil {
			conn.Conn().Close(uctx) // closing the session releases its locks
			if err == nil {
				err = fmt.Errorf("migrate: release the migration lock: %w", uerr)
			}
		}
	}()
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    integer PRIMARY KEY CHECK (version > 0),
		name       text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return 0, fmt.Errorf("migrate: schema_migrations: %w", err)
	}
	current, err := version(ctx, conn.Conn())
	if err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	if current > len(ms) {
		return 0, &SchemaTooNewError{Database: current, Known: len(ms)}
	}
	for _, m := range ms[current:] {
		if err := apply(ctx, conn.Conn(), m); err != nil {
			return applied, err
		}
		applied++
	}
	return applied, nil
}

func apply(ctx context.Context, conn *pgx.Conn, m Migration) error {
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// The simple protocol: a migration is many statements in one string.
		if _, err := tx.Exec(ctx, m.SQL, pgx.QueryExecModeSimpleProtocol); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name)
		return err
	})
	if err != nil {
		return fmt.Errorf("migrate: %04d_%s (rolled back): %w", m.Version, m.Name, err)
	}
	return nil
}

// Version is the database's schema version: the newest migration applied,
// 0 for a database never migrated.
func Version(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("schema version: %w", classify(err))
	}
	defer conn.Release()
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('schema_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return 0, fmt.Errorf("schema version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	return version(ctx, conn.Conn())
}

func version(ctx context.Context, conn *pgx.Conn) (int, error) {
	var v int
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_migrations").Scan(&v); err != nil {
		return 0, fmt.Errorf("schema version: %w", err)
	}
	return v, nil
}
