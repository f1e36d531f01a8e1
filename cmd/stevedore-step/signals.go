package main

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// cancelSignals are the signals that cancel a step: the agent's CancelStep
// (or docker stop) sends SIGTERM; SIGINT is a user's Ctrl-C on a terminal.
var cancelSignals = []os.Signal{unix.SIGTERM, unix.SIGINT}

// defaultCancelGrace is how long the script's processes have between SIGTERM
// and SIGKILL when the spec does not say.
const defaultCancelGrace = 10 * time.Second

// group signals the script's process group (the script runs with Setpgid, so
// its group's id is its pid), and turns a cancellation into SIGTERM, a grace
// period, then SIGKILL.
//
// The group's id stays reserved as long as the script's main process is not
// reaped (the runner waits for its exit with WNOWAIT), so a signal can never
// reach an unrelated process that got the same number; once reaped, group
// sends nothing.
type group struct {
	pgid  int
	grace time.Duration
	out   *output
	// mark is the environment entry every process of the step inherits
	// (STEVEDORE_STEP_DIR=...): a cancel reaches, by it, the script's
	// daemons that left its process group (setsid, double fork).
	mark []byte

	mu       sync.Mutex
	reaped   bool
	received os.Signal // the first cancel signal, if any
	killed   bool      // the grace ran out and SIGKILL was sent

	done chan struct{} // closed by reap
}

func newGroup(pgid int, grace time.Duration, out *output, stepDir string) *group {
	if grace <= 0 {
		grace = defaultCancelGrace
	}
	mark := []byte(envStepDir + "=" + stepDir + "\x00")
	return &group{pgid: pgid, grace: grace, out: out, mark: mark, done: make(chan struct{})}
}

// watch cancels the script when a signal arrives on sigs, until reap.
// Repeated signals do not shorten the grace period: the agent may repeat an
// idempotent cancel.
func (g *group) watch(sigs <-chan os.Signal) {
	var kill <-chan time.Time
	for {
		select {
		case sig := <-sigs:
			g.mu.Lock()
			first := g.received == nil
			if first {
				g.received = sig
			}
			g.mu.Unlock()
			if !first {
				continue
			}
			g.out.runnerLine("received %s: sending SIGTERM to the script's processes; SIGKILL in %s", signalName(sig), g.grace)
			g.signal(unix.SIGTERM)
			g.signalMarked(unix.SIGTERM)
			t := time.NewTimer(g.grace)
			defer t.Stop()
			kill = t.C
		case <-kill:
			kill = nil
			g.out.runnerLine("the script's processes did not end within %s: sending SIGKILL", g.grace)
			g.mu.Lock()
			g.killed = true
			g.mu.Unlock()
			g.signal(unix.SIGKILL)
			g.signalMarked(unix.SIGKILL)
		case <-g.done:
			return
		}
	}
}

// signal sends sig to the whole process group and reports whether there was
// a group to send it to.
func (g *group) signal(sig syscall.Signal) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.reaped {
		return false
	}
	err := unix.Kill(-g.pgid, sig)
	return !errors.Is(err, unix.ESRCH)
}

// signalMarked sends sig to every process outside the group that carries
// the step's mark in its environment: the script's daemons. There is no
// cgroup to ask; a daemon that cleared its environment escapes (on the host
// the agent's kill of the runner's session and of the mark sweeps again).
func (g *group) signalMarked(sig syscall.Signal) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == 1 {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !(bytes.HasPrefix(env, g.mark) || bytes.Contains(env, append([]byte{0}, g.mark...))) {
			continue
		}
		if pgid, err := unix.Getpgid(pid); err == nil && pgid == g.pgid {
			continue // the group's own: signalled with it
		}
		_ = unix.Kill(pid, sig)
	}
}

// cancelMessage is the exit record's message for a cancelled script: the
// signal received, and whether the grace ran out.
func (g *group) cancelMessage() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.received == nil {
		return ""
	}
	if g.killed {
		return "cancelled: the runner received " + signalName(g.received) + "; the script ignored SIGTERM for " + g.grace.String() + " and was killed with SIGKILL"
	}
	return "cancelled: the runner received " + signalName(g.received)
}

// reap tells group that the main process is about to be reaped: no signal
// may be sent to its group id after this.
func (g *group) reap() {
	g.mu.Lock()
	g.reaped = true
	g.mu.Unlock()
	close(g.done)
}

// cancelled returns the cancel signal received, or nil.
func (g *group) cancelled() os.Signal {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.received
}

// waitExited waits until process pid has exited, without reaping it.
func waitExited(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// signalName is "SIGTERM" for SIGTERM.
func signalName(sig os.Signal) string {
	if s, ok := sig.(syscall.Signal); ok {
		if name := unix.SignalName(s); name != "" {
			return name
		}
	}
	return sig.String()
}
