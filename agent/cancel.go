package agent

import (
	"fmt"
	"time"

	"stevedore/executor"
)

// A stopped step's exit record says which signal ended it, in the spirit of
// Buildkite's exit records: code + signal + why. The stop itself (cancel,
// timeout) is s.stopDetail; stopEnding adds how the script took it.

// stopEnding describes how a stopped step's script ended, given its exit
// code and the signal that ended it as the runner recorded them:
//
//	ended by SIGTERM
//	exited with code 3 after SIGTERM
//	ignored SIGTERM for 5s, killed with SIGKILL
func (s *step) stopEnding(code int, signal string) string {
	s.mu.Lock()
	grace, termed := s.stopGrace, s.stopGrace > 0
	s.mu.Unlock()
	switch {
	case !termed && signal == "":
		// Ended on its own before the agent signalled it.
		return fmt.Sprintf("the script exited with code %d", code)
	case !termed:
		return "ended by " + signal
	case signal == "SIGKILL":
		return fmt.Sprintf("ignored SIGTERM for %s, killed with SIGKILL", graceText(grace))
	case signal != "":
		return "ended by " + signal
	}
	return fmt.Sprintf("exited with code %d after SIGTERM", code)
}

// stopEndingNoRecord describes how a stopped step ended whose runner left
// no exit record: the agent (or the engine) killed the runner itself.
func (s *step) stopEndingNoRecord(signal string) string {
	s.mu.Lock()
	grace, killed := s.stopGrace, s.agentKilled
	s.mu.Unlock()
	switch {
	case killed:
		return fmt.Sprintf("ignored SIGTERM for %s (the runner too), killed with SIGKILL", graceText(grace+killMargin))
	case signal != "":
		return "ended by " + signal + " before its runner wrote an exit record"
	}
	return "ended without an exit record"
}

func graceText(d time.Duration) string {
	if d <= 0 {
		return "the grace period"
	}
	return d.Round(time.Millisecond).String()
}

// preparingWhen says what a step stopped during Prepare was doing.
func preparingWhen(spec *executor.Spec) string {
	if spec.Container != nil {
		return "while it pulled its image or prepared its container"
	}
	return "before it started"
}
