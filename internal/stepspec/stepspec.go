// Package stepspec is the contract between the agent and the step runner
// (cmd/stevedore-step): the files in a step's directory and the secrets
// document the runner reads on its standard input.
//
// A step directory holds:
//
//	step.json    Spec, written by the agent before the runner starts; no secrets
//	script       the script body
//	work/        the workspace: the script's working directory, its files and artifacts
//	output.log   the runner's records (package steplog), appended while the script runs
//	result.json  Result, written atomically by the runner when the script has ended
//
// The directory is bind-mounted into a step's container at the same path as
// on the host, so every path here is valid on both sides. The files outlive
// the agent: a restarted agent reads them and loses nothing.
package stepspec

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"stevedore/internal/fsutil"
)

// File names in a step directory.
const (
	SpecFile   = "step.json"
	ScriptFile = "script"
	WorkDir    = "work"
	OutputLog  = "output.log"
	ResultFile = "result.json"
)

// Syntaxes the runner runs.
const (
	SyntaxBash   = "bash"
	SyntaxSh     = "sh"
	SyntaxPython = "python"
)

// Spec tells the runner what to run. It never holds a sensitive value.
type Spec struct {
	Ticket string `json:"ticket"`
	// Syntax is SyntaxBash, SyntaxSh or SyntaxPython.
	Syntax string `json:"syntax"`
	// FirstSequence is the sequence number of the runner's first record: the
	// agent's own lines before the start (waiting, pulling) come before it.
	FirstSequence uint64 `json:"first_sequence"`
	// Variables that are not sensitive. Sensitive ones come in Secrets.
	Variables []Variable `json:"variables,omitempty"`
	// CancelGrace is how long the runner waits after passing TERM to the
	// script before it KILLs the script's process group.
	CancelGrace Duration `json:"cancel_grace"`
	// LogLimit bounds the bytes of the script's output kept in output.log,
	// so that a runaway step cannot fill the worker's disk; 0: no bound.
	LogLimit int64 `json:"log_limit,omitempty"`
	// LogLevels: the agent reads output.log records with a level, so the
	// runner honours the level switches (stdout-warning and the like).
	// Without it (an older agent, whose reader would take the level bits
	// for corruption) the runner writes none and the switches stay lines.
	LogLevels bool `json:"log_levels,omitempty"`
}

// Variable is a name and value given to the script.
type Variable struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Secrets is the JSON document the agent writes to the runner's standard
// input and then closes. It never touches a disk: not the step directory,
// not the container's configuration.
type Secrets struct {
	// Sensitive variables: given to the script, and masked in its output.
	Variables []Variable `json:"variables,omitempty"`
	// StepKey (32 bytes) encrypts, with AES-256-GCM, the values of sensitive
	// output variables that the runner writes to output.log. The agent keeps
	// it, encrypted, in its journal.
	StepKey []byte `json:"step_key,omitempty"`
}

// Result is the runner's exit record, in result.json.
type Result struct {
	// ExitCode is the script's exit code; 128+n when signal n ended it.
	ExitCode int `json:"exit_code"`
	// Signal names the signal that ended the script ("SIGTERM"), if any.
	Signal string `json:"signal,omitempty"`
	// Message is the script's own reason (fail_step, else resultMessage),
	// or the runner's when it could not run the script at all.
	Message string `json:"message,omitempty"`
	// ResultMessage is the script's last resultMessage (Octopus's service
	// message): the reason its result reads with, also when it succeeded.
	ResultMessage string `json:"result_message,omitempty"`
	// RunnerError is true when the runner failed, not the script: bad spec,
	// secrets not delivered, an interpreter missing.
	RunnerError bool `json:"runner_error,omitempty"`
	// LastSequence is the sequence of the last record in output.log, so a
	// reader knows when it has them all.
	LastSequence uint64    `json:"last_sequence"`
	StartedAt    time.Time `json:"started_at"`
	FinishedAt   time.Time `json:"finished_at"`
}

// Duration is a time.Duration that reads and writes as a string ("10s").
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// WriteJSON writes v as JSON to path, atomically.
func WriteJSON(path string, v any, mode os.FileMode) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", filepath.Base(path), err)
	}
	return fsutil.WriteFileAtomic(path, append(b, '\n'), mode)
}

// ReadJSON reads the JSON file at path into v.
func ReadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}
