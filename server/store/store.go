// Package store is the server's durable state behind one narrow interface:
// steps and their queue, workers, trust, users, API keys. The server speaks
// only to Store; each backend lives in a package of its own (boltstore, the
// embedded default; pgstore, on PostgreSQL), so that the server's package
// does not import any database driver and a backend's tests need no server.
//
// The interface has the operations the server needs, not a key-value API:
// each method is one transaction in the backend, so a SQL backend maps it
// to one statement or one BEGIN … COMMIT (UpdateStep to SELECT … FOR
// UPDATE), and the atomicity the server relies on is written here, method
// by method, rather than in the server's callers.
//
// Sealing stays above the interface: the server seals a step's request and
// its sensitive output variables with the master key before they reach the
// store (StepRecord.Sealed, StepRecord.SealedOutputs), so every backend
// keeps them sealed with no sealing code of its own, and a backend never
// holds, logs or indexes a secret in the clear. Users' passwords arrive as
// PBKDF2 hashes and API keys as SHA-256 hashes of their secrets.
//
// Errors are classified with the sentinels below; test with errors.Is.
//
// Times are kept to the microsecond (PostgreSQL's resolution), the zero
// time as none; a record's nil and empty maps and slices read back nil.
//
// A SQL backend keeps the same promises with its own schema: the queue is
// an index on the queued steps' IDs, CancelRequested a column read without
// the record, the submission keys a table whose rows go with their step;
// its migrations are versioned, run in Open, and a database of a newer
// version is refused with ErrSchemaTooNew, as boltstore does.
//
// Several server nodes may share one database (a Store that is also a
// Watcher). Which node drives a step is decided through UpdateStep alone:
// a node claims a queued step, or takes over a running one whose lease ran
// out, with an fn that checks the state it read under the row's lock, and
// every later write of its driver checks that the step is still its own
// (StepRecord.Node), so no two nodes drive a step at once.
package store

import (
	"context"
	"errors"
	"io"
	"time"
)

// Errors of the stores; backends wrap them with %w and the record's name.
var (
	// ErrNotFound: no record has that ID or name.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a record with that ID or unique name exists.
	ErrConflict = errors.New("already exists")
	// ErrSchemaTooNew: the database was written by a newer server, whose
	// schema this one does not know; it refuses to open it rather than
	// misread it.
	ErrSchemaTooNew = errors.New("the database's schema is newer than this server knows")
	// ErrUnsupported: the backend cannot do this (Backup on a database
	// server, whose own tools take backups).
	ErrUnsupported = errors.ErrUnsupported
)

// Step states on the server.
const (
	StateQueued   = "queued"
	StateRunning  = "running"
	StateComplete = "complete"
)

// Store is the server's durable state. Every method is safe for concurrent
// use and is one transaction: it is done whole or not at all.
type Store interface {
	Steps
	Workers
	Trust
	Users
	APIKeys

	// KeepSetting stores value under name unless one is stored there
	// already, and returns the one stored: the first writer's, whichever
	// node it was, so that nodes starting at once agree. The values are
	// the server's own (its identity, which the server seals first).
	KeepSetting(name string, value []byte) ([]byte, error)

	// TakeLease gives holder the lease name until until, when nobody else
	// holds it at now (its holder's until is past) or holder holds it
	// already, and reports whether holder holds it now. One node at a time
	// holds a name.
	TakeLease(name, holder string, now, until time.Time) (bool, error)
	// DropLease ends holder's lease name, if it holds it. Idempotent.
	DropLease(name, holder string) error

	// Backup writes a consistent copy of the whole state to w while the
	// server runs, in the backend's own format (bbolt: the database file,
	// which is restored by putting it in a data dir as server.db), and
	// returns the bytes written. A backend whose database has backup
	// tools of its own (pg_dump) returns ErrUnsupported.
	Backup(w io.Writer) (int64, error)
	// Close releases the database; the store is not used after.
	Close() error
}

// Watcher is a Store shared by several server nodes that tells each of
// them about every change of a step, whichever node made it.
type Watcher interface {
	// Watch sends each step created or changed from now on, by any node,
	// until ctx ends; then it closes the channel. The zero Change says
	// that changes may have been missed (the link to the database was
	// lost and is back, or the receiver was too slow to take them): the
	// receiver looks at everything again. It never blocks the database.
	Watch(ctx context.Context) <-chan Change
}

// Change is a step's change seen by a Watcher: its ID, its new state, and
// whether its cancel is asked for (which its driver acts on).
type Change struct {
	ID, State       string
	CancelRequested bool
}

