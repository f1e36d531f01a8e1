// Package agent is the stevedore daemon: the Agent gRPC service over a
// durable step journal, concurrency slots, and the executors that run steps.
package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"stevedore/executor"
	"stevedore/internal/engine"
	pb "stevedore/proto/stevedore/v1"
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

	// ctx ends when the agent shuts down.
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	steps map[string]*step

	dockerMu   sync.Mutex
	docker     *executor.Docker
	dockerInfo engine.Info
	dockerErr  error
}

// stepsDir holds one directory per step.
const stepsDir = "steps"

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
	if cfg.Identity == nil || cfg.Bundle == nil {
		return nil, errors.New("agent: an identity and a bundle are required")
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, stepsDir), 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	keys, err := loadMasterKey(cfg.MasterKey, cfg.StateDir)
	if err != nil {
		return nil, err
	}
	j, err := openJournal(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	log := cfg.Logger.Named("agent")
	a := &Agent{
		cfg: cfg, log: log, journal: j, keys: keys,
		slots:  newSlots(cfg.MaxSteps),
		host:   executor.NewHost(cfg.Bundle, log),
		probes: executor.NewProbeCache(),
		ctx:    ctx, cancel: cancel,
		steps: map[string]*step{},
	}
	if _, err := a.dockerExecutor(ctx); err != nil {
		log.Warn("no Docker Engine: container steps fail until one answers; host steps run", "error", err)
	}
	if err := a.resume(); err != nil {
		j.close()
		cancel()
		return nil, err
	}
	return a, nil
}

// Close stops accepting work and releases the journal. Running steps go on
// (their runners are detached) and are picked up by the next agent process.
func (a *Agent) Close() error {
	a.cancel()
	return a.journal.close()
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
	a.docker = executor.NewDocker(cli, a.cfg.Bundle, a.cfg.Identity.Thumbprint, a.probes, a.log)
	a.log.Info("connected to the Docker Engine", "host", info.Host, "version", info.Version, "api_version", info.APIVersion)
	return a.docker, nil
}

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
	for _, rec := range recs {
		s := a.newStep(*rec)
		a.steps[rec.Ticket] = s
		if rec.State == pb.StepState_STEP_STATE_COMPLETE {
			s.completeOnce.Do(func() { close(s.done) })
			continue
		}
		a.log.Info("resuming step", "ticket", rec.Ticket, "state", rec.State)
		go a.run(s)
	}
	return nil
}

func (a *Agent) newStep(rec stepRecord) *step {
	ctx, cancel := context.WithCancel(a.ctx)
	return &step{a: a, rec: rec, changed: make(chan struct{}), ctx: ctx, cancel: cancel, done: make(chan struct{})}
}
