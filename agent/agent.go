// Package agent is the stevedore daemon: the Agent gRPC service over a
// durable step journal, concurrency slots, and the executors that run steps.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"stevedore/executor"
	"stevedore/internal/engine"
	"stevedore/internal/stepspec"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/registry"
	"stevedore/transport"
)

// Config is an agent's configuration.
type Config struct {
	StateDir string
	// Bundle is the tool bundle mounted into containers and run on the host.
	Bundle *executor.Bundle
	// MaxSteps bounds concurrently running steps; more wait in order.
	MaxSteps int
	// DefaultGrace is the cancel grace period when a step names none.
	DefaultGrace time.Duration
	// MasterKey is MASTER_KEY (base64 of 16 bytes); empty: a key file in StateDir.
	MasterKey string
	Name      string
	Pools     []string
	Labels    map[string]string
	Identity  *transport.Identity
	Logger    hclog.Logger
	// Images configures pulls, pre-pulls and the image cache.
	Images ImagesConfig
	// Credentials resolves feeds and Docker's own credential config; nil:
	// inline credentials only.
	Credentials CredentialResolver
	// MinFreeDisk is the free space (bytes) StateDir must have for StartStep
	// to accept a new step; 0: DefaultMinFreeDisk, below 0: no check.
	MinFreeDisk int64
	// MaxLogSize bounds the bytes of a step's own output kept in its log,
	// so that a runaway step cannot fill the worker's disk (or the
	// server's); past it the output is counted, and the log says so.
	// 0: no bound.
	MaxLogSize int64
	// Retention is how long a completed step the server never collected
	// (CompleteStep) keeps its container and workspace, and how long a
	// collected step's tombstone answers a repeated call; default 24 h.
	Retention time.Duration
	// ReapInterval is how often the reaper runs after the one at start-up;
	// default 10 min.
	ReapInterval time.Duration
}

// CredentialResolver finds the credentials for an image (registry.Resolver).
type CredentialResolver interface {
	Resolve(ctx context.Context, image, feed string, inline *registry.Credentials) (registry.Credentials, string, error)
	Feed(name string) (registry.Feed, bool)
}

// ImagesConfig is the image part of the agent's configuration.
type ImagesConfig struct {
	AllowedImages []string
	PullTimeout   time.Duration
	StallTimeout  time.Duration
	Retries       int
	// Refresh is how often pre-pulled images are checked for a moved tag.
	Refresh time.Duration
	Prepull []registry.PrepullImage
	GC      registry.GCOptions
	// GCInterval is how often the cache is collected (besides after pulls).
	GCInterval time.Duration
}

// Agent serves the stevedore.v1.Agent service.
type Agent struct {
	pb.UnimplementedAgentServer

	cfg     Config
	log     hclog.Logger
	journal *journal
	keys    *sealer
	slots   *slots
	host    *executor.Host
	probes  *executor.ProbeCache
	images  *registry.Store

	// isolation is the named reader/writer mutexes of StartStepRequest.isolation.
	isolation *isolation
	metrics   *metrics

	// ctx ends when the agent shuts down.
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	steps map[string]*step
	// refusing, when set, is why StartStep refuses new tickets (draining
	// or shutting down).
	refusing string

	dockerMu   sync.Mutex
	docker     *executor.Docker
	coord      *registry.Coordinator
	dockerInfo engine.Info
	dockerErr  error
}

// stepsDir holds one directory per step.
const stepsDir = "steps"

// bundlesDir holds the staged copies of the tool bundle.
const bundlesDir = "bundles"