// Steps are the step records and the queue, which is the queued steps in
// the order of their IDs (the server's IDs sort by submission time).
type Steps interface {
	// CreateStep stores a new step. With a non-empty key (the client's
	// submission key) it is idempotent: when a step was created with the
	// key before, that step is returned with created false and nothing
	// is written, so a submission retried after a lost reply runs once.
	// The lookup of the key and the creation are one transaction.
	// ErrConflict when a step has rec.ID; ErrNotFound when the key names
	// a step that is gone.
	CreateStep(rec StepRecord, key string) (_ StepRecord, created bool, _ error)
	// Step returns the record of id; ErrNotFound when there is none.
	Step(id string) (StepRecord, error)
	// ListSteps returns the steps in state ("" for every state), oldest
	// (lowest ID) first. For StateQueued it reads the queue, not every
	// step kept.
	ListSteps(state string) ([]StepRecord, error)
	// UpdateStep reads step id, lets fn change it, and writes it back, in
	// one transaction that holds the step against other writers (bbolt:
	// the one writer; SQL: SELECT … FOR UPDATE), so concurrent updates do
	// not lose one another's changes. When fn returns an error nothing is
	// written and UpdateStep returns that error, unwrapped. fn may be
	// called more than once (a SQL backend retries a serialization
	// failure), so it must change nothing but the record. fn cannot change
	// the ID, nor clear CancelRequested: once asked for, a cancel stays
	// asked for, whatever older copy of the record a driver writes back.
	// Returns the record as written; ErrNotFound when there is none.
	UpdateStep(id string, fn func(*StepRecord) error) (StepRecord, error)
	// CancelRequested says whether a cancel of step id was asked for; it
	// decodes no record, for the drivers check it often. False, not an
	// error, for a step that is not kept.
	CancelRequested(id string) (bool, error)
	// CountQueued counts the queued steps, without reading them.
	CountQueued() (int, error)
	// DeleteSteps removes the steps ids, with their place in the queue,
	// their cancel flags and the submission keys that name them, in one
	// transaction. IDs not kept are ignored: it is idempotent.
	DeleteSteps(ids []string) error

	// Abandon notes that step id, ended LOST while its worker was away,
	// may still be on that worker, to be collected when it comes back.
	// Idempotent.
	Abandon(id, worker string) error
	// AbandonedOn lists the abandoned steps of worker.
	AbandonedOn(worker string) ([]string, error)
	// ForgetAbandoned drops step id from the abandoned ones. Idempotent.
	ForgetAbandoned(id string) error
}

// Workers are the workers the server knows, and when each went away.
type Workers interface {
	// PutWorker creates or replaces the worker rec.Name.
	PutWorker(rec WorkerRecord) error
	// ListWorkers returns every worker, by name.
	ListWorkers() ([]WorkerRecord, error)
	// DeleteWorker forgets worker name and when it went away. Idempotent.
	DeleteWorker(name string) error
	// SetWorkerLeft records when worker name went away; the zero time
	// records that it is back. Idempotent.
	SetWorkerLeft(name string, at time.Time) error
	// WorkerLeft is when worker name went away; the zero time when it is
	// not recorded as away.
	WorkerLeft(name string) (time.Time, error)
}

// Trust is the agent thumbprints admitted through the API (those given in
// the configuration are not stored).
type Trust interface {
	// ListTrusted returns the stored thumbprints, sorted.
	ListTrusted() ([]string, error)
	// AddTrusted stores a thumbprint. Idempotent.
	AddTrusted(thumbprint string) error
	// RemoveTrusted removes a thumbprint. Idempotent.
	RemoveTrusted(thumbprint string) error
}

// Users are the API's users with passwords (today only the admin).
type Users interface {
	// HasUsers says whether any user is stored.
	HasUsers() (bool, error)
	// CreateUser stores a user; ErrConflict when the name is taken.
	CreateUser(name string, c Credential) error
	// User returns a user's credential and email; ErrNotFound when there
	// is none.
	User(name string) (Credential, error)
}

