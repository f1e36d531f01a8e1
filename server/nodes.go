package server

import (
	"context"
	"errors"
	"os"
	"time"

	"stevedore/server/store"
)

// Several server nodes may share one database: a store that is also a
// store.Watcher (PostgreSQL). Each node dispatches queued steps to the
// workers connected to it, and drives a step only while it holds the
// step's lease (StepRecord.Node, LeaseUntil), renewed every third of
// Config.StepLease while the step's worker is connected to it. A node that
// dies stops renewing; once a lease has run out, the node the worker
// redials takes the step over and drives it on from its cursor. Every
// write of a driver checks that the step is still its node's, so a node
// that comes back, or that lost its lease while cut off, stops instead of
// driving the step a second time.
//
// On the embedded store there is one node: no leases are kept, and a
// restarted server drives on every running step at once, as before.

// DefaultStepLease is Config.StepLease's default.
const DefaultStepLease = 15 * time.Second

// errLeaseLost: another node drives the step now, or it has ended.
var errLeaseLost = errors.New("the step is no longer this server node's to drive")

// errKeep: a lease check that writes nothing.
var errKeep = errors.New("nothing to write")

// nodeName is Config.Node's default: the host's name, which a container
// keeps across restarts of its server.
func nodeName() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "stevedore"
}

// hold is a driver's hold on a step in this process; cancel stops it.
type hold struct{ cancel context.CancelFunc }

// tryHold registers the driver of id before the step is claimed, so that
// no second driver starts for it here (dispatch and takeover look at the
// same steps); false when one holds it already. The driver releases it
// with unhold.
func (s *Server) tryHold(id string) (context.Context, *hold, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.driving[id] != nil {
		return nil, nil, false
	}
	ctx, cancel := context.WithCancel(s.ctx)
	h := &hold{cancel: cancel}
	s.driving[id] = h
	return ctx, h, true
}

func (s *Server) unhold(id string, h *hold) {
	s.mu.Lock()
	if s.driving[id] == h {
		delete(s.driving, id)
	}
	s.mu.Unlock()
	h.cancel()
}

func (s *Server) held(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.driving[id] != nil
}

// leaseFrom is a lease taken at now; none on a store of one node.
func (s *Server) leaseFrom(now time.Time) time.Time {
	if !s.shared {
		return time.Time{}
	}
	return now.Add(s.cfg.StepLease).UTC()
}

// startDriving starts the driver of rec, which this node has claimed
// under the hold h.
func (s *Server) startDriving(ctx context.Context, h *hold, rec StepRecord, w *worker, resumed bool) {
	go func() {
		s.drive(ctx, rec, w, resumed)
		s.unhold(rec.ID, h)
		s.kick() // a step it queued again may be claimed now
	}()
}

// claim takes a queued step for worker: one node, one claim.
func (s *Server) claim(id, worker string) (StepRecord, error) {
	now := time.Now().UTC()
	rec, err := s.db.UpdateStep(id, func(cur *StepRecord) error {
		if cur.State != StateQueued {
			return errStateChanged
		}
		cur.State, cur.Assigned, cur.StartedAt = StateRunning, worker, now
		cur.Node, cur.LeaseUntil = s.cfg.Node, s.leaseFrom(now)
		return nil
	})
	if err == nil {
		s.notify(id)
	}
	return rec, err
}

// keepLeases renews the leases of the steps this node drives and takes
// over the steps whose leases ran out, until the server closes.
func (s *Server) keepLeases() {
	t := time.NewTicker(s.cfg.StepLease / 3)
	defer t.Stop()
	for {
		s.renewLeases()
		s.takeOver()
		if err := s.loadTrust(); err != nil { // agents trusted through another node
			s.log.Warn("cannot read the trusted thumbprints", "error", err)
		}
		s.loadListening() // workers registered through another node
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		case <-s.leaseWake:
		}
	}
}

func (s *Server) kickLeases() {
	select {
	case s.leaseWake <- struct{}{}:
	default:
	}
}

