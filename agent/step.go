package agent

import (
	"context"
	"sync"
	"time"

	pb "stevedore/proto/stevedore/v1"
)

// stepRecord is what the journal keeps of a step. It never holds a
// sensitive value in plaintext.
type stepRecord struct {
	Ticket   string `json:"ticket"`
	TaskID   string `json:"task_id,omitempty"`
	StepName string `json:"step_name,omitempty"`
	// Request is the StartStepRequest with sensitive values and inline
	// credentials blanked (proto binary).
	Request []byte `json:"request"`
	// Sealed is the secrets document (sensitive variables, inline
	// credentials, the step key), encrypted with the master key.
	Sealed  []byte `json:"sealed"`
	StepDir string `json:"step_dir"`

	State    pb.StepState `json:"state"`
	Outcome  pb.Outcome   `json:"outcome,omitempty"`
	ExitCode *int32       `json:"exit_code,omitempty"`
	Signal   string       `json:"signal,omitempty"`
	Reason   string       `json:"reason,omitempty"`
	ImageID  string       `json:"image_id,omitempty"`

	// PreLines are the agent's lines before the runner started: sequences
	// 1..len(PreLines). The runner's records follow from len(PreLines)+1.
	PreLines []agentLine `json:"pre_lines,omitempty"`
	// RunnerStarted: the runner was (or may have been) started; its records
	// are in output.log.
	RunnerStarted bool `json:"runner_started,omitempty"`
	// RunnerLast is the sequence of the runner's last record, once it ended.
	RunnerLast uint64 `json:"runner_last,omitempty"`
	// PostLines are the agent's lines after the runner ended, numbered on
	// from the runner's last record.
	PostLines []agentLine `json:"post_lines,omitempty"`

	OutputVariables []outputVariable `json:"output_variables,omitempty"`
	Artifacts       []artifact       `json:"artifacts,omitempty"`

	CreatedAt  time.Time `json:"created_at"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	// Completed: CompleteStep removed the container and workspace; the
	// record stays as a tombstone so a repeated call is answered.
	Completed bool `json:"completed,omitempty"`
	// RemovedAt is when the tombstone was made; the reaper prunes it after
	// the retention.
	RemovedAt time.Time `json:"removed_at,omitzero"`
}

type agentLine struct {
	Time time.Time `json:"time"`
	Text string    `json:"text"`
}

type outputVariable struct {
	Name string `json:"name"`
	// Value is plaintext unless Sensitive; then SealedValue holds it.
	Value       string `json:"value,omitempty"`
	SealedValue []byte `json:"sealed_value,omitempty"`
	Sensitive   bool   `json:"sensitive,omitempty"`
}

type artifact struct {
	Name   string `json:"name"`
	Path   string `json:"path"` // relative to the workspace
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// step is a step the agent knows, with its live state.
type step struct {
	a *Agent

	mu  sync.Mutex
	rec stepRecord
	// changed is closed and replaced whenever lines or state change, waking
	// long-polls.
	changed chan struct{}
	// secrets, decrypted, while the step may still need them.
	secrets *stepSecrets
	// log follows output.log.
	log *runnerLog
	// varIndex finds an output variable in rec by name; built on first use.
	varIndex map[string]int
	// pending are agent lines written while the runner runs; they join
	// PostLines when it has ended, so sequences stay gapless.
	pending []agentLine

	// cancel ends the step's wait for a slot, its pull or its run.
	ctx          context.Context
	cancel       context.CancelFunc
	stopReason   pb.Outcome // CANCELLED or TIMED_OUT once asked to stop
	stopDetail   string
	done         chan struct{} // closed when the step is COMPLETE
	completeOnce sync.Once
	// queued is closed once the step waits in line (for its isolation
	// mutex or a slot), holds a slot, or has ended: resume starts the
	// next step only then, so steps keep their order across a restart.
	queued     chan struct{}
	queuedOnce sync.Once

	// stopGrace is the grace period the step had after SIGTERM; agentKilled:
	// the runner outlived it and the agent sent SIGKILL itself. Both go into
	// the exit record's reason (cancel.go).
	stopGrace   time.Duration
	agentKilled bool
}

// stepSecrets is the sealed document of a step.
type stepSecrets struct {
	Variables   []secretVariable `json:"variables,omitempty"`
	StepKey     []byte           `json:"step_key"`
	RegistryPwd string           `json:"registry_password,omitempty"`
	RegistryTok string           `json:"registry_identity_token,omitempty"`
}

type secretVariable struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// notifyLocked wakes every long-poll waiting on s. Call with s.mu held.
func (s *step) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// agentLog adds an agent line: before the runner started it is numbered
// now; while it runs it waits for the runner to end.
func (s *step) agentLog(text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := agentLine{Time: time.Now().UTC(), Text: text}
	switch {
	case s.rec.State == pb.StepState_STEP_STATE_COMPLETE:
		return
	case s.rec.RunnerStarted:
		s.pending = append(s.pending, l)
	default:
		s.rec.PreLines = append(s.rec.PreLines, l)
		s.persistLocked()
	}
	s.a.metrics.logLines.Inc()
	s.notifyLocked()
}

func (s *step) persistLocked() {
	if err := s.a.journal.put(&s.rec); err != nil {
		s.a.log.Error("journal write failed", "ticket", s.rec.Ticket, "error", err)
	}
}

// firstRunnerSeq is the sequence of the runner's first record.
func (s *step) firstRunnerSeqLocked() uint64 { return uint64(len(s.rec.PreLines)) + 1 }

// lastSeqLocked is the highest sequence the agent has for the step.
func (s *step) lastSeqLocked() uint64 {
	last := uint64(len(s.rec.PreLines))
	if s.rec.RunnerStarted {
		if s.rec.RunnerLast > 0 {
			last = s.rec.RunnerLast
		} else if s.log != nil {
			last = s.log.lastSeq()
		}
	}
	return last + uint64(len(s.rec.PostLines))
}
