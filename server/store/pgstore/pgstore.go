// Package pgstore is the store.Store on PostgreSQL (pgx v5): the schema of
// internal/pgdb's migrations, which Open runs. Each method is one
// statement or one transaction; UpdateStep holds its row with SELECT …
// FOR UPDATE and retries a serialization failure or a deadlock, which
// PostgreSQL resolves by aborting one of the transactions.
//
// Backups are pg_dump's: Backup returns store.ErrUnsupported.
package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"stevedore/internal/pgdb"
	"stevedore/server/store"
)

// SQLSTATEs after which a transaction is run again (PostgreSQL's appendix A).
const (
	codeSerializationFailure = "40001"
	codeDeadlockDetected     = "40P01"
)

const (
	// opTimeout bounds one call, so that a database gone quiet fails the
	// server's request instead of hanging its goroutine for good.
	opTimeout = 30 * time.Second
	// maxAttempts bounds the retries of a transaction PostgreSQL aborted.
	maxAttempts = 10
)

// Store is a store.Store in a PostgreSQL database.
type Store struct {
	pool *pgxpool.Pool
}

var _ store.Store = (*Store)(nil)

// Open connects to the database at url (pgdb's errors: ErrBadURL,
// ErrUnreachable, ErrAuth, ErrNoDatabase; no password in their text) and
// brings its schema to the newest this binary knows. A database of a newer
// schema is refused: errors.Is(err, store.ErrSchemaTooNew) and
// errors.Is(err, pgdb.ErrSchemaTooNew) both hold.
func Open(ctx context.Context, url string) (*Store, error) {
	pool, err := pgdb.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	if _, err := pgdb.Migrate(ctx, pool); err != nil {
		pool.Close()
		if errors.Is(err, pgdb.ErrSchemaTooNew) {
			return nil, fmt.Errorf("postgres %s: %w", pgdb.Describe(pool.Config()), schemaTooNew{err})
		}
		return nil, fmt.Errorf("postgres %s: %w", pgdb.Describe(pool.Config()), err)
	}
	return &Store{pool: pool}, nil
}

// schemaTooNew is pgdb's refusal as the store's: errors.Is sees both
// sentinels, and the text says it once.
type schemaTooNew struct{ err error }

func (e schemaTooNew) Error() string        { return e.err.Error() }
func (e schemaTooNew) Unwrap() error        { return e.err }
func (e schemaTooNew) Is(target error) bool { return target == store.ErrSchemaTooNew }

// Close closes the pool.
func (s *Store) Close() error { s.pool.Close(); return nil }

// Backup implements store.Store: PostgreSQL's own tools (pg_dump, or the
// provider's snapshots) take consistent backups of a running database.
func (s *Store) Backup(io.Writer) (int64, error) {
	return 0, fmt.Errorf("postgres: use pg_dump: %w", store.ErrUnsupported)
}

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), opTimeout)
}

// inTx runs fn in a transaction, again when PostgreSQL aborted it for a
// serialization failure or a deadlock; fn's own errors end it at once.
func (s *Store) inTx(fn func(context.Context, pgx.Tx) error) error {
	c, cancel := ctx()
	defer cancel()
	var err error
	for attempt := 1; ; attempt++ {
		err = pgx.BeginFunc(c, s.pool, func(tx pgx.Tx) error { return fn(c, tx) })
		if !retryable(err) || attempt == maxAttempts {
			return err
		}
		// A short, growing pause lets the transaction that won finish.
		select {
		case <-time.After(time.Duration(attempt) * 5 * time.Millisecond):
		case <-c.Done():
			return err
		}
	}
}

func retryable(err error) bool {
	pgErr, ok := errors.AsType[*pgconn.PgError](err)
	return ok && (pgErr.Code == codeSerializationFailure || pgErr.Code == codeDeadlockDetected)
}

