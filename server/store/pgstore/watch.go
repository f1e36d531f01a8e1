package pgstore

import (
	"context"
	"strings"
	"time"

	"stevedore/server/store"
)

var _ store.Watcher = (*Store)(nil)

// watchChannel is the channel of migration 0003's trigger on steps.
const watchChannel = "stevedore_steps"

// Watch implements store.Watcher with LISTEN on a connection of its own,
// held from the pool for as long as ctx lasts. A lost connection is
// dialled again, a second apart, and announced with the zero Change, as is
// a notification the receiver was too slow to take.
func (s *Store) Watch(ctx context.Context) <-chan store.Change {
	out := make(chan store.Change, 256)
	go func() {
		defer close(out)
		missed := false
		send := func(c store.Change) {
			if missed {
				select {
				case out <- store.Change{}:
					missed = false
				default:
					return
				}
			}
			select {
			case out <- c:
			default:
				missed = true
			}
		}
		for first := true; ctx.Err() == nil; first = false {
			s.listen(ctx, send, !first)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return out
}

// listen sends every notification on watchChannel until ctx ends or the
// connection fails; again: first the zero Change, once listening, for what
// changed while nobody listened.
func (s *Store) listen(ctx context.Context, send func(store.Change), again bool) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return
	}
	// A connection that LISTENs is not given back to the pool as it is:
	// it is closed, and the pool dials a fresh one when it needs it.
	defer func() {
		conn.Conn().Close(context.Background())
		conn.Release()
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+watchChannel); err != nil {
		return
	}
	if again {
		send(store.Change{})
	}
	for {
		n, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			return
		}
		// The payload is "STATE [cancel] ID" (IDs and states have no spaces).
		f := strings.Fields(n.Payload)
		switch {
		case len(f) == 2:
			send(store.Change{State: f[0], ID: f[1]})
		case len(f) == 3 && f[1] == "cancel":
			send(store.Change{State: f[0], ID: f[2], CancelRequested: true})
		default:
			send(store.Change{}) // not ours to read: look at everything
		}
	}
}