// renewLeases extends the lease of each step driven here whose worker is
// connected here. One whose worker is connected elsewhere is left to run
// out, for the node it is connected to; one that is no longer this node's
// has its driver stopped.
func (s *Server) renewLeases() {
	s.mu.Lock()
	holds := make(map[string]*hold, len(s.driving))
	for id, h := range s.driving {
		holds[id] = h
	}
	s.mu.Unlock()
	for id, h := range holds {
		_, err := s.db.UpdateStep(id, func(cur *StepRecord) error {
			switch {
			case cur.State != StateRunning:
				return errStateChanged // ended or queued again: its driver is done with it
			case cur.Node != s.cfg.Node:
				return errLeaseLost
			case !s.connectedHere(cur.Assigned):
				return errKeep
			}
			cur.LeaseUntil = s.leaseFrom(time.Now())
			return nil
		})
		switch {
		case errors.Is(err, errLeaseLost):
			s.log.Info("step driven by another server node now: this one stops", "step", id)
			h.cancel()
		case errors.Is(err, errStateChanged), errors.Is(err, store.ErrNotFound):
		case err != nil && !errors.Is(err, errKeep):
			s.log.Warn("cannot renew a step's lease", "step", id, "error", err)
		}
	}
}

// takeOver drives the running steps that are this node's to take: its
// own, from an earlier process, and those whose lease ran out while their
// worker is connected here.
func (s *Server) takeOver() {
	now := time.Now()
	for _, rec := range s.steps(StateRunning) {
		if s.held(rec.ID) || !s.mayTake(rec, now) {
			continue
		}
		s.mu.Lock()
		w := s.workers[rec.Assigned]
		s.mu.Unlock()
		if w == nil {
			continue // a worker this node has not met: the node it is connected to takes it
		}
		ctx, h, ok := s.tryHold(rec.ID)
		if !ok {
			continue // dispatched here meanwhile
		}
		from := rec.Node
		rec, err := s.db.UpdateStep(rec.ID, func(cur *StepRecord) error {
			if cur.State != StateRunning || !s.mayTake(*cur, now) {
				return errStateChanged
			}
			cur.Node, cur.LeaseUntil = s.cfg.Node, s.leaseFrom(now)
			return nil
		})
		if err != nil {
			s.unhold(rec.ID, h)
			if !errors.Is(err, errStateChanged) {
				s.log.Warn("cannot take over a step", "step", rec.ID, "error", err)
			}
			continue
		}
		s.log.Info("step taken over", "step", rec.ID, "worker", rec.Assigned, "from_node", from)
		w.mu.Lock()
		w.inflight++
		w.mu.Unlock()
		s.startDriving(ctx, h, rec, w, true)
	}
}

// mayTake says whether this node may drive the running step rec at now.
func (s *Server) mayTake(rec StepRecord, now time.Time) bool {
	mine := rec.Node == s.cfg.Node
	if !mine && now.Before(rec.LeaseUntil) {
		return false // another node holds it
	}
	if mine || s.connectedHere(rec.Assigned) {
		return true
	}
	// Its worker has not come back to any node that took it: after
	// WorkerLostAfter any node takes it, to end it as a lost one ends.
	lost := s.cfg.WorkerLostAfter
	return lost > 0 && now.After(rec.LeaseUntil.Add(lost))
}

// connectedHere says whether the worker holds a connection to this node.
func (s *Server) connectedHere(name string) bool {
	s.mu.Lock()
	w := s.workers[name]
	s.mu.Unlock()
	if w == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.client != nil
}

// watch follows the steps' changes that every node makes: a step queued
// through another node is dispatched at once, a log followed here moves
// as its driver stores lines, a cancel asked of another node reaches the
// driver here.
func (s *Server) watch(wt store.Watcher) {
	for c := range wt.Watch(s.ctx) {
		if c.ID == "" { // changes may have been missed: look at everything
			s.notifyAll()
			s.kick()
			s.kickLeases()
			continue
		}
		s.notify(c.ID)
		switch c.State {
		case StateQueued:
			s.kick()
		case StateRunning:
			if c.CancelRequested {
				s.signalCancel(c.ID) // nothing when no driver here waits for it
			}
		}
	}
}

// signalCancel wakes the driver of step id, here, to send its cancel.
func (s *Server) signalCancel(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch := s.cancels[id]; ch != nil {
		close(ch)
		delete(s.cancels, id)
	}
}

// notifyAll wakes everyone waiting for any step's change.
func (s *Server) notifyAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, ch := range s.changed {
		close(ch)
		delete(s.changed, id)
	}
}
