package agent_test

import (
	"fmt"
	"slices"
	"testing"

	pb "stevedore/proto/stevedore/v1"
)

// resultMessage is the line Octopus's helpers print for a resultMessage.
func resultMessage(msg string) string {
	return fmt.Sprintf("echo \"##octopus[resultMessage message='$(printf %%s '%s' | base64)']\"\n", msg)
}

// TestLevelsAndResultMessage: a step's level switches reach the client on
// each line, and its resultMessage is the final status's reason, on a
// success as on a failure, unless failStep gave one.
func TestLevelsAndResultMessage(t *testing.T) {
	ta := startAgent(t)
	type seen struct {
		source pb.LogSource
		level  pb.LogLevel
		text   string
	}
	tests := []struct {
		name        string
		script      string
		wantOutcome pb.Outcome
		wantReason  string
		wantLines   []seen // the STDOUT and STDERR lines
	}{
		{"levels, then a result message on success", "echo '##octopus[stdout-warning]'; echo careful; echo '##octopus[stdout-default]'; echo plain\n" +
			"echo '##octopus[stdout-verbose]'; echo detail; echo oops >&2; echo '##octopus[stdout-highlight]'; echo v2 is live\n" + resultMessage("deployed v2"),
			pb.Outcome_OUTCOME_SUCCEEDED, "deployed v2", []seen{
				{pb.LogSource_LOG_SOURCE_STDOUT, pb.LogLevel_LOG_LEVEL_WARNING, "careful"},
				{pb.LogSource_LOG_SOURCE_STDOUT, pb.LogLevel_LOG_LEVEL_UNSPECIFIED, "plain"},
				{pb.LogSource_LOG_SOURCE_STDOUT, pb.LogLevel_LOG_LEVEL_VERBOSE, "detail"},
				{pb.LogSource_LOG_SOURCE_STDERR, pb.LogLevel_LOG_LEVEL_UNSPECIFIED, "oops"},
				{pb.LogSource_LOG_SOURCE_STDOUT, pb.LogLevel_LOG_LEVEL_HIGHLIGHT, "v2 is live"},
			}},
		{"Octopus's fail_step", "echo '##octopus[stdout-error]'; echo no database\n" + resultMessage("the database is down") + "exit 1\n",
			pb.Outcome_OUTCOME_FAILED, "the database is down", []seen{
				{pb.LogSource_LOG_SOURCE_STDOUT, pb.LogLevel_LOG_LEVEL_ERROR, "no database"},
			}},
		{"failStep wins", resultMessage("deployed") + "fail_step 'smoke test failed'\n",
			pb.Outcome_OUTCOME_FAILED, "smoke test failed", nil},
		{"no result message", "echo '##octopus[stdout-wait]'; echo waiting for the lock\n",
			pb.Outcome_OUTCOME_SUCCEEDED, "", []seen{
				{pb.LogSource_LOG_SOURCE_STDOUT, pb.LogLevel_LOG_LEVEL_WAIT, "waiting for the lock"},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tk := ticket(t)
			run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Execution: host(), Script: bash(tt.script)})
			defer ta.complete(t, tk)
			if run.final.GetOutcome() != tt.wantOutcome || run.final.GetReason() != tt.wantReason {
				t.Fatalf("outcome %s, reason %q; want %s, %q (agent lines %q)", run.final.GetOutcome(), run.final.GetReason(), tt.wantOutcome, tt.wantReason, run.agent)
			}
			var got []seen
			for _, l := range run.lines {
				switch l.GetSource() {
				case pb.LogSource_LOG_SOURCE_STDOUT, pb.LogSource_LOG_SOURCE_STDERR:
					got = append(got, seen{l.GetSource(), l.GetLevel(), string(l.GetText())})
				default:
					if l.GetLevel() != pb.LogLevel_LOG_LEVEL_UNSPECIFIED {
						t.Errorf("agent line %q has level %s", l.GetText(), l.GetLevel())
					}
				}
			}
			// Per source: the order between stdout and stderr is the pipes'.
			for _, src := range []pb.LogSource{pb.LogSource_LOG_SOURCE_STDOUT, pb.LogSource_LOG_SOURCE_STDERR} {
				of := func(s []seen) []seen {
					return slices.DeleteFunc(slices.Clone(s), func(x seen) bool { return x.source != src })
				}
				if g, w := of(got), of(tt.wantLines); fmt.Sprint(g) != fmt.Sprint(w) {
					t.Fatalf("%s lines %v, want %v", src, g, w)
				}
			}
			if tt.wantReason != "" && tt.wantOutcome == pb.Outcome_OUTCOME_SUCCEEDED &&
				!slices.Contains(run.agent, "result message: "+tt.wantReason) {
				t.Fatalf("agent lines %q: the result message is not in the log", run.agent)
			}
		})
	}
}

// TestLevelsAndReasonAfterRestart: levels come from output.log and the
// reason from the journal, so a restarted agent serves both as before.
func TestLevelsAndReasonAfterRestart(t *testing.T) {
	ta := startAgent(t)
	tk := ticket(t)
	first := ta.run(t, &pb.StartStepRequest{Ticket: tk, Execution: host(),
		Script: bash("echo '##octopus[stdout-highlight]'; echo big news; echo '##octopus[stdout-default]'; echo plain\n" + resultMessage("all good"))})
	ta.stop()
	ta.start()
	again := ta.follow(t, tk)
	defer ta.complete(t, tk)
	levels := func(r *stepRun) []string {
		var out []string
		for _, l := range r.lines {
			out = append(out, fmt.Sprintf("%s %s %q", l.GetSource(), l.GetLevel(), l.GetText()))
		}
		return out
	}
	if !slices.Equal(levels(again), levels(first)) || again.final.GetReason() != "all good" {
		t.Fatalf("after the restart %q, reason %q; before %q", levels(again), again.final.GetReason(), levels(first))
	}
	if !slices.Contains(levels(first), `LOG_SOURCE_STDOUT LOG_LEVEL_HIGHLIGHT "big news"`) {
		t.Fatalf("lines %q", levels(first))
	}
}
