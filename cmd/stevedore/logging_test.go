package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestLogOptions(t *testing.T) {
	tests := []struct {
		level, format string
		wantErr       string
		wantJSON      bool
	}{
		{"info", "text", "", false},
		{"debug", "json", "", true},
		{"WARN", "JSON", "", true},
		{"loud", "text", `--log-level "loud"`, false},
		{"info", "xml", `--log-format "xml"`, false},
	}
	for _, tt := range tests {
		t.Run(tt.level+"/"+tt.format, func(t *testing.T) {
			var out bytes.Buffer
			l := logOptions{level: tt.level, format: tt.format}
			log, err := l.logger(&out)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			log.Error("step complete", "ticket", "t1")
			var rec map[string]any
			isJSON := json.Unmarshal(out.Bytes(), &rec) == nil
			if isJSON != tt.wantJSON || tt.wantJSON && (rec["ticket"] != "t1" || rec["@message"] != "step complete") {
				t.Errorf("output %q: JSON %v, want %v", out.String(), isJSON, tt.wantJSON)
			}
		})
	}
}
