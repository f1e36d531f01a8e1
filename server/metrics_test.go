package server_test

import (
	"io"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"stevedore/server"
)

// scrapeServer returns the server's /metrics, asked without credentials.
func scrapeServer(t *testing.T, e *env) string {
	t.Helper()
	rec := httptest.NewRecorder()
	e.srv.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("GET /metrics without credentials: %d %s", rec.Code, rec.Body)
	}
	b, err := io.ReadAll(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// seriesValue is the value of one series as exposed, or -1 when absent.
func seriesValue(t *testing.T, body, series string) float64 {
	t.Helper()
	for line := range strings.Lines(body) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
			v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return v
		}
	}
	return -1
}

func TestMetricsServer(t *testing.T) {
	e := newEnv(t)
	e.pollingAgent("w1", 2)
	// The worker connects in the background: wait until the server has it.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if seriesValue(t, scrapeServer(t, e), "stevedore_server_workers_connected") == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the worker did not connect")
		}
	}
	idle := scrapeServer(t, e)
	for _, series := range []string{"stevedore_server_slots", "stevedore_server_free_slots"} {
		if got := seriesValue(t, idle, series); got != 2 {
			t.Errorf("%s = %v before the step, want 2", series, got)
		}
	}
	rec, err := e.srv.Submit(server.SubmitRequest{Pool: "linux", Step: numbered(5, "0")})
	if err != nil {
		t.Fatal(err)
	}
	entries, final := e.waitComplete(rec.ID)
	if final.Outcome != "FAILED" {
		t.Fatalf("outcome %q, want FAILED", final.Outcome)
	}

	body := scrapeServer(t, e)
	tests := []struct {
		series string
		want   float64
	}{
		{"stevedore_server_steps_submitted_total", 1},
		{`stevedore_server_steps_completed_total{outcome="FAILED"}`, 1},
		{`stevedore_server_steps_completed_total{outcome="SUCCEEDED"}`, 0},
		{"stevedore_server_steps_queued", 0},
		{"stevedore_server_steps_running", 0},
		{"stevedore_server_free_slots", 2}, // given back before the end is recorded
		{"stevedore_server_workers_known", 1},
		{"stevedore_server_workers_connected", 1},
		{"stevedore_server_task_log_lines_total", float64(len(entries))},
	}
	for _, tt := range tests {
		if got := seriesValue(t, body, tt.series); got != tt.want {
			t.Errorf("%s = %v, want %v", tt.series, got, tt.want)
		}
	}
	// The API itself still wants credentials.
	rr := httptest.NewRecorder()
	e.srv.Handler().ServeHTTP(rr, httptest.NewRequest("GET", "/api/steps", nil))
	if rr.Code != 401 {
		t.Errorf("GET /api/steps without credentials: %d, want 401", rr.Code)
	}
}