// stepColumns are read by scanStep in this order.
const stepColumns = `id, worker, pool, labels, queue_deadline, submitted_by, submitter_key, image, sealed, state, assigned,
	log_cursor, cancel_requested, outcome, exit_code, signal, reason, output_variables, sensitive_outputs, sealed_outputs,
	artifacts, created_at, started_at, finished_at, node, lease_until`

func scanStep(row pgx.Row) (store.StepRecord, error) {
	var (
		rec                                  store.StepRecord
		labels, outputs, artifacts           []byte
		deadline, started, finished, created *time.Time
		lease                                *time.Time
		cursor                               int64
	)
	err := row.Scan(&rec.ID, &rec.Worker, &rec.Pool, &labels, &deadline, &rec.SubmittedBy, &rec.SubmitterKey, &rec.Image,
		&rec.Sealed, &rec.State, &rec.Assigned, &cursor, &rec.CancelRequested, &rec.Outcome, &rec.ExitCode, &rec.Signal,
		&rec.Reason, &outputs, &rec.SensitiveOutputs, &rec.SealedOutputs, &artifacts, &created, &started, &finished,
		&rec.Node, &lease)
	if err != nil {
		return store.StepRecord{}, err
	}
	rec.Cursor = uint64(cursor)
	if err := unmarshal(labels, &rec.Labels); err != nil {
		return store.StepRecord{}, fmt.Errorf("step %s: labels: %w", rec.ID, err)
	}
	if err := unmarshal(outputs, &rec.OutputVariables); err != nil {
		return store.StepRecord{}, fmt.Errorf("step %s: output variables: %w", rec.ID, err)
	}
	if err := unmarshal(artifacts, &rec.Artifacts); err != nil {
		return store.StepRecord{}, fmt.Errorf("step %s: artifacts: %w", rec.ID, err)
	}
	rec.QueueDeadline, rec.CreatedAt, rec.StartedAt, rec.FinishedAt = fromNull(deadline), fromNull(created), fromNull(started), fromNull(finished)
	rec.LeaseUntil = fromNull(lease)
	// Empty reads back as the embedded store's JSON gives it: nil.
	if len(rec.Sealed) == 0 {
		rec.Sealed = nil
	}
	if len(rec.SensitiveOutputs) == 0 {
		rec.SensitiveOutputs = nil
	}
	if len(rec.SealedOutputs) == 0 {
		rec.SealedOutputs = nil
	}
	return rec, nil
}

// normalize makes rec what reading it back gives: times UTC and to the
// microsecond, empty maps and slices nil; so that the records CreateStep
// and UpdateStep return are the ones written.
func normalize(rec *store.StepRecord) {
	for _, t := range []*time.Time{&rec.QueueDeadline, &rec.CreatedAt, &rec.StartedAt, &rec.FinishedAt, &rec.LeaseUntil} {
		if !t.IsZero() {
			*t = t.UTC().Truncate(time.Microsecond)
		}
	}
	if len(rec.Labels) == 0 {
		rec.Labels = nil
	}
	if len(rec.OutputVariables) == 0 {
		rec.OutputVariables = nil
	}
	if len(rec.SensitiveOutputs) == 0 {
		rec.SensitiveOutputs = nil
	}
	if len(rec.Artifacts) == 0 {
		rec.Artifacts = nil
	}
	if len(rec.Sealed) == 0 {
		rec.Sealed = nil
	}
	if len(rec.SealedOutputs) == 0 {
		rec.SealedOutputs = nil
	}
}

