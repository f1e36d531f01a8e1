package agent_test

import (
	"fmt"
	"strings"
	"testing"

	"stevedore/agent"
	pb "stevedore/proto/stevedore/v1"
)

// A step whose output passes the agent's log limit runs on to its end: the
// log keeps the output up to the limit and says where and how much it cut,
// and service messages past the limit still set output variables.
func TestLogLimitCutsTheLogNotTheStep(t *testing.T) {
	ta := startAgent(t, func(c *agent.Config) { c.MaxLogSize = 10 << 10 })
	line := strings.Repeat("x", 99) // 100 bytes a line with its '\n', 99 kept
	run := ta.run(t, &pb.StartStepRequest{Ticket: ticket(t), Execution: host(), Script: bash(fmt.Sprintf(`
for i in $(seq 1 1000); do echo %s; done
echo to-stderr >&2
set_variable After "the limit"
exit 4`, line))})
	if run.final.GetOutcome() != pb.Outcome_OUTCOME_FAILED || exitCode(run.final) != 4 {
		t.Fatalf("outcome %v code %d (%s), want FAILED 4", run.final.GetOutcome(), exitCode(run.final), run.final.GetReason())
	}
	if want := 10 << 10 / 99; len(run.stdout) != want {
		t.Errorf("%d stdout lines kept, want %d (10 KiB of 99-byte lines)", len(run.stdout), want)
	}
	kept := 10 << 10 / 99
	want := []string{
		"stevedore-step: the step's output reached its log limit of 10KiB: what it writes from here on is counted, not kept; service messages still work",
		fmt.Sprintf("stevedore-step: %d bytes of output in %d records were not kept: the log limit is 10KiB", (1000-kept)*99+len("to-stderr"), 1000-kept+1),
	}
	if fmt.Sprint(run.stderr) != fmt.Sprint(want) {
		t.Errorf("stderr %q\nwant %q", run.stderr, want)
	}
	vars := map[string]string{}
	for _, v := range run.final.GetOutputVariables() {
		vars[v.GetName()] = v.GetValue()
	}
	if vars["After"] != "the limit" {
		t.Errorf("output variables %v: the service message past the limit was lost", vars)
	}
}
