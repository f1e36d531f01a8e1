package server

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"

	pb "stevedore/proto/stevedore/v1"
)

// SensitiveMask stands for a sensitive output variable's value wherever a
// step is shown; the runner masks sensitive values in the log with it too.
const SensitiveMask = "********"

// ErrOutputsUnreadable is wrapped when a step's sealed output variables
// cannot be opened (another master key, or altered).
var ErrOutputsUnreadable = errors.New("the step's sensitive output variables cannot be opened")

// recordOutputs puts a finished step's output variables in rec: the plain
// ones as they are, the sensitive ones masked in OutputVariables, named in
// SensitiveOutputs and their values sealed with the master key in
// SealedOutputs, so that no copy of the record (the database, a backup, an
// API answer) holds them in the clear.
func (s *Server) recordOutputs(rec *StepRecord, vars []*pb.OutputVariable) {
	rec.OutputVariables = map[string]string{}
	rec.SensitiveOutputs, rec.SealedOutputs = nil, nil
	sensitive := map[string]string{}
	for _, v := range vars {
		// The agent keeps one value per name; should a name come twice,
		// the later one wins, as it does on the agent.
		if v.GetSensitive() {
			sensitive[v.GetName()] = v.GetValue()
			rec.OutputVariables[v.GetName()] = SensitiveMask
		} else {
			delete(sensitive, v.GetName())
			rec.OutputVariables[v.GetName()] = v.GetValue()
		}
	}
	if len(sensitive) == 0 {
		return
	}
	rec.SensitiveOutputs = slices.Sorted(maps.Keys(sensitive))
	plain, err := json.Marshal(sensitive)
	if err == nil {
		rec.SealedOutputs, err = s.keys.Seal(plain)
	}
	if err != nil {
		// Never the values in the clear instead: they stay masked, and
		// GET .../outputs says they are gone.
		s.log.Error("sensitive output variables not kept", "step", rec.ID, "error", err)
	}
}

// StepOutputs is the answer of GET /api/steps/{id}/outputs: every output
// variable with its value, sensitive ones too.
type StepOutputs struct {
	ID              string            `json:"id"`
	State           string            `json:"state"`
	OutputVariables map[string]string `json:"output_variables"`
	// Sensitive names the variables whose values the step views mask.
	Sensitive []string `json:"sensitive_outputs,omitempty"`
}

// Outputs returns step id's output variables with the sensitive ones'
// values opened. They are known once the step is complete; before, none.
func (s *Server) Outputs(id string) (StepOutputs, error) {
	rec, ok := s.Step(id)
	if !ok {
		return StepOutputs{}, fmt.Errorf("%w: %s", ErrUnknownStep, id)
	}
	out := StepOutputs{ID: rec.ID, State: rec.State, OutputVariables: map[string]string{}, Sensitive: rec.SensitiveOutputs}
	maps.Copy(out.OutputVariables, rec.OutputVariables)
	if len(rec.SensitiveOutputs) == 0 {
		return out, nil
	}
	if rec.SealedOutputs == nil {
		return out, fmt.Errorf("%w: step %s: they were not kept", ErrOutputsUnreadable, id)
	}
	plain, err := s.keys.Open(rec.SealedOutputs)
	if err != nil {
		return out, fmt.Errorf("%w: step %s: %w", ErrOutputsUnreadable, id, err)
	}
	var sensitive map[string]string
	if err := json.Unmarshal(plain, &sensitive); err != nil {
		return out, fmt.Errorf("%w: step %s: %w", ErrOutputsUnreadable, id, err)
	}
	maps.Copy(out.OutputVariables, sensitive)
	return out, nil
}

// ownsStep says whether p may act on rec as its owner: an admin on any
// step, an API key on the steps it submitted.
func ownsStep(p principal, rec StepRecord) bool {
	return p.Role == RoleAdmin || (p.KeyID != "" && rec.SubmitterKey == p.KeyID)
}

func (s *Server) apiOutputs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	// Sensitive values go to whoever submitted the step, as its result,
	// and to an admin; not to every reader of the steps.
	p := principalOf(r)
	if rec, ok := s.Step(id); ok && !ownsStep(p, rec) {
		apiError(w, http.StatusForbidden, fmt.Errorf("step %s was submitted by %s: %s may read the output variables of its own steps only (an admin may read any)", rec.ID, cmp.Or(rec.SubmittedBy, "an earlier server"), p.Name))
		return
	}
	out, err := s.Outputs(id)
	switch {
	case errors.Is(err, ErrUnknownStep):
		apiError(w, http.StatusNotFound, err)
	case err != nil:
		apiError(w, http.StatusInternalServerError, err)
	default:
		writeJSON(w, http.StatusOK, out)
	}
}
