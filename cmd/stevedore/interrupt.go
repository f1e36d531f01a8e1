package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// exitInterrupted is run's exit code when it is interrupted before the
// step started, or a second time: 128 + SIGINT, as shells report it.
const exitInterrupted = 130

// interrupter makes the first SIGINT or SIGTERM cancel the step (TERM, its
// grace period, then KILL, on the agent), while run goes on streaming to
// the step's end and exits with its code; a second one leaves at once,
// the step left to end as it will.
type interrupter struct {
	ch     chan os.Signal
	stderr io.Writer

	mu     sync.Mutex
	cancel func()
	hits   int
}

func newInterrupter(stderr io.Writer) *interrupter {
	i := &interrupter{ch: make(chan os.Signal, 2), stderr: stderr}
	signal.Notify(i.ch, syscall.SIGINT, syscall.SIGTERM)
	go i.loop()
	return i
}

// arm sets how to cancel the step, once it has been started.
func (i *interrupter) arm(cancel func()) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.cancel = cancel
}

func (i *interrupter) stop() { signal.Stop(i.ch) }

func (i *interrupter) loop() {
	for sig := range i.ch {
		i.mu.Lock()
		i.hits++
		hits, cancel := i.hits, i.cancel
		i.mu.Unlock()
		if hits > 1 || cancel == nil {
			fmt.Fprintf(i.stderr, "\nstevedore: %v: leaving; the step, if started, goes on\n", sig)
			os.Exit(exitInterrupted)
		}
		fmt.Fprintf(i.stderr, "\nstevedore: %v: cancelling the step (again to leave it running)\n", sig)
		go cancel()
	}
}
