package transport

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestIsNotAccepting(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"not a status", errors.New("boom"), false},
		{"a plain Unavailable", status.Error(codes.Unavailable, "connection refused"), false},
		{"draining", NotAccepting(codes.Unavailable, "this agent is draining"), true},
		{"low on disk", NotAccepting(codes.ResourceExhausted, "not enough free disk space"), true},
		{"wrapped", fmt.Errorf("start: %w", NotAccepting(codes.Unavailable, "draining")), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsNotAccepting(tt.err); got != tt.want {
				t.Errorf("IsNotAccepting(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
	if st := status.Convert(NotAccepting(codes.ResourceExhausted, "why")); st.Code() != codes.ResourceExhausted || st.Message() != "why" {
		t.Errorf("the refusal keeps its code and message: %v", st)
	}
}
