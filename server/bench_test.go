package server_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
)

// BenchmarkHostStep compares a trivial host step submitted to the server
// (queue, dispatch over a polling connection, task log, completion) with
// the same step driven straight on an agent over gRPC, in one run:
//
//	go test -run '^$' -bench HostStep -benchtime 30x ./server/
//
// The ratio of the two is the server's overhead per step.
func BenchmarkHostStep(b *testing.B) {
	step := &pb.StartStepRequest{Execution: &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}},
		Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: "echo one line"}}
	b.Run("through-server", func(b *testing.B) {
		e := newEnv(b)
		e.pollingAgent("w1", 4)
		for b.Loop() {
			rec, err := e.srv.Submit(server.SubmitRequest{Worker: "w1", Step: step})
			if err != nil {
				b.Fatal(err)
			}
			if _, final := e.waitComplete(rec.ID); final.Outcome != "SUCCEEDED" {
				b.Fatalf("final %+v", final)
			}
		}
	})
	b.Run("direct-to-agent", func(b *testing.B) {
		e := newEnv(b)
		client := e.listeningAgent("l1")
		ctx := context.Background()
		i := 0
		for b.Loop() {
			i++
			req := &pb.StartStepRequest{Ticket: fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), i), Execution: step.Execution, Script: step.Script}
			if _, err := client.StartStep(ctx, req); err != nil {
				b.Fatal(err)
			}
			var after uint64
			for {
				st, err := client.GetStatus(ctx, &pb.GetStatusRequest{Ticket: req.Ticket, AfterSequence: after, Wait: durationpb.New(10 * time.Second)})
				if err != nil {
					b.Fatal(err)
				}
				if n := len(st.GetLines()); n > 0 {
					after = st.GetLines()[n-1].GetSequence()
				}
				if st.GetState() == pb.StepState_STEP_STATE_COMPLETE && after+1 >= st.GetNextSequence() {
					break
				}
			}
			if _, err := client.CompleteStep(ctx, &pb.CompleteStepRequest{Ticket: req.Ticket, AfterSequence: after}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
