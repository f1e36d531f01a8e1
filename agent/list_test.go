package agent_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"stevedore/agent"
	pb "stevedore/proto/stevedore/v1"
)

// GET /steps beside the metrics lists what the agent holds, oldest first,
// narrowed by ?state=, and never a script, variable or secret.
func TestStepsHandlerListsTheSteps(t *testing.T) {
	ta := startAgent(t)
	collected, ended, running := ticket(t), ticket(t), ticket(t)
	ta.run(t, &pb.StartStepRequest{Ticket: collected, Execution: host(), Script: bash("echo one")})
	ta.complete(t, collected)
	ta.run(t, &pb.StartStepRequest{Ticket: ended, TaskId: "task-7", StepName: "Deploy", Execution: host(), Script: bash("exit 4")})
	if _, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: running, Execution: host(),
		Variables: []*pb.Variable{{Name: "Token", Value: "very-secret-token", Sensitive: true}},
		Script:    bash("echo started; sleep 600")}); err != nil {
		t.Fatal(err)
	}
	waitForLine(t, ta, running, "started")
	defer func() {
		ta.client.CancelStep(context.Background(), &pb.CancelStepRequest{Ticket: running})
		ta.follow(t, running)
	}()
	get := func(query string) (string, []agent.StepSummary) {
		t.Helper()
		rr := httptest.NewRecorder()
		ta.agent.StepsHandler().ServeHTTP(rr, httptest.NewRequest("GET", "/steps"+query, nil))
		var out []agent.StepSummary
		if err := json.Unmarshal(rr.Body.Bytes(), &out); err != nil {
			t.Fatalf("%s: %v", rr.Body, err)
		}
		return rr.Body.String(), out
	}
	body, all := get("")
	if len(all) != 3 || all[0].Ticket != collected || all[1].Ticket != ended || all[2].Ticket != running {
		t.Fatalf("steps %s", body)
	}
	if s := all[0]; !s.Collected || s.Outcome != "SUCCEEDED" {
		t.Errorf("the collected step: %+v", s)
	}
	if s := all[1]; s.State != "COMPLETE" || s.Outcome != "FAILED" || s.ExitCode == nil || *s.ExitCode != 4 || s.TaskID != "task-7" || s.StepName != "Deploy" || s.Collected {
		t.Errorf("the ended step: %+v", s)
	}
	if s := all[2]; s.State != "RUNNING" || s.Outcome != "" || s.Started.IsZero() {
		t.Errorf("the running step: %+v", s)
	}
	for _, secret := range []string{"very-secret-token", "sleep 600", "Token"} {
		if strings.Contains(body, secret) {
			t.Errorf("the list shows %q", secret)
		}
	}
	if _, running := get("?state=running"); len(running) != 1 || running[0].State != "RUNNING" {
		t.Errorf("?state=running: %+v", running)
	}
}
