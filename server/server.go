// Package server is stevedore's reference server: it admits polling
// workers by thumbprint, queues steps durably, dispatches them to workers
// with free slots, and drives each step on its worker, storing every log
// line in a task log before it moves the step's cursor, so that a restarted
// server resumes every step with no line lost and none twice.
package server

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"

	"stevedore/internal/seal"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/server/store"
	"stevedore/server/store/boltstore"
	"stevedore/transport"
)

// Directories under the data dir; the server's container image mounts the
// first two at /taskLogs and /artifacts.
const (
	TaskLogsDir  = "taskLogs"
	ArtifactsDir = "artifacts"
	dbFile       = "server.db"
)

// Step states on the server.
const (
	StateQueued   = store.StateQueued
	StateRunning  = store.StateRunning
	StateComplete = store.StateComplete
)

// Errors of Submit; test with errors.Is.
var (
	ErrNoTarget      = errors.New("a step needs a worker or a pool")
	ErrUnknownWorker = errors.New("unknown worker")
	ErrUnknownStep   = errors.New("unknown step")
	ErrStepComplete  = errors.New("the step has completed")
	// errStateChanged: a step's record changed state under a read-modify-write.
	errStateChanged = errors.New("the step changed state meanwhile")
)

// The server's records are the store's: one type on both sides of the
// interface, so nothing is copied field by field.
type (
	// StepRecord is the server's durable record of a step.
	StepRecord = store.StepRecord
	// Artifact is a step's artifact, downloaded into the artifacts directory.
	Artifact = store.Artifact
	// WorkerRecord is a worker the server knows.
	WorkerRecord = store.WorkerRecord
)

// Config configures a Server.
type Config struct {
	DataDir  string
	Identity *transport.Identity
	// Trust admits polling agents by thumbprint.
	Trust     *transport.TrustList
	MasterKey string
	// RegistrationToken, when set, lets an agent trust its own thumbprint
	// (POST /api/trust with "Authorization: Bearer TOKEN") and nothing
	// else: pools of identical cloud workers join without the admin's
	// credentials on each.
	RegistrationToken string
	// AdminUsername and AdminPassword (ADMIN_USERNAME, ADMIN_PASSWORD)
	// create the API's admin credentials on the first start.
	AdminUsername, AdminPassword string
	// AdminEmail (ADMIN_EMAIL) is the admin's address, stored with those
	// credentials on the first start: a bare address such as
	// admin@example.com, or "" for none. New refuses a malformed one with
	// ErrBadEmail, at every start, so that a typo is not kept silently.
	AdminEmail string
	// Retention is how long a completed step's record, task log and
	// artifacts are kept; 0 keeps them for ever.
	Retention time.Duration
	// MaxStorage bounds the bytes that completed steps' task logs and
	// artifacts take: beyond it the steps that completed first are
	// removed. 0: no bound.
	MaxStorage int64
	// WorkerLostAfter is how long a step waits for its worker to come
	// back (a cloud worker scaled in without a drain never does): then a
	// step never sent is queued again and a sent one ends LOST. 0: for ever.
	WorkerLostAfter time.Duration
	// QueueTimeout is how long a step waits in the queue for a worker when
	// its submission does not say; then it ends TIMED_OUT. 0: for ever.
	QueueTimeout time.Duration
	// TaskLogsDir and ArtifactsDir default to directories in DataDir.
	TaskLogsDir, ArtifactsDir string
	// Node names this server among the nodes sharing one database
	// (NODE_NAME); it defaults to the host's name. Nodes on one database
	// must have names of their own.
	Node string
	// StepLease is how long a node's hold on a running step lasts unless
	// renewed (a third of it apart): the longest a step waits for another
	// node after its node dies. 0: DefaultStepLease. Only a shared store
	// (PostgreSQL) keeps leases.
	StepLease time.Duration
	// OpenStore opens the server's state; nil opens the bbolt file
	// DATA_DIR/server.db. New calls it once; Close closes what it opened.
	OpenStore func() (store.Store, error)
	Logger    hclog.Logger
}

// Server is the reference server.
type Server struct {
	cfg  Config
	log  hclog.Logger
	db   store.Store
	keys *seal.Box
	auth authCache
	// web holds the web page's sessions (web.go).
	web webSessions

	ctx    context.Context
	cancel context.CancelFunc
	wake   chan struct{}
	// dispatchMu orders this node's dispatches; the store's claims
	// order them against other nodes' and against a cancel.
	dispatchMu sync.Mutex
	// shared: other server nodes may use the store (nodes.go).
	shared    bool
	leaseWake chan struct{}

	mu      sync.Mutex
	workers map[string]*worker // by name
	changed map[string]chan struct{}
	cancels map[string]chan struct{}
	// driving holds the steps this node's drivers drive (nodes.go).
	driving map[string]*hold
	// stored: the thumbprints trusted through the API, as last read from
	// the store (trust.go).
	stored map[string]bool
	// listening: the listening workers kept (listening.go), by name.
	listening map[string]bool
	// waiting says why each queued step is not dispatched yet.
	waiting map[string]string
	conns   map[*transport.PollingConn]bool

	metrics *serverMetrics
}

