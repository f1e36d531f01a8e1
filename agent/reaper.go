package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"stevedore/executor"
	pb "stevedore/proto/stevedore/v1"
)

// ReapReport is what one run of the reaper removed.
type ReapReport struct {
	// Expired are completed steps the server never collected, past the
	// retention: their container and workspace are gone, a tombstone stays.
	Expired []string
	// Pruned are tombstones past the retention, dropped from the journal.
	Pruned []string
	// Containers are names of this agent's containers no live step owns.
	Containers []string
	// Workspaces are step directories no live step owns.
	Workspaces []string
}

func (r ReapReport) empty() bool {
	return len(r.Expired)+len(r.Pruned)+len(r.Containers)+len(r.Workspaces) == 0
}

// reapLoop reaps at start-up and then every ReapInterval.
func (a *Agent) reapLoop() {
	t := time.NewTicker(a.cfg.ReapInterval)
	defer t.Stop()
	for {
		if _, err := a.Reap(a.ctx); err != nil && a.ctx.Err() == nil {
			a.log.Warn("reaping failed; trying again later", "error", err)
		}
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Reap removes what this agent made that nothing needs any more: completed
// steps past the retention, tombstones past it, and containers (labelled
// with this agent's identity; another agent's never) and step directories
// that no journal entry owns, or whose entry is a tombstone. Running steps
// and completed ones within the retention are never touched. Safe to call
// concurrently with everything else; without an engine it reaps only files.
func (a *Agent) Reap(ctx context.Context) (ReapReport, error) {
	var rep ReapReport
	var errs []error
	now := time.Now()
	retention := a.cfg.Retention

	// Completed steps past the retention lose their container and workspace.
	a.mu.Lock()
	var expired []*step
	for _, s := range a.steps {
		s.mu.Lock()
		if s.rec.State == pb.StepState_STEP_STATE_COMPLETE && !s.rec.Completed && now.Sub(s.rec.FinishedAt) > retention {
			expired = append(expired, s)
		}
		s.mu.Unlock()
	}
	a.mu.Unlock()
	for _, s := range expired {
		if err := a.removeStep(ctx, s); err != nil {
			errs = append(errs, fmt.Errorf("expire step %s: %w", s.rec.Ticket, err))
			continue
		}
		rep.Expired = append(rep.Expired, s.rec.Ticket)
	}

	// Tombstones past the retention: a retry that late is not a retry.
	a.mu.Lock()
	for ticket, s := range a.steps {
		s.mu.Lock()
		removed := s.rec.RemovedAt
		if removed.IsZero() {
			removed = s.rec.FinishedAt // a tombstone from before RemovedAt
		}
		old := s.rec.Completed && now.Sub(removed) > retention
		s.mu.Unlock()
		if !old {
			continue
		}
		// Journal and map together under a.mu, so StartStep sees both or neither.
		if err := a.journal.delete(ticket); err != nil {
			errs = append(errs, fmt.Errorf("prune tombstone %s: %w", ticket, err))
			continue
		}
		delete(a.steps, ticket)
		rep.Pruned = append(rep.Pruned, ticket)
	}
	a.mu.Unlock()

	// Containers and workspaces that no live step owns. A step's record is
	// written before its directory and container are made, so one that is
	// being started is never taken for an orphan.
	if err := a.reapContainers(ctx, &rep); err != nil {
		if !errors.Is(err, executor.ErrEngine) {
			errs = append(errs, err)
		} else {
			a.log.Debug("containers not reaped: no Docker Engine", "error", err)
		}
	}
	if err := a.reapWorkspaces(ctx, &rep); err != nil {
		errs = append(errs, err)
	}
	if !rep.empty() {
		a.log.Info("reaped", "expired", len(rep.Expired), "pruned", len(rep.Pruned),
			"containers", len(rep.Containers), "workspaces", len(rep.Workspaces))
	}
	return rep, errors.Join(errs...)
}

// owned reports whether ticket is a step whose container and workspace
// are still needed: known, and not a tombstone.
func (a *Agent) owned(ticket string) bool {
	s := a.lookup(ticket)
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.rec.Completed
}

func (a *Agent) reapContainers(ctx context.Context, rep *ReapReport) error {
	a.dockerMu.Lock()
	d := a.docker
	a.dockerMu.Unlock()
	if d == nil {
		return fmt.Errorf("%w: not connected", executor.ErrEngine)
	}
	list, err := d.Containers(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range list {
		if c.Ticket != "" && a.owned(c.Ticket) {
			continue
		}
		if err := d.RemoveContainer(ctx, c); err != nil {
			errs = append(errs, err)
			continue
		}
		a.log.Info("removed an orphaned container", "container", c.Name, "ticket", c.Ticket, "state", c.State)
		rep.Containers = append(rep.Containers, c.Name)
	}
	return errors.Join(errs...)
}

func (a *Agent) reapWorkspaces(ctx context.Context, rep *ReapReport) error {
	dir := filepath.Join(a.cfg.StateDir, stepsDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("reap workspaces: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if a.owned(e.Name()) {
			continue
		}
		if _, err := os.Lstat(filepath.Join(dir, e.Name())); err != nil {
			continue // removed meanwhile, by CompleteStep say
		}
		// A host step's leftovers (its processes, its cgroup) go with it.
		if err := a.host.Remove(ctx, &executor.Spec{Ticket: e.Name(), StepDir: filepath.Join(dir, e.Name())}); err != nil {
			a.log.Warn("could not end an orphaned host step's processes", "ticket", e.Name(), "error", err)
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("reap workspace: %w", err))
			continue
		}
		a.log.Info("removed an orphaned workspace", "ticket", e.Name())
		rep.Workspaces = append(rep.Workspaces, e.Name())
	}
	return errors.Join(errs...)
}
