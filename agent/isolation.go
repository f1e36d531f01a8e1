package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	pb "stevedore/proto/stevedore/v1"
)

// errIsolationTimeout: a step waited longer than its isolation wait timeout.
var errIsolationTimeout = errors.New("isolation wait timed out")

// isolation is the agent's named reader/writer mutexes. A step without
// isolation (or ISOLATION_LEVEL_NONE) is a reader of its mutex, a FULL step
// its writer. The locks live only in the agent's memory and are held for
// the life of a step's run goroutine, so a crashed holder cannot keep one:
// a restarted agent rebuilds them from the journal (reattach) before any
// waiting step asks.
//
// Waiters are served strictly in the order they asked: a reader that comes
// while a writer waits queues behind it, so a stream of readers cannot
// starve a writer. Consecutive readers at the head are let in together.
type isolation struct {
	mu    sync.Mutex
	locks map[string]*rwLock
	// held maps a ticket to the mutex it holds; a step holds at most one.
	held map[string]string
}

type rwLock struct {
	holders map[string]isoParty
	queue   []*isoWaiter
}

// isoParty is a step holding or waiting for a mutex.
type isoParty struct {
	ticket    string
	stepName  string
	exclusive bool
}

type isoWaiter struct {
	isoParty
	ready chan struct{} // closed when granted
}

func newIsolation() *isolation {
	return &isolation{locks: map[string]*rwLock{}, held: map[string]string{}}
}

// isolationOf is the mutex name and the party a request asks for.
func isolationOf(ticket string, req *pb.StartStepRequest) (string, isoParty) {
	iso := req.GetIsolation()
	return iso.GetMutexName(), isoParty{
		ticket: ticket, stepName: req.GetStepName(),
		exclusive: iso.GetLevel() == pb.IsolationLevel_ISOLATION_LEVEL_FULL,
	}
}

// acquire takes mutex name for p, waiting in order. onWait is called once,
// when it has to wait, with the holders and the waiters ahead. A zero
// timeout waits for ever; past it the error wraps errIsolationTimeout and
// says who held the mutex. Holding it already is not an error.
func (m *isolation) acquire(ctx context.Context, name string, p isoParty, timeout time.Duration, onWait func(holders, ahead []isoParty)) error {
	m.mu.Lock()
	if _, ok := m.held[p.ticket]; ok {
		m.mu.Unlock()
		return nil
	}
	l := m.lockLocked(name)
	if len(l.queue) == 0 && l.admits(p) {
		m.grantLocked(name, l, p)
		m.mu.Unlock()
		return nil
	}
	w := &isoWaiter{isoParty: p, ready: make(chan struct{})}
	ahead := make([]isoParty, 0, len(l.queue))
	for _, q := range l.queue {
		ahead = append(ahead, q.isoParty)
	}
	l.queue = append(l.queue, w)
	holders := l.holderList()
	m.mu.Unlock()
	onWait(holders, ahead)

	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	var err error
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-expired:
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-w.ready:
		if err == nil {
			return nil // granted as the wait ran out: take it
		}
		m.releaseLocked(p.ticket) // granted as it was cancelled: hand it on
		return err
	default:
	}
	for i, q := range l.queue {
		if q == w {
			l.queue = append(l.queue[:i], l.queue[i+1:]...)
			break
		}
	}
	// A writer leaving the head may let the readers behind it in.
	m.promoteLocked(name, l)
	if err != nil {
		return err
	}
	return fmt.Errorf("%w: waited %s for %s (%s); it is held by %s", errIsolationTimeout,
		timeout, mutexDesc(name), levelDesc(p.exclusive), partyList(l.holderList()))
}

// hold grants name to p at once, whoever holds it: a step the previous
// agent process was running keeps the hold it had.
func (m *isolation) hold(name string, p isoParty) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.held[p.ticket]; ok {
		return
	}
	m.grantLocked(name, m.lockLocked(name), p)
}

// release frees ticket's hold. Safe to call for a ticket holding none.
func (m *isolation) release(ticket string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.releaseLocked(ticket)
}

func (m *isolation) releaseLocked(ticket string) {
	name, ok := m.held[ticket]
	if !ok {
		return
	}
	delete(m.held, ticket)
	l := m.locks[name]
	delete(l.holders, ticket)
	m.promoteLocked(name, l)
}

func (m *isolation) lockLocked(name string) *rwLock {
	l := m.locks[name]
	if l == nil {
		l = &rwLock{holders: map[string]isoParty{}}
		m.locks[name] = l
	}
	return l
}

