package agent_test

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"stevedore/internal/version"
	pb "stevedore/proto/stevedore/v1"
)

// scrape returns the agent's metrics in the text exposition format.
func scrape(t *testing.T, ta *testAgent) string {
	t.Helper()
	rec := httptest.NewRecorder()
	ta.agent.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	b, err := io.ReadAll(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// metricValue is the value of one series (name and labels as exposed), or
// -1 when the series is absent.
func metricValue(t *testing.T, body, series string) float64 {
	t.Helper()
	for line := range strings.Lines(body) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), series+" ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		return v
	}
	return -1
}

func TestMetricsCountSteps(t *testing.T) {
	ta := startAgent(t)
	// A second agent in the same process: its own registry, its own counts.
	other := startAgent(t)

	steps := []struct {
		script string
		want   pb.Outcome
	}{
		{"echo one; echo two >&2; exit 3", pb.Outcome_OUTCOME_FAILED},
		{"echo fine", pb.Outcome_OUTCOME_SUCCEEDED},
	}
	for _, s := range steps {
		run := ta.run(t, &pb.StartStepRequest{Ticket: ticket(t), Script: bash(s.script), Execution: host()})
		if got := run.final.GetOutcome(); got != s.want {
			t.Fatalf("%q: outcome %v, want %v (%s)", s.script, got, s.want, run.final.GetReason())
		}
	}

	body := scrape(t, ta)
	tests := []struct {
		series string
		want   float64
	}{
		{"stevedore_agent_steps_started_total", 2},
		{`stevedore_agent_steps_finished_total{outcome="FAILED"}`, 1},
		{`stevedore_agent_steps_finished_total{outcome="SUCCEEDED"}`, 1},
		{`stevedore_agent_step_duration_seconds_count{outcome="FAILED"}`, 1},
		{"stevedore_agent_steps_running", 0},
		{"stevedore_agent_steps_waiting", 0},
		{"stevedore_agent_max_concurrent_steps", 4},
		{"stevedore_agent_accepting_steps", 1},
		{fmt.Sprintf(`stevedore_agent_info{protocol="%d",version=%q}`, version.Protocol, version.Version), 1},
	}
	for _, tt := range tests {
		if got := metricValue(t, body, tt.series); got != tt.want {
			t.Errorf("%s = %v, want %v", tt.series, got, tt.want)
		}
	}
	// Three lines of the scripts, whatever the agent added.
	if got := metricValue(t, body, "stevedore_agent_log_lines_total"); got < 3 {
		t.Errorf("stevedore_agent_log_lines_total = %v, want at least 3", got)
	}
	for _, name := range []string{"stevedore_agent_docker_engine_available", "stevedore_agent_cached_images", "stevedore_agent_cached_image_bytes"} {
		if metricValue(t, body, name) < 0 {
			t.Errorf("%s missing", name)
		}
	}
	if strings.Contains(body, `ticket="`) {
		t.Error("a metric is labelled by ticket")
	}

	// Draining (it holds no step, so the drain is over at once), it says so.
	if err := other.agent.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := metricValue(t, scrape(t, other), "stevedore_agent_accepting_steps"); got != 0 {
		t.Errorf("a draining agent's accepting_steps = %v, want 0", got)
	}
	if got := metricValue(t, scrape(t, other), "stevedore_agent_steps_started_total"); got != 0 {
		t.Errorf("the other agent's steps_started_total = %v, want 0", got)
	}
}
