package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"stevedore/agent"
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

// What happened to a step while no agent ran is what the next agent
// reports: the real exit code of a step that ended (even if its container
// was removed since, result.json says how it ended), LOST with what is known
// for a step whose container or runner vanished without an exit record.
func TestReattachAfterRestart(t *testing.T) {
	const twoLines = "echo line 1; sleep 1; echo line 2; exit 3"
	const forever = "echo line 1; sleep 120; echo never"
	tests := []struct {
		name       string
		exec       *pb.Execution
		script     string
		whileDown  []func(t *testing.T, ta *testAgent, tk string)
		want       pb.Outcome
		wantCode   int // -1: none
		wantLines  int
		wantReason string // a substring of the reason
	}{
		{"host ended while down", host(), twoLines, down(waitResult), pb.Outcome_OUTCOME_FAILED, 3, 2, "exited with code 3"},
		{"container ended while down", inContainer(testenv.Bookworm), twoLines, down(waitResult), pb.Outcome_OUTCOME_FAILED, 3, 2, "exited with code 3"},
		{"container ended, then removed while down", inContainer(testenv.Bookworm), twoLines, down(waitResult, removeContainer), pb.Outcome_OUTCOME_FAILED, 3, 2, "exited with code 3"},
		{"container vanished while down", inContainer(testenv.Bookworm), forever, down(removeContainer), pb.Outcome_OUTCOME_LOST, -1, 1, "no longer exists"},
		{"host runner killed while down", host(), forever, down(killRunner), pb.Outcome_OUTCOME_LOST, -1, 1, "is gone"},
	}
	withImages(t, testenv.Bookworm)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := startAgent(t)
			tk := ticket(t)
			if _, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tk, Execution: tt.exec, Script: bash(tt.script)}); err != nil {
				t.Fatal(err)
			}
			waitForLine(t, ta, tk, "line 1")
			ta.stop()
			for _, f := range tt.whileDown {
				f(t, ta, tk)
			}
			ta.start()
			run := ta.follow(t, tk)
			if got := run.final.GetOutcome(); got != tt.want || exitCode(run.final) != tt.wantCode {
				t.Fatalf("outcome %v exit %d (%s), want %v exit %d", got, exitCode(run.final), run.final.GetReason(), tt.want, tt.wantCode)
			}
			if !strings.Contains(run.final.GetReason(), tt.wantReason) {
				t.Errorf("reason %q does not say %q", run.final.GetReason(), tt.wantReason)
			}
			if len(run.stdout) != tt.wantLines {
				t.Errorf("stdout %q, want %d lines", run.stdout, tt.wantLines)
			}
			ta.complete(t, tk)
		})
	}
}

func down(fs ...func(t *testing.T, ta *testAgent, tk string)) []func(t *testing.T, ta *testAgent, tk string) {
	return fs
}

// waitResult waits for the step's runner to write result.json.
func waitResult(t *testing.T, ta *testAgent, tk string) {
	t.Helper()
	path := filepath.Join(ta.stateDir, "steps", tk, "result.json")
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
	}
	t.Fatalf("no %s", path)
}

// removeContainer removes the step's container as `docker rm -f` does.
func removeContainer(t *testing.T, _ *testAgent, tk string) {
	t.Helper()
	cli := withImages(t)
	ctx := context.Background()
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", executor.LabelTicket+"="+tk))})
	if err != nil || len(list) != 1 {
		t.Fatalf("the step's container: %v %v", list, err)
	}
	if err := cli.ContainerRemove(ctx, list[0].ID, container.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
}

// killRunner SIGKILLs every process of the host step's session, as a
// reboot or an OOM killer might, and waits for the runner to be gone.
func killRunner(t *testing.T, ta *testAgent, tk string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ta.stateDir, "steps", tk, "runner.pid"))
	if err != nil {
		t.Fatal(err)
	}
	sid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	killSession(sid)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", sid)); err != nil {
			return
		}
	}
	t.Fatalf("runner %d did not die", sid)
}