func (m *isolation) grantLocked(name string, l *rwLock, p isoParty) {
	l.holders[p.ticket] = p
	m.held[p.ticket] = name
}

// promoteLocked lets in waiters from the head of the queue while they fit,
// and forgets a lock nobody holds or wants.
func (m *isolation) promoteLocked(name string, l *rwLock) {
	for len(l.queue) > 0 && l.admits(l.queue[0].isoParty) {
		w := l.queue[0]
		l.queue = l.queue[1:]
		m.grantLocked(name, l, w.isoParty)
		close(w.ready)
	}
	if len(l.holders) == 0 && len(l.queue) == 0 {
		delete(m.locks, name)
	}
}

// admits reports whether p may hold l beside its current holders.
func (l *rwLock) admits(p isoParty) bool {
	if len(l.holders) == 0 {
		return true
	}
	if p.exclusive {
		return false
	}
	for _, h := range l.holders {
		if h.exclusive {
			return false
		}
	}
	return true
}

func (l *rwLock) holderList() []isoParty {
	out := make([]isoParty, 0, len(l.holders))
	for _, h := range l.holders {
		out = append(out, h)
	}
	return out
}

// holders returns who holds name now (for tests and diagnostics).
func (m *isolation) holders(name string) []isoParty {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l := m.locks[name]; l != nil {
		return l.holderList()
	}
	return nil
}

func mutexDesc(name string) string {
	if name == "" {
		return "the agent's default isolation mutex"
	}
	return fmt.Sprintf("isolation mutex %q", name)
}

func levelDesc(exclusive bool) string {
	if exclusive {
		return "full isolation, exclusive"
	}
	return "no isolation, shared"
}

// partyList names steps as "ticket t1 (step "deploy", exclusive)".
func partyList(ps []isoParty) string {
	if len(ps) == 0 {
		return "nobody"
	}
	parts := make([]string, 0, len(ps))
	for _, p := range ps {
		mode := "shared"
		if p.exclusive {
			mode = "exclusive"
		}
		if p.stepName != "" {
			parts = append(parts, fmt.Sprintf("ticket %s (step %q, %s)", p.ticket, p.stepName, mode))
		} else {
			parts = append(parts, fmt.Sprintf("ticket %s (%s)", p.ticket, mode))
		}
	}
	return strings.Join(parts, ", ")
}

// acquireIsolation waits for the step's isolation mutex, logging who it
// waits for. The wait is the PENDING state.
func (a *Agent) acquireIsolation(s *step, req *pb.StartStepRequest) error {
	name, p := isolationOf(s.rec.Ticket, req)
	start := time.Now()
	waited := false
	err := a.isolation.acquire(s.ctx, name, p, req.GetIsolation().GetWaitTimeout().AsDuration(), func(holders, ahead []isoParty) {
		waited = true
		s.markQueued()
		line := fmt.Sprintf("waiting for %s (%s): held by %s", mutexDesc(name), levelDesc(p.exclusive), partyList(holders))
		if len(ahead) > 0 {
			line += fmt.Sprintf("; %d waiting ahead: %s", len(ahead), partyList(ahead))
		}
		s.agentLog(line)
		a.log.Debug("waiting for the isolation mutex", "ticket", p.ticket, "mutex", name, "exclusive", p.exclusive, "holders", len(holders), "ahead", len(ahead))
	})
	if err == nil && waited {
		s.agentLog(fmt.Sprintf("acquired %s after %s", mutexDesc(name), time.Since(start).Round(time.Millisecond)))
	}
	return err
}

// reattachIsolation gives back the holds of steps that the previous agent
// process had let past the mutex (pulling or running). It runs before any
// step's goroutine starts, so no waiting step can take a mutex first.
func (a *Agent) reattachIsolation(recs []*stepRecord) {
	for _, rec := range recs {
		if rec.State == pb.StepState_STEP_STATE_COMPLETE {
			continue
		}
		if !rec.RunnerStarted && rec.State == pb.StepState_STEP_STATE_PENDING {
			continue // it had not reached the mutex, or still waited for a slot: asks again
		}
		req := &pb.StartStepRequest{}
		if err := proto.Unmarshal(rec.Request, req); err != nil {
			continue // run fails such a step at once
		}
		name, p := isolationOf(rec.Ticket, req)
		a.isolation.hold(name, p)
		a.log.Debug("isolation hold reattached", "ticket", rec.Ticket, "mutex", name, "exclusive", p.exclusive)
	}
}
