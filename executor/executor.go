// Package executor runs one step's runner: in a container of the step's image
// with the tool bundle mounted read-only (the Docker executor), or directly on
// the worker (the host executor). It knows nothing of gRPC or of the journal;
// the agent drives it through Executor.
//
// Both executors start the same runner on the same step directory (package
// stepspec), which outlives the agent; nothing an executor keeps in memory is
// needed to learn how a step ended.
package executor

import (
	"context"
	"errors"
	"syscall"
	"time"

	"stevedore/registry"
)

// Errors an Executor wraps; test with errors.Is. ErrImageRejected (probe.go)
// is the other class.
var (
	// ErrPullFailed: the image could not be had (registry refused, missing,
	// unreachable, or policy never with the image absent).
	ErrPullFailed = errors.New("pull failed")
	// ErrEngine: the Docker Engine is absent or failed an operation.
	ErrEngine = errors.New("docker engine")
)

// Spec is what an executor needs to know of a step.
type Spec struct {
	Ticket string
	// StepDir is the step's directory on the host (package stepspec); in a
	// container it is mounted at the same path.
	StepDir string
	// Container is nil for a host step.
	Container *ContainerSpec
	// Labels are added to the step's container (io.stevedore.* are the executor's own).
	Labels map[string]string
}

// ContainerSpec is a container step's image and limits.
type ContainerSpec struct {
	Image       string
	Credentials registry.Credentials
	// CredentialsSource names where Credentials came from, for messages
	// ("inline credentials", "feed acme"); never the credentials themselves.
	CredentialsSource string
	Policy            registry.PullPolicy
	Platform          string
	MemoryBytes       int64
	NanoCPUs          int64
	PidsLimit         int64
}

// Exit is how the runner's process (or container) ended, as the engine or
// the OS saw it. The runner's own result.json says more, when it exists.
type Exit struct {
	// Code is the exit status; -1 when none is known.
	Code int
	// Signal that ended the process, e.g. "SIGKILL"; empty if none.
	Signal string
	// OOMKilled: the container hit its memory limit.
	OOMKilled bool
	// Detail is extra evidence for a runner that died without result.json,
	// such as the tail of its own output.
	Detail string
	// Vanished: the step's container or runner process is gone without a
	// trace of how it ended (removed, or killed while no agent watched).
	Vanished bool
	// EngineInterrupted: the Docker Engine went away while the step ran; it
	// stops running containers when it stops, so Code is what it recorded.
	EngineInterrupted bool
	// StoppedOutside: the container was stopped (TERM or KILL) by someone
	// other than the agent, such as `docker stop` or the engine stopping.
	StoppedOutside bool
}

// LogFunc writes a line to the step's log as the agent (pull progress,
// probe verdicts). It must not block for long.
type LogFunc func(format string, args ...any)

// Executor runs a step's runner. Methods take the Spec the step started with;
// the Docker executor finds its container by name, so every method but Start
// works on a step started by an earlier process of the agent.
type Executor interface {
	// Prepare gets everything ready to start: for a container step the image
	// (pulled by policy, progress to logf), the container created but not
	// started, probed (ErrImageRejected) and the step directory made
	// writable for the image's user. Idempotent: a created container is
	// reused. After a failure, Remove cleans up.
	Prepare(ctx context.Context, spec *Spec, logf LogFunc) error

	// Start starts the runner and writes stdin (the secrets document) to its
	// standard input, then closes it. Not idempotent: call it once, after
	// Prepare succeeded. The runner's O_EXCL guard on output.log stops a
	// second run of the script even if it were called twice.
	Start(ctx context.Context, spec *Spec, stdin []byte) error

	// Wait blocks until the runner has exited, or ctx ends. Safe to call any
	// number of times, concurrently too, also for a step started by an
	// earlier agent process.
	Wait(ctx context.Context, spec *Spec) (Exit, error)

	// Signal sends sig to the step: SIGTERM reaches the runner, which passes
	// it on (to the script's process group and to the processes carrying the
	// step's STEVEDORE_STEP_DIR, its daemons) and enforces the grace period;
	// SIGKILL ends every process of the step at once, also what the script
	// left running after the runner ended (on the host: the step's cgroup,
	// or without one the runner's session, the marked processes and their
	// descendants). Idempotent, and a no-op for a step with nothing left running,
	// also one started by an earlier agent process.
	Signal(ctx context.Context, spec *Spec, sig syscall.Signal) error

	// Remove removes what the executor made for the step (the container),
	// killing it if it still runs. Idempotent; the step directory is the
	// caller's.
	Remove(ctx context.Context, spec *Spec) error
}

// killGrace is how long Remove waits after SIGKILL for a process to vanish.
const killGrace = 5 * time.Second