// killSession SIGKILLs every process whose session id (field 6 of
// /proc/PID/stat) is sid.
func killSession(sid int) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		if f := strings.Fields(string(b[i+1:])); i >= 0 && len(f) > 3 && f[3] == strconv.Itoa(sid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// A step that completed before the agent stopped is served whole by the
// next agent process, until the server collects it.
func TestCompletedStepServedAfterRestart(t *testing.T) {
	ta := startAgent(t)
	tk := ticket(t)
	first := ta.run(t, &pb.StartStepRequest{Ticket: tk, Execution: host(), Script: bash("echo one; echo two; exit 2")})
	ta.stop()
	ta.start()
	again := ta.follow(t, tk)
	if !slices.Equal(again.stdout, first.stdout) || exitCode(again.final) != 2 {
		t.Fatalf("after the restart %q exit %d, before %q exit 2", again.stdout, exitCode(again.final), first.stdout)
	}
	ta.complete(t, tk)
}

// A step reattached after a restart holds its slot: with one slot, a new
// step waits until the reattached one has ended.
func TestReattachedStepHoldsItsSlot(t *testing.T) {
	ta := startAgent(t, func(c *agent.Config) { c.MaxSteps = 1 })
	first := ticket(t)
	ctx := context.Background()
	_, err := ta.client.StartStep(ctx, &pb.StartStepRequest{Ticket: first, Execution: host(),
		Script: bash("echo started; sleep 3; echo first done")})
	if err != nil {
		t.Fatal(err)
	}
	waitForLine(t, ta, first, "started")
	ta.stop()
	ta.start()
	caps, err := ta.client.GetCapabilities(ctx, &pb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if caps.GetRunningSteps() != 1 {
		t.Errorf("running steps after the restart: %d, want the reattached one", caps.GetRunningSteps())
	}
	second := ticket(t)
	if _, err := ta.client.StartStep(ctx, &pb.StartStepRequest{Ticket: second, Execution: host(), Script: bash("echo second ran")}); err != nil {
		t.Fatal(err)
	}
	firstRun := ta.follow(t, first)
	secondRun := ta.follow(t, second)
	if !secondRun.final.GetStartedAt().AsTime().After(firstRun.final.GetFinishedAt().AsTime().Add(-100 * time.Millisecond)) {
		t.Errorf("the second step started at %v, before the reattached one ended at %v",
			secondRun.final.GetStartedAt().AsTime(), firstRun.final.GetFinishedAt().AsTime())
	}
	if !strings.Contains(strings.Join(secondRun.agent, "\n"), "waiting for a free step slot") {
		t.Errorf("the second step did not wait for a slot: %q", secondRun.agent)
	}
}

// Steps waiting for a slot when the agent stops get back in line in the
// order they came, not in the journal's (ticket) order.
func TestWaitingStepsKeepTheirOrderAcrossARestart(t *testing.T) {
	ta := startAgent(t, func(c *agent.Config) { c.MaxSteps = 1 })
	ctx := context.Background()
	if _, err := ta.client.StartStep(ctx, &pb.StartStepRequest{Ticket: "order-first", Execution: host(), Script: bash("echo started; sleep 2")}); err != nil {
		t.Fatal(err)
	}
	waitForLine(t, ta, "order-first", "started")
	// Named so that ticket order is the reverse of arrival order.
	tickets := []string{"order-z", "order-m", "order-a"}
	for _, tk := range tickets {
		if _, err := ta.client.StartStep(ctx, &pb.StartStepRequest{Ticket: tk, Execution: host(), Script: bash("echo " + tk)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ta.stop()
	ta.start()
	ta.follow(t, "order-first")
	var last time.Time
	for _, tk := range tickets {
		run := ta.follow(t, tk)
		started := run.final.GetStartedAt().AsTime()
		if started.Before(last) {
			t.Errorf("%s started at %v, before the step that came before it (%v)", tk, started, last)
		}
		last = started
	}
}

// A completed step no client has collected holds no open file: an agent
// with many of them must not run out of descriptors.
func TestCompletedStepsHoldNoFiles(t *testing.T) {
	ta := startAgent(t)
	for range 5 {
		ta.run(t, &pb.StartStepRequest{Ticket: ticket(t), Execution: host(), Script: bash("echo hi")})
	}
	ta.stop()
	ta.start() // the resumed ones too
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.HasPrefix(target, filepath.Join(ta.stateDir, "steps")) {
			t.Errorf("open: %s", target)
		}
	}
}
