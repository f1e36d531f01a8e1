// Package pgdb is the server's PostgreSQL plumbing: opening a pool from a
// postgres:// URL with settings fit for a long-running server, and the
// versioned schema migrations every server node runs at start-up. It knows
// nothing of the server's records beyond the SQL of its migrations, so the
// server depends on it and not the other way round.
package pgdb

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Errors of Open; test with errors.Is.
var (
	// ErrBadURL: not a postgres:// (or postgresql://) URL pgx can parse.
	ErrBadURL = errors.New("bad PostgreSQL URL")
	// ErrUnreachable: no PostgreSQL answered at the URL's address in time,
	// or it is not accepting connections yet (starting up, shutting down).
	ErrUnreachable = errors.New("PostgreSQL unreachable")
	// ErrAuth: PostgreSQL refused the URL's user or password.
	ErrAuth = errors.New("PostgreSQL refused the credentials")
	// ErrNoDatabase: the URL's database does not exist.
	ErrNoDatabase = errors.New("PostgreSQL database does not exist")
)

// SQLSTATE codes this package classifies by (PostgreSQL's appendix A).
const (
	codeInvalidAuthorization = "28000" // invalid_authorization_specification (e.g. no pg_hba.conf entry)
	codeInvalidPassword      = "28P01" // invalid_password
	codeInvalidCatalogName   = "3D000" // invalid_catalog_name: no such database
	codeCannotConnectNow     = "57P03" // cannot_connect_now: starting up or shutting down
	codeAdminShutdown        = "57P01" // admin_shutdown
)

// Pool settings, unless the URL sets its own (pool_max_conns and the like).
const (
	// defaultMaxConns: the server's work is many short statements from
	// many goroutines; PostgreSQL's default max_connections (100) leaves
	// room for several nodes at this many each.
	defaultMaxConns = 10
	// defaultConnectTimeout bounds a dial, which pgx leaves unbounded, so
	// an unreachable host fails a start-up instead of hanging it.
	defaultConnectTimeout = 10 * time.Second
	// Idle connections are closed, and live ones checked, well within the
	// idle timeouts of the proxies and load balancers found in front of
	// managed PostgreSQL.
	maxConnIdleTime   = 5 * time.Minute
	healthCheckPeriod = 30 * time.Second
	// Connections are renewed hourly, spread out, so that a failover's new
	// primary gets them back without every node reconnecting at once.
	maxConnLifetime       = time.Hour
	maxConnLifetimeJitter = 5 * time.Minute
	applicationName       = "stevedore"
)

// Open returns a pool for the PostgreSQL database at rawURL, having
// connected once so that a wrong address, user, password or database is an
// error here (ErrUnreachable, ErrAuth, ErrNoDatabase), not at the first
// query. No error text holds the URL's password.
func Open(ctx context.Context, rawURL string) (*pgxpool.Pool, error) {
	cfg, err := Config(rawURL)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres %s: %w", Describe(cfg), redact(err, rawURL))
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres %s: %w", Describe(cfg), classify(redact(err, rawURL)))
	}
	return pool, nil
}

// Config parses rawURL into a pool configuration with this package's
// settings where the URL sets none.
func Config(rawURL string) (*pgxpool.Config, error) {
	// The server chooses its store by the URL's scheme, so a key=value
	// connection string, which pgx would take, is refused here too.
	if !strings.HasPrefix(rawURL, "postgres://") && !strings.HasPrefix(rawURL, "postgresql://") {
		return nil, fmt.Errorf("%w: want postgres://USER:PASSWORD@HOST:PORT/DATABASE", ErrBadURL)
	}
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadURL, redact(err, rawURL))
	}
	query := urlQuery(rawURL)
	if !query.Has("pool_max_conns") {
		cfg.MaxConns = defaultMaxConns
	}
	if !query.Has("pool_max_conn_idle_time") {
		cfg.MaxConnIdleTime = maxConnIdleTime
	}
	if !query.Has("pool_health_check_period") {
		cfg.HealthCheckPeriod = healthCheckPeriod
	}
	if !query.Has("pool_max_conn_lifetime") {
		cfg.MaxConnLifetime = maxConnLifetime
	}
	if !query.Has("pool_max_conn_lifetime_jitter") {
		cfg.MaxConnLifetimeJitter = maxConnLifetimeJitter
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}
	// So that pg_stat_activity and the server's log say whose sessions these are.
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = applicationName
	}
	return cfg, nil
}

// Describe names the database of cfg for messages: user, address and
// database, never the password.
func Describe(cfg *pgxpool.Config) string {
	c := cfg.ConnConfig
	return fmt.Sprintf("%s@%s:%d/%s", c.User, c.Host, c.Port, c.Database)
}

// classify marks a connection failure with this package's errors: by the
// SQLSTATE when PostgreSQL answered, as unreachable when it did not.
func classify(err error) error {
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		switch pgErr.Code {
		case codeInvalidPassword, codeInvalidAuthorization:
			return fmt.Errorf("%w: %w", ErrAuth, err)
		case codeInvalidCatalogName:
			return fmt.Errorf("%w: %w", ErrNoDatabase, err)
		case codeCannotConnectNow, codeAdminShutdown:
			return fmt.Errorf("%w: %w", ErrUnreachable, err)
		}
		return err
	}
	// The caller gave up: that is not the database's fault.
	if errors.Is(err, context.Canceled) {
		return err
	}
	if _, ok := errors.AsType[*pgconn.ConnectError](err); ok {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	return err
}

// urlQuery is rawURL's query: the pool settings it sets itself. pgx
// parses URLs with net/url too, so it is never asked of one pgx refused.
func urlQuery(rawURL string) url.Values {
	u, err := url.Parse(rawURL)
	if err != nil {
		return url.Values{}
	}
	return u.Query()
}

// redact keeps rawURL's password out of err's text, whatever wrote it
// there (pgx redacts its own parse errors only as best it can, and net/url
// quotes whole URLs), while errors.Is and errors.As still see err.
func redact(err error, rawURL string) error {
	if err == nil {
		return nil
	}
	var secrets []string
	for _, pw := range passwords(rawURL) {
		secrets = append(secrets, pw, url.QueryEscape(pw), url.PathEscape(pw))
		if unescaped, err := url.PathUnescape(pw); err == nil {
			secrets = append(secrets, unescaped, url.QueryEscape(unescaped))
		}
	}
	if len(secrets) == 0 {
		return err
	}
	return &redactedError{err: err, secrets: secrets}
}

// passwords are what may be the URL's password, found without net/url,
// which refuses some URLs pgx accepts: what lies between the first ':' of
// the user info and its '@', taking both the first and the last '@' before
// the query, since an unescaped password may hold one and a path may too.
func passwords(rawURL string) []string {
	_, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return nil
	}
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		rest = rest[:i]
	}
	var pws []string
	for _, at := range []int{strings.Index(rest, "@"), strings.LastIndex(rest, "@")} {
		if at < 0 {
			continue
		}
		if _, pw, ok := strings.Cut(rest[:at], ":"); ok && pw != "" {
			pws = append(pws, pw)
		}
	}
	return pws
}

type redactedError struct {
	err     error
	secrets []string
}

func (e *redactedError) Error() string {
	s := e.err.Error()
	for _, secret := range e.secrets {
		if secret != "" {
			s = strings.ReplaceAll(s, secret, "xxxxx")
		}
	}
	return s
}

func (e *redactedError) Unwrap() error { return e.err }
