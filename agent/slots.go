package agent

import (
	"context"
	"sync"
)

// slots bounds how many steps run at once. Waiters are served in the order
// they asked, so a step never starves behind later ones.
type slots struct {
	mu      sync.Mutex
	max     int
	holders map[string]bool
	queue   []*slotWaiter
}

type slotWaiter struct {
	ticket string
	ready  chan struct{}
}

func newSlots(max int) *slots { return &slots{max: max, holders: map[string]bool{}} }

// acquire takes a slot for ticket, calling onWait once (with the tickets
// holding slots and the number queued ahead) if it has to wait.
func (s *slots) acquire(ctx context.Context, ticket string, onWait func(holders []string, ahead int)) error {
	s.mu.Lock()
	if len(s.holders) < s.max && len(s.queue) == 0 {
		s.holders[ticket] = true
		s.mu.Unlock()
		return nil
	}
	w := &slotWaiter{ticket: ticket, ready: make(chan struct{})}
	ahead := len(s.queue)
	s.queue = append(s.queue, w)
	holders := make([]string, 0, len(s.holders))
	for t := range s.holders {
		holders = append(holders, t)
	}
	s.mu.Unlock()
	onWait(holders, ahead)
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		defer s.mu.Unlock()
		select {
		case <-w.ready: // granted meanwhile: hand it on
			delete(s.holders, ticket)
			s.grantLocked()
		default:
			for i, q := range s.queue {
				if q == w {
					s.queue = append(s.queue[:i], s.queue[i+1:]...)
					break
				}
			}
		}
		return ctx.Err()
	}
}

// hold gives ticket a slot at once, beyond max if need be: a step an
// earlier agent process started is running whatever the count says, and
// must be counted before new steps are let in.
func (s *slots) hold(ticket string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holders[ticket] = true
}

// release frees ticket's slot. Safe to call for a ticket holding none.
func (s *slots) release(ticket string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.holders[ticket] {
		return
	}
	delete(s.holders, ticket)
	s.grantLocked()
}

func (s *slots) grantLocked() {
	for len(s.holders) < s.max && len(s.queue) > 0 {
		w := s.queue[0]
		s.queue = s.queue[1:]
		s.holders[w.ticket] = true
		close(w.ready)
	}
}

// running is the number of slots held.
func (s *slots) running() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.holders)
}
