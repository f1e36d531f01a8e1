package agent

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	pb "stevedore/proto/stevedore/v1"
)

// StepSummary is a step as an operator on the worker sees it: what runs
// here, what waits, what ended and was not collected. It holds no
// variable, script or credential.
type StepSummary struct {
	Ticket   string `json:"ticket"`
	TaskID   string `json:"task_id,omitempty"`
	StepName string `json:"step_name,omitempty"`
	// Image is a container step's image; empty for a host step.
	Image    string    `json:"image,omitempty"`
	ImageID  string    `json:"image_id,omitempty"`
	State    string    `json:"state"`
	Outcome  string    `json:"outcome,omitempty"`
	ExitCode *int32    `json:"exit_code,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Created  time.Time `json:"created_at"`
	Started  time.Time `json:"started_at,omitzero"`
	Finished time.Time `json:"finished_at,omitzero"`
	// Collected: the client completed it; only its tombstone is left.
	Collected bool `json:"collected,omitempty"`
}

// Steps lists the steps the agent knows, oldest first.
func (a *Agent) Steps() []StepSummary {
	a.mu.Lock()
	steps := make([]*step, 0, len(a.steps))
	for _, s := range a.steps {
		steps = append(steps, s)
	}
	a.mu.Unlock()
	out := make([]StepSummary, 0, len(steps))
	for _, s := range steps {
		s.mu.Lock()
		r := s.rec
		s.mu.Unlock()
		sum := StepSummary{Ticket: r.Ticket, TaskID: r.TaskID, StepName: r.StepName, ImageID: r.ImageID,
			State: strings.TrimPrefix(r.State.String(), "STEP_STATE_"), ExitCode: r.ExitCode, Reason: r.Reason,
			Created: r.CreatedAt, Started: r.StartedAt, Finished: r.FinishedAt, Collected: r.Completed}
		if r.Outcome != pb.Outcome_OUTCOME_UNSPECIFIED {
			sum.Outcome = strings.TrimPrefix(r.Outcome.String(), "OUTCOME_")
		}
		var req pb.StartStepRequest
		if proto.Unmarshal(r.Request, &req) == nil {
			sum.Image = req.GetExecution().GetContainer().GetImage()
		}
		out = append(out, sum)
	}
	slices.SortFunc(out, func(x, y StepSummary) int {
		return cmp.Or(x.Created.Compare(y.Created), strings.Compare(x.Ticket, y.Ticket))
	})
	return out
}

// StepsHandler serves Steps as JSON, ?state=RUNNING (or any state) to
// narrow it, beside the metrics: for an operator on the worker.
func (a *Agent) StepsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		want := strings.ToUpper(r.URL.Query().Get("state"))
		out := []StepSummary{}
		for _, s := range a.Steps() {
			if want == "" || s.State == want {
				out = append(out, s)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(out)
	})
}