// New opens the server's state and resumes the steps that were running.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Trust == nil {
		cfg.Trust, _ = transport.NewTrustList()
	}
	if err := checkEmail(cfg.AdminEmail); err != nil {
		return nil, fmt.Errorf("admin email (ADMIN_EMAIL): %w", err)
	}
	if cfg.TaskLogsDir == "" {
		cfg.TaskLogsDir = filepath.Join(cfg.DataDir, TaskLogsDir)
	}
	if cfg.ArtifactsDir == "" {
		cfg.ArtifactsDir = filepath.Join(cfg.DataDir, ArtifactsDir)
	}
	for _, d := range []string{cfg.DataDir, cfg.TaskLogsDir, cfg.ArtifactsDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("data dir: %w", err)
		}
	}
	keys, err := seal.LoadMasterKey(cfg.MasterKey, cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if cfg.Node == "" {
		cfg.Node = nodeName()
	}
	if cfg.StepLease <= 0 {
		cfg.StepLease = DefaultStepLease
	}
	if cfg.OpenStore == nil {
		path := filepath.Join(cfg.DataDir, dbFile)
		cfg.OpenStore = func() (store.Store, error) { return boltstore.Open(path) }
	}
	db, err := cfg.OpenStore()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{cfg: cfg, log: cfg.Logger.Named("server"), db: db, keys: keys, ctx: ctx, cancel: cancel,
		wake: make(chan struct{}, 1), workers: map[string]*worker{}, changed: map[string]chan struct{}{}, cancels: map[string]chan struct{}{}, waiting: map[string]string{},
		conns: map[*transport.PollingConn]bool{}, driving: map[string]*hold{}, stored: map[string]bool{}, listening: map[string]bool{}, leaseWake: make(chan struct{}, 1)}
	s.log = s.log.With("node", cfg.Node)
	watcher, shared := db.(store.Watcher)
	s.shared = shared
	s.metrics = newServerMetrics(s)
	if err := s.ensureAdmin(cfg.AdminUsername, cfg.AdminPassword, cfg.AdminEmail); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.loadTrust(); err != nil {
		db.Close()
		return nil, err
	}
	if cfg.Identity != nil {
		id, err := s.KeepIdentity("server", cfg.Identity)
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("identity: %w", err)
		}
		if id.Thumbprint != cfg.Identity.Thumbprint {
			s.log.Info("presenting the identity kept in the database, not the data dir's", "thumbprint", id.Thumbprint, "data_dir_thumbprint", cfg.Identity.Thumbprint)
		}
		s.cfg.Identity = id
	}
	workers, err := db.ListWorkers()
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("workers: %w", err)
	}
	for _, rec := range workers {
		w := newWorker(rec)
		if left, ok := s.leftAt(rec.Name); ok {
			w.downSince = left
		}
		s.workers[rec.Name] = w
		if rec.Address != "" {
			s.listen(w)
		}
	}
	if shared {
		// Steps are taken over as their leases allow, this node's own
		// from an earlier process at once.
		go s.watch(watcher)
		go s.keepLeases()
	} else {
		// One node: the steps that were running are driven on from their
		// cursors, whichever process drove them.
		for _, rec := range s.steps(StateRunning) {
			if rec.Node != cfg.Node { // an earlier process of another name (a new container)
				mine, err := s.db.UpdateStep(rec.ID, func(cur *StepRecord) error {
					cur.Node = cfg.Node
					return nil
				})
				if err != nil {
					s.log.Error("cannot resume a step", "step", rec.ID, "error", err)
					continue
				}
				rec = mine
			}
			w := s.workers[rec.Assigned]
			if w != nil {
				w.inflight++
			}
			ctx, h, _ := s.tryHold(rec.ID) // nothing else runs yet
			s.startDriving(ctx, h, rec, w, true)
		}
	}
	go s.dispatchLoop()
	if cfg.Retention > 0 || cfg.MaxStorage > 0 {
		go s.keepRetention()
	}
	return s, nil
}

// Close stops the server's work; steps go on on their workers and are
// resumed by the next server process.
func (s *Server) Close() error {
	s.cancel()
	s.mu.Lock()
	for pc := range s.conns {
		pc.Client.Close()
	}
	s.mu.Unlock()
	return s.db.Close()
}

