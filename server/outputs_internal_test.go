package server

import (
	"encoding/json"
	"maps"
	"slices"
	"testing"

	"github.com/hashicorp/go-hclog"

	"stevedore/internal/seal"
	pb "stevedore/proto/stevedore/v1"
)

// recordOutputs keeps the last value of a name, as the agent does; a name
// is sensitive if its last value is; none sealed when none is sensitive.
func TestRecordOutputs(t *testing.T) {
	box, err := seal.New(make([]byte, 16))
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{keys: box, log: hclog.NewNullLogger()}
	ov := func(name, value string, sensitive bool) *pb.OutputVariable {
		return &pb.OutputVariable{Name: name, Value: value, Sensitive: sensitive}
	}
	tests := []struct {
		name        string
		vars        []*pb.OutputVariable
		shown       map[string]string
		sensitive   map[string]string // sealed
		sensitiveOf []string
	}{
		{"none", nil, map[string]string{}, nil, nil},
		{"plain only", []*pb.OutputVariable{ov("A", "1", false)}, map[string]string{"A": "1"}, nil, nil},
		{"plain and sensitive", []*pb.OutputVariable{ov("B", "b", true), ov("A", "1", false)},
			map[string]string{"A": "1", "B": SensitiveMask}, map[string]string{"B": "b"}, []string{"B"}},
		{"sensitive, then plain", []*pb.OutputVariable{ov("A", "s", true), ov("A", "p", false)}, map[string]string{"A": "p"}, nil, nil},
		{"plain, then sensitive", []*pb.OutputVariable{ov("A", "p", false), ov("A", "s", true)},
			map[string]string{"A": SensitiveMask}, map[string]string{"A": "s"}, []string{"A"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A record that had outputs (a step run again) loses them.
			rec := StepRecord{ID: "s1", OutputVariables: map[string]string{"Old": "x"}, SensitiveOutputs: []string{"Old"}, SealedOutputs: []byte("old")}
			s.recordOutputs(&rec, tt.vars)
			if !maps.Equal(rec.OutputVariables, tt.shown) || !slices.Equal(rec.SensitiveOutputs, tt.sensitiveOf) {
				t.Errorf("outputs %v, sensitive %v; want %v, %v", rec.OutputVariables, rec.SensitiveOutputs, tt.shown, tt.sensitiveOf)
			}
			if tt.sensitive == nil {
				if rec.SealedOutputs != nil {
					t.Errorf("sealed %q with nothing sensitive", rec.SealedOutputs)
				}
				return
			}
			plain, err := box.Open(rec.SealedOutputs)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]string
			if err := json.Unmarshal(plain, &got); err != nil || !maps.Equal(got, tt.sensitive) {
				t.Errorf("sealed %s (%v), want %v", plain, err, tt.sensitive)
			}
		})
	}
}
