package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"stevedore/agent"
	"stevedore/executor"
	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
)

func retention(d time.Duration) agentOpt { return func(c *agent.Config) { c.Retention = d } }

// orphanContainer starts a container labelled as agentID's step ticket,
// as a step the journal no longer knows would have left behind.
func orphanContainer(t *testing.T, cli *client.Client, agentID, tk string) string {
	t.Helper()
	ctx := context.Background()
	c, err := cli.ContainerCreate(ctx, &container.Config{Image: testenv.Bookworm, Entrypoint: []string{"sleep", "300"},
		Labels: map[string]string{executor.LabelManaged: "true", executor.LabelAgent: agentID, executor.LabelTicket: tk}}, nil, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true}) })
	if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	return c.ID
}

func containerExists(t *testing.T, cli *client.Client, id string) bool {
	t.Helper()
	_, err := cli.ContainerInspect(context.Background(), id)
	if err != nil && !errdefs.IsNotFound(err) {
		t.Fatal(err)
	}
	return err == nil
}

func orphanWorkspace(t *testing.T, ta *testAgent, tk string) string {
	t.Helper()
	dir := filepath.Join(ta.stateDir, "steps", tk)
	if err := os.MkdirAll(filepath.Join(dir, "work"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Two agents on one host: each reaps its own orphans, never the other's
// containers, and never a step that is running.
func TestReapOnlyOwnOrphans(t *testing.T) {
	cli := withImages(t, testenv.Bookworm)
	a, b := startAgent(t), startAgent(t)
	tk := ticket(t)
	if _, err := b.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tk, Execution: inContainer(testenv.Bookworm),
		Script: bash("echo line 1; sleep 300")}); err != nil {
		t.Fatal(err)
	}
	waitForLine(t, b, tk, "line 1")
	orphanA := orphanContainer(t, cli, a.id.Thumbprint, "ghost-a")
	orphanB := orphanContainer(t, cli, b.id.Thumbprint, "ghost-b")
	wsA, wsB := orphanWorkspace(t, a, "ghost-a"), orphanWorkspace(t, b, "ghost-b")

	tests := []struct {
		name      string
		reaper    *testAgent
		gone      []string // container ids
		kept      []string
		goneDirs  []string
		keptDirs  []string
		wantCount int
		wantB     int // b's containers after the reap
	}{
		{"a reaps", a, []string{orphanA}, []string{orphanB}, []string{wsA}, []string{wsB, filepath.Join(b.stateDir, "steps", tk)}, 1, 2},
		{"b reaps", b, []string{orphanB}, nil, []string{wsB}, []string{filepath.Join(b.stateDir, "steps", tk)}, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := tt.reaper.agent.Reap(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Containers) != tt.wantCount {
				t.Errorf("reaped containers %v, want %d", rep.Containers, tt.wantCount)
			}
			for _, id := range tt.gone {
				if containerExists(t, cli, id) {
					t.Errorf("orphan %.12s still there", id)
				}
			}
			for _, id := range tt.kept {
				if !containerExists(t, cli, id) {
					t.Errorf("another agent's container %.12s was removed", id)
				}
			}
			for _, d := range tt.goneDirs {
				if exists(d) {
					t.Errorf("orphan workspace %s still there", d)
				}
			}
			for _, d := range tt.keptDirs {
				if !exists(d) {
					t.Errorf("workspace %s was removed", d)
				}
			}
			if n := len(managedContainers(t, cli, b)); n != tt.wantB {
				t.Errorf("b has %d containers, want %d", n, tt.wantB)
			}
		})
	}
	if _, err := b.client.CancelStep(context.Background(), &pb.CancelStepRequest{Ticket: tk}); err != nil {
		t.Fatal(err)
	}
	b.follow(t, tk)
	b.complete(t, tk)
}

// Orphans left while the agent was down are reaped when it starts.
func TestReapAtStartup(t *testing.T) {
	cli := withImages(t, testenv.Bookworm)
	ta := startAgent(t)
	ta.stop()
	id := orphanContainer(t, cli, ta.id.Thumbprint, "ghost")
	ws := orphanWorkspace(t, ta, "ghost")
	ta.start()
	for deadline := time.Now().Add(30 * time.Second); containerExists(t, cli, id) || exists(ws); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after start-up: container there %v, workspace there %v", containerExists(t, cli, id), exists(ws))
		}
	}
}

// Past the retention, a completed step the server never collected loses its
// container and workspace but is still answered; a tombstone is then
// pruned. A running step is never touched.
func TestReapRetention(t *testing.T) {
	cli := withImages(t, testenv.Bookworm)
	const keep = 2 * time.Second
	ta := startAgent(t, retention(keep))
	ctx := context.Background()
	running, uncollected, collected := ticket(t), ticket(t), ticket(t)
	if _, err := ta.client.StartStep(ctx, &pb.StartStepRequest{Ticket: running, Execution: host(), Script: bash("echo line 1; sleep 300")}); err != nil {
		t.Fatal(err)
	}
	waitForLine(t, ta, running, "line 1")
	if run := ta.run(t, &pb.StartStepRequest{Ticket: uncollected, Execution: inContainer(testenv.Bookworm), Script: bash("echo hi")}); run.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("%v %s", run.final.GetOutcome(), run.final.GetReason())
	}
	ta.run(t, &pb.StartStepRequest{Ticket: collected, Execution: host(), Script: bash("echo hi")})
	ta.complete(t, collected)

	// Within the retention nothing goes.
	rep, err := ta.agent.Reap(ctx)
	if err != nil || len(rep.Expired)+len(rep.Pruned)+len(rep.Containers) > 0 {
		t.Fatalf("within the retention: %+v %v", rep, err)
	}
	time.Sleep(keep + 200*time.Millisecond)
	if rep, err = ta.agent.Reap(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Expired, []string{uncollected}) || !slices.Equal(rep.Pruned, []string{collected}) {
		t.Fatalf("expired %v pruned %v, want [%s] [%s]", rep.Expired, rep.Pruned, uncollected, collected)
	}
	if n := len(managedContainers(t, cli, ta)); n != 0 {
		t.Errorf("%d containers left after the retention", n)
	}
	if exists(filepath.Join(ta.stateDir, "steps", uncollected)) || !exists(filepath.Join(ta.stateDir, "steps", running)) {
		t.Error("workspaces: the expired one should be gone, the running one kept")
	}
	st, err := ta.client.GetStatus(ctx, &pb.GetStatusRequest{Ticket: uncollected})
	if err != nil || st.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED {
		t.Errorf("an expired step is still answered: %v %v", st.GetOutcome(), err)
	}
	if _, err := ta.client.GetStatus(ctx, &pb.GetStatusRequest{Ticket: collected}); status.Code(err) != codes.NotFound {
		t.Errorf("a pruned tombstone: %v, want NotFound", err)
	}
	if st, err := ta.client.GetStatus(ctx, &pb.GetStatusRequest{Ticket: running}); err != nil || st.GetState() != pb.StepState_STEP_STATE_RUNNING {
		t.Errorf("the running step: %v %v", st.GetState(), err)
	}
	// Pruned from the journal too: a restarted agent does not know it.
	ta.stop()
	ta.start()
	if _, err := ta.client.GetStatus(ctx, &pb.GetStatusRequest{Ticket: collected}); status.Code(err) != codes.NotFound {
		t.Errorf("a pruned tombstone after a restart: %v, want NotFound", err)
	}
	if _, err := ta.client.CancelStep(ctx, &pb.CancelStepRequest{Ticket: running}); err != nil {
		t.Fatal(err)
	}
	ta.follow(t, running)
	ta.complete(t, running)
}