// ServePolling accepts polling agents on lis until it is closed.
func (s *Server) ServePolling(lis net.Listener) error {
	for {
		raw, err := lis.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go func() {
			pc, err := transport.AcceptPolling(s.ctx, raw, s.cfg.Identity, s.cfg.Trust, s.log.Named("polling"))
			if err != nil {
				s.log.Debug("polling connection refused", "remote", raw.RemoteAddr().String(), "error", err)
				return
			}
			s.mu.Lock()
			if s.ctx.Err() != nil {
				s.mu.Unlock()
				pc.Client.Close()
				return
			}
			s.conns[pc] = true
			s.mu.Unlock()
			go func() {
				<-pc.Done
				s.mu.Lock()
				delete(s.conns, pc)
				s.mu.Unlock()
			}()
			s.admit(pc)
		}()
	}
}

// SubmitRequest asks for a step to run on a worker or in a pool.
type SubmitRequest struct {
	Worker string
	Pool   string
	// Labels narrow the pool: only a worker with every one of them (its
	// agent's --label K=V) takes the step.
	Labels map[string]string
	// QueueTimeout ends the step TIMED_OUT if no worker takes it within
	// this long; 0: Config.QueueTimeout.
	QueueTimeout time.Duration
	Step         *pb.StartStepRequest
	// Key, when set, makes the submission idempotent: a second submission
	// with the same key returns the first one's step.
	Key string
	// SubmittedBy is recorded in the step (StepRecord.SubmittedBy), and
	// SubmitterKey, the submitting API key's ID, if any.
	SubmittedBy, SubmitterKey string
}

// Submit records a step durably and queues it. The step's ticket on the
// agent is its ID.
func (s *Server) Submit(req SubmitRequest) (StepRecord, error) {
	if req.Worker == "" && req.Pool == "" {
		return StepRecord{}, ErrNoTarget
	}
	if req.Step == nil {
		return StepRecord{}, errors.New("no step")
	}
	id := newID()
	step := proto.Clone(req.Step).(*pb.StartStepRequest)
	step.Ticket = id
	plain, err := proto.Marshal(step)
	if err != nil {
		return StepRecord{}, err
	}
	sealed, err := s.keys.Seal(plain)
	if err != nil {
		return StepRecord{}, err
	}
	now := time.Now().UTC()
	var deadline time.Time
	if wait := cmp.Or(req.QueueTimeout, s.cfg.QueueTimeout); wait > 0 {
		deadline = now.Add(wait)
	}
	rec := StepRecord{ID: id, Worker: req.Worker, Pool: req.Pool, Labels: req.Labels, QueueDeadline: deadline, SubmittedBy: req.SubmittedBy, SubmitterKey: req.SubmitterKey, Image: step.GetExecution().GetContainer().GetImage(),
		Sealed: sealed, State: StateQueued, CreatedAt: now}
	rec, created, err := s.db.CreateStep(rec, req.Key)
	if errors.Is(err, store.ErrNotFound) {
		return StepRecord{}, fmt.Errorf("%w: submission key %q: %w", ErrUnknownStep, req.Key, err)
	}
	if err != nil {
		return StepRecord{}, err
	}
	if !created {
		return rec, nil
	}
	s.log.Info("step queued", "step", id, "worker", req.Worker, "pool", req.Pool, "submitted_by", req.SubmittedBy)
	s.metrics.submitted.Inc()
	s.kick()
	return rec, nil
}

// Cancel cancels a step: a queued one at once, a running one on its worker
// (TERM, the step's grace period, then KILL; the driver follows it to its
// end). Idempotent; ErrStepComplete when it had already ended.
func (s *Server) Cancel(id string) (StepRecord, error) {
	s.dispatchMu.Lock()
	defer s.dispatchMu.Unlock()
	for {
		rec, ok := s.Step(id)
		switch {
		case !ok:
			return rec, fmt.Errorf("%w: %s", ErrUnknownStep, id)
		case rec.State == StateComplete:
			return rec, ErrStepComplete
		case rec.State == StateQueued:
			_, err := s.endQueued(id, true, "CANCELLED", "cancelled before it was dispatched")
			if errors.Is(err, errStateChanged) {
				continue // dispatched since it was read: cancel it on its worker
			}
			if err != nil {
				return rec, err
			}
		default:
			err := s.markCancel(id)
			if errors.Is(err, errStateChanged) {
				continue // ended or queued again since it was read: look again
			}
			if err != nil {
				return rec, err
			}
			s.log.Info("step cancel requested", "step", id, "worker", rec.Assigned, "driven_by", rec.Node)
			s.signalCancel(id) // a driver on another node hears it through the store's Watch
		}
		rec, _ = s.Step(id)
		return rec, nil
	}
}