// New opens the agent's state (journal, master key) and resumes the steps
// the journal holds that had not completed.
func New(cfg Config) (*Agent, error) {
	if cfg.MaxSteps <= 0 {
		cfg.MaxSteps = 4
	}
	if cfg.DefaultGrace <= 0 {
		cfg.DefaultGrace = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Retention <= 0 {
		cfg.Retention = 24 * time.Hour
	}
	if cfg.ReapInterval <= 0 {
		cfg.ReapInterval = 10 * time.Minute
	}
	if cfg.Identity == nil || cfg.Bundle == nil {
		return nil, errors.New("agent: an identity and a bundle are required")
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, stepsDir), 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	// Steps mount and run a copy in the state dir (executor.StageBundle).
	staged, err := executor.StageBundle(cfg.Bundle, filepath.Join(cfg.StateDir, bundlesDir), 7*24*time.Hour)
	if err != nil {
		return nil, err
	}
	cfg.Bundle = staged
	keys, err := loadMasterKey(cfg.MasterKey, cfg.StateDir)
	if err != nil {
		return nil, err
	}
	j, err := openJournal(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	store, err := registry.OpenStore(cfg.StateDir)
	if err != nil {
		j.close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	log := cfg.Logger.Named("agent")
	a := &Agent{
		cfg: cfg, log: log, journal: j, keys: keys,
		slots:  newSlots(cfg.MaxSteps),
		host:   executor.NewHost(cfg.Bundle, log),
		probes: executor.NewProbeCache(),
		images: store,
		ctx:    ctx, cancel: cancel,
		steps: map[string]*step{},

		isolation: newIsolation(),
	}
	a.metrics = newMetrics(a)
	if _, err := a.dockerExecutor(ctx); err != nil {
		log.Warn("no Docker Engine: container steps fail until one answers; host steps run", "error", err)
	}
	if err := a.resume(); err != nil {
		j.close()
		store.Close()
		cancel()
		return nil, err
	}
	go a.flushImages()
	go a.reapLoop()
	return a, nil
}

// flushImages writes the image store's last-use times now and then, so
// using a cached image costs no disk write on the step's path.
func (a *Agent) flushImages() {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
			if err := a.images.Flush(); err != nil {
				a.log.Warn("image store flush failed", "error", err)
			}
		}
	}
}

// Close stops accepting work and releases the journal. Running steps go on
// (their runners are detached) and are picked up by the next agent process.
func (a *Agent) Close() error {
	a.StopAccepting("this agent is shutting down; it takes no new steps")
	a.cancel()
	serr := a.images.Close()
	if err := a.journal.close(); err != nil {
		return err
	}
	return serr
}

// dockerExecutor returns the Docker executor, connecting to the engine
// first when it is not connected yet (the engine may come up after the agent).
func (a *Agent) dockerExecutor(ctx context.Context) (*executor.Docker, error) {
	a.dockerMu.Lock()
	defer a.dockerMu.Unlock()
	if a.docker != nil {
		return a.docker, nil
	}
	cli, info, err := engine.Connect(ctx)
	a.dockerInfo, a.dockerErr = info, err
	if err != nil {
		return nil, fmt.Errorf("%w: %w", executor.ErrEngine, err)
	}
	im := a.cfg.Images
	a.coord = registry.NewCoordinator(registry.Options{
		Engine: cli, Store: a.images, AllowedImages: im.AllowedImages,
		PullTimeout: im.PullTimeout, StallTimeout: im.StallTimeout, Retries: im.Retries,
		GC: im.GC, Logger: a.log, OnPull: a.metrics.pullEnded,
	})
	a.docker = executor.NewDocker(cli, a.coord, a.images, a.cfg.Bundle, a.cfg.Identity.Thumbprint, a.probes, a.log)
	a.log.Info("connected to the Docker Engine", "host", info.Host, "version", info.Version, "api_version", info.APIVersion)
	go a.coord.RunPrepull(a.ctx, im.Prepull, im.Refresh, im.GCInterval)
	return a.docker, nil
}

// dockerAvailable reports whether the engine answers now: it connects if
// not connected yet, and pings if connected, since the engine may have
// gone away (stopped or restarting) since.
func (a *Agent) dockerAvailable(ctx context.Context) error {
	d, err := a.dockerExecutor(ctx)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := d.Ping(pctx); err != nil {
		a.dockerMu.Lock()
		host := a.dockerInfo.Host
		a.dockerMu.Unlock()
		return fmt.Errorf("%w: the engine at %s stopped answering (stopped or restarting?): %w", executor.ErrEngine, host, err)
	}
	return nil
}

// StopAccepting makes StartStep refuse new tickets with Unavailable and
// reason; a repeated StartStep of a known ticket is still answered.
func (a *Agent) StopAccepting(reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refusing == "" {
		a.refusing = reason
	}
}

// notAccepting says why StartStep refuses new steps now, or "".
func (a *Agent) notAccepting() string {
	a.mu.Lock()
	why := a.refusing
	a.mu.Unlock()
	if why != "" {
		return why
	}
	if err := a.checkDisk(); err != nil {
		return err.Error()
	}
	return ""
}

// Drain refuses new steps and returns once every step the agent holds has
// ended, or ctx ends. The service goes on meanwhile, so the server still
// follows the running steps to their end.
func (a *Agent) Drain(ctx context.Context) error {
	a.StopAccepting("this agent is draining: it finishes its running steps and takes no new ones; send the step to another worker")
	a.mu.Lock()
	var open []*step
	for _, s := range a.steps {
		open = append(open, s)
	}
	a.mu.Unlock()
	a.log.Info("draining: refusing new steps, waiting for the running ones", "steps", len(open))
	for _, s := range open {
		select {
		case <-s.done:
		case <-ctx.Done():
			return fmt.Errorf("drain: %w", ctx.Err())
		}
	}
	a.log.Info("drained: no step is running")
	return nil
}

// reattach follows a step whose runner an earlier agent process started.
// A container step whose engine does not answer waits for it instead of
// failing: the container and its files outlive the engine being away. If
// the runner's exit record appears meanwhile, the step ends from it.
func (a *Agent) reattach(s *step, spec *executor.Spec, req *pb.StartStepRequest) {
	log := a.log.With("ticket", s.rec.Ticket)
	log.Info("reattaching to the step's runner")
	backoff, told := time.Second, false
	for {
		ex, err := a.executorFor(s.ctx, &s.rec, req)
		if err == nil {
			if err := a.startIfNeverRan(s, ex, spec); err != nil {
				a.finish(s, spec, pb.Outcome_OUTCOME_AGENT_ERROR, nil, "", err.Error())
				return
			}
			a.follow(s, ex, spec, req)
			return
		}
		if !errors.Is(err, executor.ErrEngine) {
			a.finish(s, spec, pb.Outcome_OUTCOME_AGENT_ERROR, nil, "", err.Error())
			return
		}
		if _, serr := os.Stat(filepath.Join(s.rec.StepDir, stepspec.ResultFile)); serr == nil {
			// The runner has ended: its own records say all there is.
			a.follow(s, endedRunner{}, spec, req)
			return
		}
		if !told {
			told = true
			log.Warn("cannot reattach until the Docker Engine answers", "error", err)
			s.agentLog(fmt.Sprintf("the Docker Engine does not answer (%v); the step is followed again when it does", err))
		}
		select {
		case <-a.ctx.Done():
			return // shutting down; the next agent process reattaches
		case <-s.ctx.Done():
			s.mu.Lock()
			outcome, detail := s.stopReason, s.stopDetail
			s.mu.Unlock()
			if outcome == pb.Outcome_OUTCOME_UNSPECIFIED {
				return
			}
			reason := detail + "; the Docker Engine does not answer, so the step's container could not be stopped"
			s.agentLog(reason)
			a.finish(s, spec, outcome, nil, "", reason)
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// neverRanGrace is how long a reattached step's output.log may take to
// appear before the runner is taken to have never started.
const neverRanGrace = 2 * time.Second

// startIfNeverRan starts the runner of a step recorded as started whose
// runner never ran: the agent stopped between recording the start and
// making it. output.log is the runner's first act, so without it the script
// has not run; and were a runner starting after all, its O_EXCL guard on
// output.log stops the script from running twice.
func (a *Agent) startIfNeverRan(s *step, ex executor.Executor, spec *executor.Spec) error {
	path := filepath.Join(s.rec.StepDir, stepspec.OutputLog)
	for deadline := time.Now().Add(neverRanGrace); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil || !errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			break
		}
	}
	a.log.Info("the step's runner never ran; starting it", "ticket", s.rec.Ticket)
	secrets, err := a.openSecrets(s)
	if err != nil {
		return err
	}
	stdin, err := json.Marshal(stepspec.Secrets{Variables: secrets.runnerVariables(), StepKey: secrets.StepKey})
	if err != nil {
		return fmt.Errorf("step secrets: %w", err)
	}
	if err := ex.Prepare(a.ctx, spec, func(string, ...any) {}); err != nil {
		return err
	}
	return ex.Start(a.ctx, spec, stdin)
}

// endedRunner stands in for the Docker executor when the engine is away
// but the runner's result.json shows it has ended: nothing is left to wait
// for or signal.
type endedRunner struct{}

func (endedRunner) Prepare(context.Context, *executor.Spec, executor.LogFunc) error {
	return fmt.Errorf("%w: not connected", executor.ErrEngine)
}
func (endedRunner) Start(context.Context, *executor.Spec, []byte) error {
	return fmt.Errorf("%w: not connected", executor.ErrEngine)
}
func (endedRunner) Wait(context.Context, *executor.Spec) (executor.Exit, error) {
	return executor.Exit{Code: -1}, nil
}
func (endedRunner) Signal(context.Context, *executor.Spec, syscall.Signal) error { return nil }
func (endedRunner) Remove(context.Context, *executor.Spec) error                 { return nil }

func (a *Agent) executorFor(ctx context.Context, rec *stepRecord, req *pb.StartStepRequest) (executor.Executor, error) {
	if req.GetExecution().GetContainer() == nil {
		return a.host, nil
	}
	return a.dockerExecutor(ctx)
}

// lookup returns the step with ticket, or nil.
func (a *Agent) lookup(ticket string) *step {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.steps[ticket]
}

// resume loads the journal: completed steps are answered from it, others
// are driven on from where they were.
func (a *Agent) resume() error {
	recs, err := a.journal.all()
	if err != nil {
		return err
	}
	// Before any step's goroutine: a reattached holder keeps its mutex.
	a.reattachIsolation(recs)
	var waiting []*step
	for _, rec := range recs {
		s := a.newStep(*rec)
		a.steps[rec.Ticket] = s
		if rec.State == pb.StepState_STEP_STATE_COMPLETE {
			s.completeOnce.Do(func() { close(s.done) })
			if rec.RunnerStarted && !rec.Completed {
				// Its lines are still to be collected: serve them from output.log.
				s.log = newRunnerLog(filepath.Join(rec.StepDir, stepspec.OutputLog), s.firstRunnerSeqLocked())
				if _, err := s.log.poll(nil); err != nil {
					a.log.Warn("the log of a completed step is unreadable", "ticket", rec.Ticket, "error", err)
				}
				s.log.close()
			}
			continue
		}
		a.log.Info("resuming step", "ticket", rec.Ticket, "state", rec.State)
		if rec.RunnerStarted {
			a.slots.hold(rec.Ticket) // released when run ends
			go a.run(s)
			continue
		}
		waiting = append(waiting, s)
	}
	// Steps that had not started get back in line in the order they came.
	slices.SortStableFunc(waiting, func(x, y *step) int { return x.rec.CreatedAt.Compare(y.rec.CreatedAt) })
	go func() {
		for _, s := range waiting {
			go a.run(s)
			select {
			case <-s.queued:
			case <-time.After(10 * time.Second): // stuck before the line (an engine away): the next goes on
			case <-a.ctx.Done():
				return
			}
		}
	}()
	return nil
}

func (s *step) markQueued() { s.queuedOnce.Do(func() { close(s.queued) }) }

func (a *Agent) newStep(rec stepRecord) *step {
	ctx, cancel := context.WithCancel(a.ctx)
	return &step{a: a, rec: rec, changed: make(chan struct{}), ctx: ctx, cancel: cancel, done: make(chan struct{}), queued: make(chan struct{})}
}
