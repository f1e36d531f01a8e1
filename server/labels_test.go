package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
)

// labelled is an agent reporting labels, as `stevedore agent --label` does.
type labelled struct {
	pb.AgentServer
	labels map[string]string
}

func (l labelled) GetCapabilities(ctx context.Context, req *pb.GetCapabilitiesRequest) (*pb.Capabilities, error) {
	caps, err := l.AgentServer.GetCapabilities(ctx, req)
	if caps != nil {
		caps.Labels = l.labels
	}
	return caps, err
}

// A step that asks for labels goes only to a worker of its pool that has
// them all; one that no worker matches waits, saying which labels.
func TestDispatchByLabels(t *testing.T) {
	e := newEnv(t)
	for name, labels := range map[string]map[string]string{
		"a-small": {"zone": "a", "size": "small"},
		"a-large": {"zone": "a", "size": "large"},
		"b-large": {"zone": "b", "size": "large"},
	} {
		e.pollingAgentServing(name, 4, e.addr, func(a pb.AgentServer) pb.AgentServer { return labelled{a, labels} })
	}
	tests := []struct {
		labels map[string]string
		want   []string // the workers that may take it
	}{
		{map[string]string{"zone": "a"}, []string{"a-small", "a-large"}},
		{map[string]string{"zone": "b", "size": "large"}, []string{"b-large"}},
		{map[string]string{"size": "large"}, []string{"a-large", "b-large"}},
		{nil, []string{"a-small", "a-large", "b-large"}},
	}
	for _, tt := range tests {
		for range 3 {
			rec, err := e.srv.Submit(server.SubmitRequest{Pool: "linux", Labels: tt.labels, Step: numbered(1, "0")})
			if err != nil {
				t.Fatal(err)
			}
			if _, final := e.waitComplete(rec.ID); !strings.Contains(strings.Join(tt.want, " "), final.Assigned) || final.Assigned == "" {
				t.Errorf("labels %v: ran on %q, want one of %v", tt.labels, final.Assigned, tt.want)
			}
		}
	}
	a := e.api()
	rec := a.submit(map[string]any{"pool": "linux", "labels": map[string]string{"zone": "c"}}, numbered(1, "0"))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		v := a.step(rec.ID)
		if v.State != server.StateQueued {
			t.Fatalf("a step no worker matches went %s", v.State)
		}
		if strings.Contains(v.WaitingFor, "zone=c") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %q: want the labels named", v.WaitingFor)
		}
	}
}

// A step no worker takes within its queue timeout ends TIMED_OUT, saying
// why it waited; one a worker takes in time runs as usual.
func TestQueueTimeout(t *testing.T) {
	e := newEnv(t)
	e.pollingAgent("w1", 1)
	a := e.api()
	late := a.submit(map[string]any{"pool": "nowhere", "queue_timeout": "1s"}, numbered(1, "0"))
	prompt := a.submit(map[string]any{"pool": "linux", "queue_timeout": "1m"}, numbered(1, "0"))
	_, final := e.waitComplete(late.ID)
	if final.Outcome != "TIMED_OUT" || !strings.Contains(final.Reason, "within 1s") || !strings.Contains(final.Reason, "nowhere") || final.Assigned != "" {
		t.Errorf("outcome %q reason %q assigned %q: want TIMED_OUT in the queue, saying why", final.Outcome, final.Reason, final.Assigned)
	}
	if _, final := e.waitComplete(prompt.ID); final.Outcome != "FAILED" || final.Assigned != "w1" {
		t.Errorf("the step a worker took in time: outcome %q on %q, want FAILED (exit 3) on w1", final.Outcome, final.Assigned)
	}
}