// markCancel records a running step's cancel request, only if it still
// runs: its driver may have ended it, or queued it again, since it was
// read, and that record must not be undone (errStateChanged).
func (s *Server) markCancel(id string) error {
	_, err := s.db.UpdateStep(id, func(cur *StepRecord) error {
		if cur.State != StateRunning {
			return errStateChanged
		}
		cur.CancelRequested = true
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return errStateChanged
	}
	if err == nil {
		s.notify(id)
	}
	return err
}

// cancelSignal returns a channel closed when a cancel of step id is
// requested from now on.
func (s *Server) cancelSignal(id string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := s.cancels[id]
	if ch == nil {
		ch = make(chan struct{})
		s.cancels[id] = ch
	}
	return ch
}

// newID is time-ordered (the queue's order) and unique.
func newID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("s%016x%s", time.Now().UnixNano(), hex.EncodeToString(b))
}

// Step returns the record of id.
func (s *Server) Step(id string) (StepRecord, bool) {
	rec, err := s.db.Step(id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		s.log.Warn("cannot read a step", "step", id, "error", err)
	}
	return rec, err == nil
}

// queued returns the queued steps, oldest first.
func (s *Server) queued() []StepRecord {
	return s.steps(StateQueued)
}

// Steps returns every step, oldest first.
func (s *Server) Steps() []StepRecord {
	return s.steps("")
}

// steps returns the steps in state ("": all), oldest first; none when the
// store cannot be read, which is logged.
func (s *Server) steps(state string) []StepRecord {
	out, err := s.db.ListSteps(state)
	if err != nil {
		s.log.Warn("cannot list steps", "state", state, "error", err)
	}
	return out
}

// TaskLogPath is the task log file of a step.
func (s *Server) TaskLogPath(id string) string {
	return filepath.Join(s.cfg.TaskLogsDir, id+".log")
}

// Log returns up to max task log lines of step id after sequence after,
// waiting up to wait for one to arrive or the step to complete.
func (s *Server) Log(ctx context.Context, id string, after uint64, max int, wait time.Duration) ([]LogEntry, StepRecord, error) {
	deadline := time.Now().Add(wait)
	for {
		ch := s.changes(id)
		rec, ok := s.Step(id)
		if !ok {
			return nil, rec, fmt.Errorf("%w: %s", ErrUnknownStep, id)
		}
		lines, err := readTaskLog(s.TaskLogPath(id), after, max)
		if err != nil || len(lines) > 0 || rec.State == StateComplete || time.Now().After(deadline) {
			return lines, rec, err
		}
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, rec, ctx.Err()
		}
		t.Stop()
	}
}

// changes returns a channel closed at the next change of step id.
func (s *Server) changes(id string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := s.changed[id]
	if ch == nil {
		ch = make(chan struct{})
		s.changed[id] = ch
	}
	return ch
}

func (s *Server) notify(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch := s.changed[id]; ch != nil {
		close(ch)
		delete(s.changed, id)
	}
}

// putStep writes rec, a driver's copy of its step, over the stored one,
// only while the step is running and this node's (errLeaseLost, and
// nothing written, when it is not). A cancel request is sticky in the
// store: a copy older than the request does not undo it; nor does it move
// back a lease renewed since the copy was read.
func (s *Server) putStep(rec StepRecord) error {
	_, err := s.db.UpdateStep(rec.ID, func(cur *StepRecord) error {
		if cur.State != StateRunning || cur.Node != s.cfg.Node {
			return errLeaseLost
		}
		lease := cur.LeaseUntil
		*cur = rec
		cur.Node = s.cfg.Node
		if rec.State == StateQueued {
			cur.Node = "" // back to the queue: any node's to claim
		}
		switch {
		case rec.State != StateRunning:
			cur.LeaseUntil = time.Time{}
		case lease.After(rec.LeaseUntil):
			cur.LeaseUntil = lease
		}
		return nil
	})
	s.notify(rec.ID)
	return err
}

// endQueued ends step id with outcome if it is still queued; a step that
// is not (a node dispatched it meanwhile) is errStateChanged.
func (s *Server) endQueued(id string, cancel bool, outcome, reason string) (StepRecord, error) {
	rec, err := s.db.UpdateStep(id, func(cur *StepRecord) error {
		if cur.State != StateQueued {
			return errStateChanged
		}
		cur.CancelRequested = cur.CancelRequested || cancel
		cur.State, cur.Outcome, cur.Reason, cur.FinishedAt = StateComplete, outcome, reason, time.Now().UTC()
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return rec, errStateChanged
	}
	if err == nil {
		s.mu.Lock()
		delete(s.waiting, id)
		s.mu.Unlock()
		s.ended(rec)
	}
	s.notify(id)
	return rec, err
}

// Workers lists the workers, by name.
func (s *Server) Workers() []WorkerStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]WorkerStatus, 0, len(s.workers))
	for _, w := range s.workers {
		out = append(out, w.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (s *Server) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}
