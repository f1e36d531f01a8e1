package agent

import (
	"testing"
	"time"
)

func TestStopEnding(t *testing.T) {
	tests := []struct {
		name     string
		grace    time.Duration // 0: SIGTERM was never sent
		killed   bool
		code     int
		signal   string
		noRecord bool
		want     string
	}{
		{"ended by TERM", 5 * time.Second, false, 143, "SIGTERM", false, "ended by SIGTERM"},
		{"trapped TERM", 5 * time.Second, false, 3, "", false, "exited with code 3 after SIGTERM"},
		{"ignored TERM", 5 * time.Second, false, 137, "SIGKILL", false, "ignored SIGTERM for 5s, killed with SIGKILL"},
		{"ended on its own first", 0, false, 0, "", false, "the script exited with code 0"},
		{"runner killed by the agent", 2 * time.Second, true, -1, "SIGKILL", true, "ignored SIGTERM for 5s (the runner too), killed with SIGKILL"},
		{"runner ended by a signal", 2 * time.Second, false, -1, "SIGTERM", true, "ended by SIGTERM before its runner wrote an exit record"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &step{stopGrace: tt.grace, agentKilled: tt.killed}
			got := s.stopEnding(tt.code, tt.signal)
			if tt.noRecord {
				got = s.stopEndingNoRecord(tt.signal)
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