// APIKeys are the API keys, found by the SHA-256 of their secrets.
type APIKeys interface {
	// CreateAPIKey stores key k under hash. Names are unique: the check
	// and the write are one transaction, ErrConflict when k.Name is taken.
	CreateAPIKey(hash [32]byte, k APIKey) error
	// ListAPIKeys returns the keys, oldest first.
	ListAPIKeys() ([]APIKey, error)
	// APIKeyByHash returns the key whose secret has hash; ErrNotFound when
	// there is none (never was, or revoked).
	APIKeyByHash(hash [32]byte) (APIKey, error)
	// DeleteAPIKey removes key id and returns its hash; ErrNotFound when
	// there is none.
	DeleteAPIKey(id string) ([32]byte, error)
	// TouchAPIKey records the key's last use at at. A key revoked
	// meanwhile is not brought back: then it does nothing.
	TouchAPIKey(hash [32]byte, at time.Time) error
}

// StepRecord is the server's durable record of a step.
type StepRecord struct {
	ID     string `json:"id"`
	Worker string `json:"worker,omitempty"` // asked for
	Pool   string `json:"pool,omitempty"`   // or any worker of this pool
	// Labels a worker must all have to take the step.
	Labels map[string]string `json:"labels,omitempty"`
	// QueueDeadline is when a step still queued ends TIMED_OUT; zero: never.
	QueueDeadline time.Time `json:"queue_deadline,omitzero"`
	// SubmittedBy is who submitted it: the admin's username, or "key:NAME".
	SubmittedBy string `json:"submitted_by,omitempty"`
	// SubmitterKey is the ID of the API key that submitted it: the one
	// that may cancel it, besides an admin.
	SubmitterKey string `json:"submitter_key,omitempty"`
	// Image is a container step's image; such a step goes only to a
	// worker whose Docker Engine is available.
	Image string `json:"image,omitempty"`
	// Sealed is the StartStepRequest, encrypted with the master key: it
	// may hold sensitive values and registry passwords.
	Sealed   []byte `json:"sealed,omitempty"`
	State    string `json:"state"`
	Assigned string `json:"assigned,omitempty"` // the worker running it
	// Node is the server node driving a running step, and LeaseUntil when
	// its hold on the step runs out unless renewed: then another node may
	// take the step over (several nodes on one database).
	Node       string    `json:"node,omitempty"`
	LeaseUntil time.Time `json:"lease_until,omitzero"`
	// Cursor is the last sequence stored in the task log.
	Cursor uint64 `json:"cursor"`
	// CancelRequested: the step is to be cancelled on its worker.
	CancelRequested bool   `json:"cancel_requested,omitempty"`
	Outcome         string `json:"outcome,omitempty"`
	ExitCode        *int32 `json:"exit_code,omitempty"`
	Signal          string `json:"signal,omitempty"`
	Reason          string `json:"reason,omitempty"`
	// OutputVariables has every output variable, a sensitive one's value
	// masked: the server's Outputs opens them.
	OutputVariables map[string]string `json:"output_variables,omitempty"`
	// SensitiveOutputs names the sensitive output variables, sorted.
	SensitiveOutputs []string `json:"sensitive_outputs,omitempty"`
	// SealedOutputs is the JSON of the sensitive ones' names and values,
	// encrypted with the master key.
	SealedOutputs []byte     `json:"sealed_outputs,omitempty"`
	Artifacts     []Artifact `json:"artifacts,omitempty"`
	CreatedAt     time.Time  `json:"created_at"`
	StartedAt     time.Time  `json:"started_at,omitzero"`
	FinishedAt    time.Time  `json:"finished_at,omitzero"`
}

// Artifact is a step's artifact, downloaded into the artifacts directory.
type Artifact struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	File   string `json:"file"`
	Size   int64  `json:"size_bytes"`
	SHA256 string `json:"sha256"`
}

// WorkerRecord is a worker the server knows.
type WorkerRecord struct {
	Name       string `json:"name"`
	Thumbprint string `json:"thumbprint"`
	// Address is a listening worker's; empty for a polling one.
	Address string            `json:"address,omitempty"`
	Pools   []string          `json:"pools,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
}

// Credential is a user's stored record: the password, as PBKDF2-HMAC-SHA256
// of it, and the user's email address.
type Credential struct {
	Salt       []byte `json:"salt"`
	Hash       []byte `json:"hash"`
	Iterations int    `json:"iterations"`
	// Email is the user's address (ADMIN_EMAIL for the admin); "" for
	// none, as every user created before it was kept reads back.
	Email string `json:"email,omitempty"`
}

// APIKey is an API key's record: never its secret.
type APIKey struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Role       string    `json:"role"`
	CreatedAt  time.Time `json:"created_at"`
	LastUsedAt time.Time `json:"last_used_at,omitzero"`
	// ExpiresAt is when the key stops working; zero: never.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}
