package server_test

import (
	"testing"

	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
)

// Dispatch prefers, among free workers, one whose agent has the step's
// image cached, so that a pool pulls an image once rather than once per
// worker; a step's completion refreshes what its worker has cached.
func TestDispatchPrefersAWorkerWithTheImage(t *testing.T) {
	cli, _ := testenv.Docker(t)
	testenv.Image(t, cli, testenv.Bookworm)
	e := newEnv(t)
	e.pollingAgent("w1", 2)
	e.pollingAgent("w2", 2)
	step := func() *pb.StartStepRequest {
		return &pb.StartStepRequest{
			Execution: &pb.Execution{Target: &pb.Execution_Container{Container: &pb.ContainerExecution{Image: testenv.Bookworm,
				PullPolicy:  pb.PullPolicy_PULL_POLICY_ALWAYS, // so the agent pulls it, and counts it as cached
				Credentials: &pb.RegistryCredentials{Username: testenv.RegistryUser, Password: testenv.RegistryPassword}}}},
			Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: "echo hi"}}
	}
	run := func(req server.SubmitRequest) server.StepRecord {
		t.Helper()
		rec, err := e.srv.Submit(req)
		if err != nil {
			t.Fatal(err)
		}
		_, final := e.waitComplete(rec.ID)
		if final.Outcome != "SUCCEEDED" {
			t.Fatalf("outcome %q (%s)", final.Outcome, final.Reason)
		}
		return final
	}
	run(server.SubmitRequest{Worker: "w2", Step: step()})
	cached := map[string]int{}
	for _, w := range e.srv.Workers() {
		cached[w.Name] = w.CachedImages
	}
	if cached["w1"] != 0 || cached["w2"] == 0 {
		t.Fatalf("cached images by worker %v: want w2's step to have cached the image there only", cached)
	}
	for i := range 3 {
		if got := run(server.SubmitRequest{Pool: "linux", Step: step()}); got.Assigned != "w2" {
			t.Fatalf("step %d of the pool ran on %s, not on w2 which has the image", i, got.Assigned)
		}
	}
}