// stepArgs are rec's column values in stepColumns' order.
func stepArgs(rec store.StepRecord) ([]any, error) {
	if rec.Cursor > math.MaxInt64 {
		return nil, fmt.Errorf("step %s: cursor %d out of range", rec.ID, rec.Cursor)
	}
	labels, err := marshalMap(rec.Labels)
	if err != nil {
		return nil, err
	}
	outputs, err := marshalMap(rec.OutputVariables)
	if err != nil {
		return nil, err
	}
	artifacts := []byte("[]")
	if len(rec.Artifacts) > 0 {
		if artifacts, err = json.Marshal(rec.Artifacts); err != nil {
			return nil, err
		}
	}
	sealed := rec.Sealed
	if sealed == nil {
		sealed = []byte{} // the column is NOT NULL: none is stored empty
	}
	sensitive := rec.SensitiveOutputs
	if sensitive == nil {
		sensitive = []string{}
	}
	return []any{rec.ID, rec.Worker, rec.Pool, string(labels), toNull(rec.QueueDeadline), rec.SubmittedBy, rec.SubmitterKey,
		rec.Image, sealed, rec.State, rec.Assigned, int64(rec.Cursor), rec.CancelRequested, rec.Outcome, rec.ExitCode,
		rec.Signal, rec.Reason, string(outputs), sensitive, rec.SealedOutputs, string(artifacts), rec.CreatedAt.UTC(),
		toNull(rec.StartedAt), toNull(rec.FinishedAt), rec.Node, toNull(rec.LeaseUntil)}, nil
}

// insertStep inserts rec unless its ID is taken: then it reports false.
const insertStep = `INSERT INTO steps (` + stepColumns + `) VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, $12, $13,
	$14, $15, $16, $17, $18::jsonb, $19, $20, $21::jsonb, $22, $23, $24, $25, $26) ON CONFLICT (id) DO NOTHING`

// updateStep writes every column but the ID; the cancel flag only ever
// goes from false to true.
const updateStep = `UPDATE steps SET worker = $2, pool = $3, labels = $4::jsonb, queue_deadline = $5, submitted_by = $6,
	submitter_key = $7, image = $8, sealed = $9, state = $10, assigned = $11, log_cursor = $12,
	cancel_requested = cancel_requested OR $13, outcome = $14, exit_code = $15, signal = $16, reason = $17,
	output_variables = $18::jsonb, sensitive_outputs = $19, sealed_outputs = $20, artifacts = $21::jsonb,
	created_at = $22, started_at = $23, finished_at = $24, node = $25, lease_until = $26 WHERE id = $1`

// CreateStep implements store.Steps. The key's row goes in with the step,
// in one transaction; two submissions of one key at once both insert a
// step, the key's primary key lets one of them have it, and the other
// finds the winner's step when it runs again.
func (s *Store) CreateStep(rec store.StepRecord, key string) (store.StepRecord, bool, error) {
	normalize(&rec)
	args, err := stepArgs(rec)
	if err != nil {
		return store.StepRecord{}, false, err
	}
	c, cancel := ctx()
	defer cancel()
	for attempt := 1; ; attempt++ {
		var prev store.StepRecord
		found := false
		err := pgx.BeginFunc(c, s.pool, func(tx pgx.Tx) error {
			if key != "" {
				var id string
				switch err := tx.QueryRow(c, `SELECT step_id FROM submission_keys WHERE key = $1`, key).Scan(&id); {
				case err == nil:
					found = true
					prev, err = scanStep(tx.QueryRow(c, `SELECT `+stepColumns+` FROM steps WHERE id = $1`, id))
					if errors.Is(err, pgx.ErrNoRows) {
						return fmt.Errorf("step %s of submission key %q: %w", id, key, store.ErrNotFound)
					}
					return err
				case !errors.Is(err, pgx.ErrNoRows):
					return err
				}
			}
			tag, err := tx.Exec(c, insertStep, args...)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return fmt.Errorf("step %s: %w", rec.ID, store.ErrConflict)
			}
			if key == "" {
				return nil
			}
			// Waits for a concurrent holder of the key to commit or roll back.
			tag, err = tx.Exec(c, `INSERT INTO submission_keys (key, step_id) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`, key, rec.ID)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return errLostKey // rolls the step back
			}
			return nil
		})
		switch {
		case errors.Is(err, errLostKey) && attempt < maxAttempts:
			continue
		case retryable(err) && attempt < maxAttempts:
			continue
		case err != nil:
			return store.StepRecord{}, false, err
		case found:
			return prev, false, nil
		}
		return rec, true, nil
	}
}

