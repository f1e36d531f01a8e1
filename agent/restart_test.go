package agent_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"stevedore/executor"
	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/registry"
)

// A step keeps running while the agent is down, and the next agent process
// delivers every line once and the real exit code.
func TestStepSurvivesAgentRestart(t *testing.T) {
	tests := []struct {
		name string
		exec *pb.Execution
	}{
		{"host", host()},
		{"container", inContainer(testenv.Bookworm)},
	}
	withImages(t, testenv.Bookworm)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := startAgent(t)
			tk := ticket(t)
			_, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tk, Execution: tt.exec,
				Script: bash("for i in $(seq 1 30); do echo line $i; sleep 0.1; done; exit 7")})
			if err != nil {
				t.Fatal(err)
			}
			waitForLine(t, ta, tk, "line 5")
			ta.stop()
			time.Sleep(500 * time.Millisecond) // lines keep coming while no agent runs
			ta.start()
			run := ta.follow(t, tk)
			if exitCode(run.final) != 7 || run.final.GetOutcome() != pb.Outcome_OUTCOME_FAILED {
				t.Fatalf("exit %d outcome %v (%s)", exitCode(run.final), run.final.GetOutcome(), run.final.GetReason())
			}
			if len(run.stdout) != 30 {
				t.Fatalf("%d lines after the restart, want 30: %q", len(run.stdout), run.stdout)
			}
			for i, l := range run.stdout {
				if l != fmt.Sprintf("line %d", i+1) {
					t.Fatalf("line %d is %q", i+1, l)
				}
			}
			ta.complete(t, tk)
		})
	}
}

// What the agent learnt of an image (its record and its probe verdict)
// outlives the agent process.
func TestImageRecordsAndVerdictsSurviveRestart(t *testing.T) {
	withImages(t, testenv.Bookworm)
	ta := startAgent(t)
	tk := ticket(t)
	req := &pb.StartStepRequest{Ticket: tk, Script: bash("true"), Execution: &pb.Execution{Target: &pb.Execution_Container{Container: &pb.ContainerExecution{
		Image: testenv.Bookworm, PullPolicy: pb.PullPolicy_PULL_POLICY_ALWAYS,
		Credentials: &pb.RegistryCredentials{Username: testenv.RegistryUser, Password: testenv.RegistryPassword}}}}}
	run := ta.run(t, req)
	if run.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("%v %s", run.final.GetOutcome(), run.final.GetReason())
	}
	ta.complete(t, tk)
	ta.stop()
	store, err := registry.OpenStore(ta.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	var imageID string
	for _, r := range store.All() {
		if slices.Contains(r.Refs, testenv.Bookworm) {
			imageID = r.ImageID
		}
	}
	bundle, _ := executor.LoadBundle(testenv.BundleDir(t))
	_, hasVerdict := store.GetVerdict(imageID + "/" + bundle.Manifest.Requires.Key())
	store.Close()
	if imageID == "" || !hasVerdict {
		t.Fatalf("after a restart: image record %q, verdict %v", imageID, hasVerdict)
	}
	ta.start()
	caps, err := ta.client.GetCapabilities(context.Background(), &pb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(caps.GetCachedImages()) == 0 || caps.GetCachedImages()[0].GetImageId() != imageID {
		t.Errorf("cached images after restart: %v", caps.GetCachedImages())
	}
}