var errLostKey = errors.New("submission key taken by a concurrent submission")

// KeepSetting implements store.Store: the insert waits for a concurrent
// one of the same name to commit, and the read after it, a statement of
// its own, sees the winner's row.
func (s *Store) KeepSetting(name string, value []byte) ([]byte, error) {
	var out []byte
	err := s.inTx(func(c context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(c, `INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`, name, value); err != nil {
			return err
		}
		return tx.QueryRow(c, `SELECT value FROM settings WHERE name = $1`, name).Scan(&out)
	})
	if err != nil {
		return nil, fmt.Errorf("setting %s: %w", name, err)
	}
	return out, nil
}

// TakeLease implements store.Store in one statement: the row's lock
// orders concurrent takers, and only a taker that may have it updates it.
func (s *Store) TakeLease(name, holder string, now, until time.Time) (bool, error) {
	c, cancel := ctx()
	defer cancel()
	tag, err := s.pool.Exec(c, `INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
		WHERE leases.holder = excluded.holder OR leases.until <= $4`, name, holder, until.UTC(), now.UTC())
	if err != nil {
		return false, fmt.Errorf("lease %s: %w", name, err)
	}
	return tag.RowsAffected() == 1, nil
}

// DropLease implements store.Store.
func (s *Store) DropLease(name, holder string) error {
	return s.exec("lease "+name, `DELETE FROM leases WHERE name = $1 AND holder = $2`, name, holder)
}

// Step implements store.Steps.
func (s *Store) Step(id string) (store.StepRecord, error) {
	c, cancel := ctx()
	defer cancel()
	rec, err := scanStep(s.pool.QueryRow(c, `SELECT `+stepColumns+` FROM steps WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.StepRecord{}, fmt.Errorf("step %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.StepRecord{}, fmt.Errorf("step %s: %w", id, err)
	}
	return rec, nil
}

// ListSteps implements store.Steps; the queue is read through its partial
// index.
func (s *Store) ListSteps(state string) ([]store.StepRecord, error) {
	c, cancel := ctx()
	defer cancel()
	var rows pgx.Rows
	var err error
	switch state {
	case "":
		rows, err = s.pool.Query(c, `SELECT `+stepColumns+` FROM steps ORDER BY id`)
	case store.StateQueued:
		rows, err = s.pool.Query(c, `SELECT `+stepColumns+` FROM steps WHERE state = 'queued' ORDER BY id`)
	default:
		rows, err = s.pool.Query(c, `SELECT `+stepColumns+` FROM steps WHERE state = $1 ORDER BY id`, state)
	}
	if err != nil {
		return nil, fmt.Errorf("steps: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.StepRecord, error) { return scanStep(row) })
	if err != nil {
		return nil, fmt.Errorf("steps: %w", err)
	}
	return out, nil
}

// UpdateStep implements store.Steps: the row is locked from the read to
// the commit, so no other update interleaves.
func (s *Store) UpdateStep(id string, fn func(*store.StepRecord) error) (store.StepRecord, error) {
	var out store.StepRecord
	err := s.inTx(func(c context.Context, tx pgx.Tx) error {
		rec, err := scanStep(tx.QueryRow(c, `SELECT `+stepColumns+` FROM steps WHERE id = $1 FOR UPDATE`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("step %s: %w", id, store.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("step %s: %w", id, err)
		}
		cancel := rec.CancelRequested
		if err := fn(&rec); err != nil {
			return fnError{err}
		}
		rec.ID = id
		rec.CancelRequested = rec.CancelRequested || cancel
		normalize(&rec)
		args, err := stepArgs(rec)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(c, updateStep, args...); err != nil {
			return fmt.Errorf("step %s: %w", id, err)
		}
		out = rec
		return nil
	})
	if fe, ok := errors.AsType[fnError](err); ok {
		return store.StepRecord{}, fe.err // unwrapped, as the interface says
	}
	if err != nil {
		return store.StepRecord{}, err
	}
	return out, nil
}

// fnError carries UpdateStep's fn's error through the transaction: it
// does not unwrap, so that no error of fn's is taken for PostgreSQL's and
// retried.
type fnError struct{ err error }

func (e fnError) Error() string { return e.err.Error() }

// CancelRequested implements store.Steps.
func (s *Store) CancelRequested(id string) (bool, error) {
	c, cancel := ctx()
	defer cancel()
	var asked bool
	err := s.pool.QueryRow(c, `SELECT cancel_requested FROM steps WHERE id = $1`, id).Scan(&asked)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("step %s: %w", id, err)
	}
	return asked, nil
}

// CountQueued implements store.Steps, from the queue's index.
func (s *Store) CountQueued() (int, error) {
	c, cancel := ctx()
	defer cancel()
	var n int
	if err := s.pool.QueryRow(c, `SELECT count(*) FROM steps WHERE state = 'queued'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("queued steps: %w", err)
	}
	return n, nil
}

// DeleteSteps implements store.Steps: the keys go by ON DELETE CASCADE,
// the queue and the cancel flags are the rows' own.
func (s *Store) DeleteSteps(ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	c, cancel := ctx()
	defer cancel()
	if _, err := s.pool.Exec(c, `DELETE FROM steps WHERE id = ANY($1)`, ids); err != nil {
		return fmt.Errorf("delete steps: %w", err)
	}
	return nil
}

// Abandon implements store.Steps.
func (s *Store) Abandon(id, worker string) error {
	return s.exec("abandon step "+id, `INSERT INTO abandoned_steps (step_id, worker) VALUES ($1, $2)
		ON CONFLICT (step_id) DO UPDATE SET worker = excluded.worker`, id, worker)
}

// AbandonedOn implements store.Steps.
func (s *Store) AbandonedOn(worker string) ([]string, error) {
	return s.strings("abandoned steps", `SELECT step_id FROM abandoned_steps WHERE worker = $1 ORDER BY step_id`, worker)
}

// ForgetAbandoned implements store.Steps.
func (s *Store) ForgetAbandoned(id string) error {
	return s.exec("forget abandoned step "+id, `DELETE FROM abandoned_steps WHERE step_id = $1`, id)
}

// PutWorker implements store.Workers; when it went away is kept.
func (s *Store) PutWorker(rec store.WorkerRecord) error {
	labels, err := marshalMap(rec.Labels)
	if err != nil {
		return err
	}
	pools := rec.Pools
	if pools == nil {
		pools = []string{}
	}
	return s.exec("worker "+rec.Name, `INSERT INTO workers (name, thumbprint, address, pools, labels) VALUES ($1, $2, $3, $4, $5::jsonb)
		ON CONFLICT (name) DO UPDATE SET thumbprint = excluded.thumbprint, address = excluded.address,
		pools = excluded.pools, labels = excluded.labels`, rec.Name, rec.Thumbprint, rec.Address, pools, string(labels))
}

// ListWorkers implements store.Workers.
func (s *Store) ListWorkers() ([]store.WorkerRecord, error) {
	c, cancel := ctx()
	defer cancel()
	rows, err := s.pool.Query(c, `SELECT name, thumbprint, address, pools, labels FROM workers ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("workers: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.WorkerRecord, error) {
		var w store.WorkerRecord
		var labels []byte
		if err := row.Scan(&w.Name, &w.Thumbprint, &w.Address, &w.Pools, &labels); err != nil {
			return w, err
		}
		if len(w.Pools) == 0 {
			w.Pools = nil
		}
		if err := unmarshal(labels, &w.Labels); err != nil {
			return w, fmt.Errorf("worker %s: labels: %w", w.Name, err)
		}
		return w, nil
	})
	if err != nil {
		return nil, fmt.Errorf("workers: %w", err)
	}
	return out, nil
}

// DeleteWorker implements store.Workers.
func (s *Store) DeleteWorker(name string) error {
	return s.inTx(func(c context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(c, `DELETE FROM workers_left WHERE name = $1`, name); err != nil {
			return fmt.Errorf("worker %s: %w", name, err)
		}
		if _, err := tx.Exec(c, `DELETE FROM workers WHERE name = $1`, name); err != nil {
			return fmt.Errorf("worker %s: %w", name, err)
		}
		return nil
	})
}

// SetWorkerLeft implements store.Workers.
func (s *Store) SetWorkerLeft(name string, at time.Time) error {
	if at.IsZero() {
		return s.exec("worker "+name, `DELETE FROM workers_left WHERE name = $1`, name)
	}
	return s.exec("worker "+name, `INSERT INTO workers_left (name, left_at) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET left_at = excluded.left_at`, name, at.UTC())
}

// WorkerLeft implements store.Workers.
func (s *Store) WorkerLeft(name string) (time.Time, error) {
	c, cancel := ctx()
	defer cancel()
	var at time.Time
	err := s.pool.QueryRow(c, `SELECT left_at FROM workers_left WHERE name = $1`, name).Scan(&at)
	if errors.Is(err, pgx.ErrNoRows) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("worker %s: %w", name, err)
	}
	return at.UTC(), nil
}

// ListTrusted implements store.Trust.
func (s *Store) ListTrusted() ([]string, error) {
	return s.strings("trust", `SELECT thumbprint FROM trust ORDER BY thumbprint`)
}

// AddTrusted implements store.Trust.
func (s *Store) AddTrusted(thumbprint string) error {
	return s.exec("trust", `INSERT INTO trust (thumbprint) VALUES ($1) ON CONFLICT DO NOTHING`, thumbprint)
}

// RemoveTrusted implements store.Trust.
func (s *Store) RemoveTrusted(thumbprint string) error {
	return s.exec("trust", `DELETE FROM trust WHERE thumbprint = $1`, thumbprint)
}

// HasUsers implements store.Users.
func (s *Store) HasUsers() (bool, error) {
	c, cancel := ctx()
	defer cancel()
	var exists bool
	if err := s.pool.QueryRow(c, `SELECT EXISTS (SELECT 1 FROM users)`).Scan(&exists); err != nil {
		return false, fmt.Errorf("users: %w", err)
	}
	return exists, nil
}

// CreateUser implements store.Users.
func (s *Store) CreateUser(name string, cr store.Credential) error {
	c, cancel := ctx()
	defer cancel()
	tag, err := s.pool.Exec(c, `INSERT INTO users (username, salt, hash, iterations, email) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`,
		name, nonNil(cr.Salt), nonNil(cr.Hash), cr.Iterations, cr.Email)
	if err != nil {
		return fmt.Errorf("user %s: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("user %s: %w", name, store.ErrConflict)
	}
	return nil
}

// User implements store.Users.
func (s *Store) User(name string) (store.Credential, error) {
	c, cancel := ctx()
	defer cancel()
	var cr store.Credential
	err := s.pool.QueryRow(c, `SELECT salt, hash, iterations, email FROM users WHERE username = $1`, name).Scan(&cr.Salt, &cr.Hash, &cr.Iterations, &cr.Email)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Credential{}, fmt.Errorf("user %s: %w", name, store.ErrNotFound)
	}
	if err != nil {
		return store.Credential{}, fmt.Errorf("user %s: %w", name, err)
	}
	return cr, nil
}

// CreateAPIKey implements store.APIKeys: the unique name and hash are the
// table's constraints, so the check and the write are one statement.
func (s *Store) CreateAPIKey(hash [32]byte, k store.APIKey) error {
	c, cancel := ctx()
	defer cancel()
	tag, err := s.pool.Exec(c, `INSERT INTO api_keys (secret_sha256, id, name, role, created_at, last_used_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING`,
		hash[:], k.ID, k.Name, k.Role, k.CreatedAt.UTC(), toNull(k.LastUsedAt), toNull(k.ExpiresAt))
	if err != nil {
		return fmt.Errorf("api key %s: %w", k.Name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("api key %s: %w", k.Name, store.ErrConflict)
	}
	return nil
}

const apiKeyColumns = `id, name, role, created_at, last_used_at, expires_at`

func scanAPIKey(row pgx.Row) (store.APIKey, error) {
	var k store.APIKey
	var created, used, expires *time.Time
	if err := row.Scan(&k.ID, &k.Name, &k.Role, &created, &used, &expires); err != nil {
		return store.APIKey{}, err
	}
	k.CreatedAt, k.LastUsedAt, k.ExpiresAt = fromNull(created), fromNull(used), fromNull(expires)
	return k, nil
}

// ListAPIKeys implements store.APIKeys.
func (s *Store) ListAPIKeys() ([]store.APIKey, error) {
	c, cancel := ctx()
	defer cancel()
	rows, err := s.pool.Query(c, `SELECT `+apiKeyColumns+` FROM api_keys ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("api keys: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.APIKey, error) { return scanAPIKey(row) })
	if err != nil {
		return nil, fmt.Errorf("api keys: %w", err)
	}
	return out, nil
}

// APIKeyByHash implements store.APIKeys.
func (s *Store) APIKeyByHash(hash [32]byte) (store.APIKey, error) {
	c, cancel := ctx()
	defer cancel()
	k, err := scanAPIKey(s.pool.QueryRow(c, `SELECT `+apiKeyColumns+` FROM api_keys WHERE secret_sha256 = $1`, hash[:]))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.APIKey{}, fmt.Errorf("api key: %w", store.ErrNotFound)
	}
	if err != nil {
		return store.APIKey{}, fmt.Errorf("api key: %w", err)
	}
	return k, nil
}

// DeleteAPIKey implements store.APIKeys.
func (s *Store) DeleteAPIKey(id string) ([32]byte, error) {
	c, cancel := ctx()
	defer cancel()
	var hash [32]byte
	var b []byte
	err := s.pool.QueryRow(c, `DELETE FROM api_keys WHERE id = $1 RETURNING secret_sha256`, id).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
		return hash, fmt.Errorf("api key %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return hash, fmt.Errorf("api key %s: %w", id, err)
	}
	copy(hash[:], b)
	return hash, nil
}

// TouchAPIKey implements store.APIKeys: an UPDATE of a revoked key's row
// finds none.
func (s *Store) TouchAPIKey(hash [32]byte, at time.Time) error {
	return s.exec("api key", `UPDATE api_keys SET last_used_at = $2 WHERE secret_sha256 = $1`, hash[:], at.UTC())
}

func (s *Store) exec(what, sql string, args ...any) error {
	c, cancel := ctx()
	defer cancel()
	if _, err := s.pool.Exec(c, sql, args...); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func (s *Store) strings(what, sql string, args ...any) ([]string, error) {
	c, cancel := ctx()
	defer cancel()
	rows, err := s.pool.Query(c, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// toNull is t for a timestamptz, NULL for the zero time.
func toNull(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC()
}

func fromNull(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// marshalMap is m as a JSON object, {} for nil.
func marshalMap(m map[string]string) ([]byte, error) {
	if len(m) == 0 {
		return []byte("{}"), nil
	}
	return json.Marshal(m)
}

// unmarshal decodes JSON into v, leaving v nil for an empty object or
// array, as the embedded store's omitempty records read back.
func unmarshal[T any](b []byte, v *T) error {
	if err := json.Unmarshal(b, v); err != nil {
		return err
	}
	switch x := any(v).(type) {
	case *map[string]string:
		if len(*x) == 0 {
			*x = nil
		}
	case *[]store.Artifact:
		if len(*x) == 0 {
			*x = nil
		}
	}
	return nil
}
