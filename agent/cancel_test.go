package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"google.golang.org/protobuf/types/known/durationpb"

	"stevedore/agent"
	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
)

// The exit record of a cancelled step says which signal ended it: the
// script's own exit after a trap, SIGTERM, or SIGKILL after the grace.
func TestCancelReasonSaysWhichSignalEndedIt(t *testing.T) {
	scripts := []struct {
		name     string
		script   string
		code     int
		signal   string
		reason   string
		minTaken time.Duration
	}{
		{"ended by TERM", "echo started; sleep 600", 143, "SIGTERM", "cancelled by the server: ended by SIGTERM", 0},
		{"traps TERM and exits", "trap 'echo got TERM; exit 3' TERM; echo started; sleep 600 & wait", 3, "", "cancelled by the server: exited with code 3 after SIGTERM", 0},
		{"ignores TERM", "trap '' TERM; echo started; sleep 600 & wait; sleep 600", 137, "SIGKILL", "cancelled by the server: ignored SIGTERM for 2s, killed with SIGKILL", 2 * time.Second},
	}
	execs := []struct {
		name string
		exec func() *pb.Execution
	}{
		{"host", host},
		{"container", func() *pb.Execution { return inContainer(testenv.Bookworm) }},
	}
	cli := withImages(t, testenv.Bookworm)
	ta := startAgent(t)
	for _, ex := range execs {
		for _, sc := range scripts {
			t.Run(ex.name+"/"+sc.name, func(t *testing.T) {
				tk := ticket(t)
				if _, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tk, Script: bash(sc.script),
					Execution: ex.exec(), CancelGrace: durationpb.New(2 * time.Second)}); err != nil {
					t.Fatal(err)
				}
				waitForLine(t, ta, tk, "started")
				start := time.Now()
				if _, err := ta.client.CancelStep(context.Background(), &pb.CancelStepRequest{Ticket: tk}); err != nil {
					t.Fatal(err)
				}
				run := ta.follow(t, tk)
				took := time.Since(start)
				st := run.final
				if st.GetOutcome() != pb.Outcome_OUTCOME_CANCELLED || exitCode(st) != sc.code || st.GetSignal() != sc.signal || st.GetReason() != sc.reason {
					t.Fatalf("got %v code %d signal %q reason %q\nwant CANCELLED code %d signal %q reason %q",
						st.GetOutcome(), exitCode(st), st.GetSignal(), st.GetReason(), sc.code, sc.signal, sc.reason)
				}
				if took < sc.minTaken || took > sc.minTaken+8*time.Second {
					t.Errorf("the cancel took %s", took)
				}
				ta.complete(t, tk)
				assertClean(t, cli, ta, tk)
			})
		}
	}
}

// pidGone reports whether pid has ended (a zombie nobody reaps counts).
func pidGone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && len(b) > i+2 && b[i+2] == 'Z'
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		b, err := os.ReadFile(path)
		if err != nil || !bytes.HasSuffix(b, []byte("\n")) {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err == nil {
			return pid
		}
	}
	t.Fatalf("no pid in %s", path)
	return 0
}

// Cancelling a host step ends its whole process tree, also daemons that
// left its session with setsid (and a double fork): those that handle TERM
// get it, those that ignore it are killed.
func TestCancelHostStepEndsDaemons(t *testing.T) {
	ta := startAgent(t)
	tk := ticket(t)
	script := `
setsid bash -c 'echo $$ > polite.pid; trap "echo bye > polite.term; exit 0" TERM; while :; do sleep 0.1; done' </dev/null >/dev/null 2>&1 &
setsid -f bash -c 'echo $$ > stubborn.pid; trap "" TERM; exec sleep 600' </dev/null >/dev/null 2>&1
trap '' TERM
echo started
sleep 600
`
	if _, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tk, Script: bash(script), Execution: host(),
		CancelGrace: durationpb.New(2 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	waitForLine(t, ta, tk, "started")
	work := filepath.Join(ta.stateDir, "steps", tk, "work")
	polite, stubborn := readPID(t, filepath.Join(work, "polite.pid")), readPID(t, filepath.Join(work, "stubborn.pid"))
	t.Cleanup(func() {
		for _, pid := range []int{polite, stubborn} {
			if !pidGone(pid) {
				p, _ := os.FindProcess(pid)
				p.Kill()
			}
		}
	})
	if _, err := ta.client.CancelStep(context.Background(), &pb.CancelStepRequest{Ticket: tk}); err != nil {
		t.Fatal(err)
	}
	run := ta.follow(t, tk)
	if run.final.GetOutcome() != pb.Outcome_OUTCOME_CANCELLED || run.final.GetSignal() != "SIGKILL" {
		t.Fatalf("outcome %v signal %q (%s)", run.final.GetOutcome(), run.final.GetSignal(), run.final.GetReason())
	}
	if b, err := os.ReadFile(filepath.Join(work, "polite.term")); err != nil || string(b) != "bye\n" {
		t.Errorf("the daemon that handles TERM did not get it: %q %v", b, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !(pidGone(polite) && pidGone(stubborn)) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	for name, pid := range map[string]int{"setsid daemon": polite, "double-forked daemon ignoring TERM": stubborn} {
		if !pidGone(pid) {
			t.Errorf("the %s (pid %d) outlived the cancelled step", name, pid)
		}
	}
	ta.complete(t, tk)
}

// A step cancelled while its image is being pulled (a registry that went
// silent mid-layer) ends CANCELLED at once, without a container.
func TestCancelWhilePulling(t *testing.T) {
	cli := withImages(t, testenv.Bookworm)
	name := make([]byte, 4)
	rand.Read(name)
	ref := testenv.PushRandomImage(t, cli, "cancel-pull-"+hex.EncodeToString(name), "1", 8<<20)
	proxy := testenv.NewProxy(t, testenv.Registry)
	proxy.StallAt.Store(1 << 20)
	viaProxy := proxy.Addr() + strings.TrimPrefix(ref, testenv.Registry)
	t.Cleanup(func() {
		cli.ImageRemove(context.Background(), viaProxy, image.RemoveOptions{Force: true, PruneChildren: true})
	})
	ta := startAgent(t, func(c *agent.Config) { c.Images.StallTimeout = 10 * time.Minute })
	tk := ticket(t)
	exec := inContainer(viaProxy)
	exec.GetContainer().Credentials = &pb.RegistryCredentials{Username: testenv.RegistryUser, Password: testenv.RegistryPassword}
	if _, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tk, Script: bash("echo ran"), Execution: exec}); err != nil {
		t.Fatal(err)
	}
	waitForState(t, ta, tk, pb.StepState_STEP_STATE_PULLING)
	time.Sleep(2 * time.Second) // well into the pull, which now hangs
	if st, _ := ta.client.GetStatus(context.Background(), &pb.GetStatusRequest{Ticket: tk, AfterSequence: ^uint64(0)}); st.GetState() != pb.StepState_STEP_STATE_PULLING {
		t.Fatalf("state %v (%s) before the cancel, want PULLING", st.GetState(), st.GetReason())
	}
	start := time.Now()
	if _, err := ta.client.CancelStep(context.Background(), &pb.CancelStepRequest{Ticket: tk}); err != nil {
		t.Fatal(err)
	}
	run := ta.follow(t, tk)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("cancelling a pulling step took %s", took)
	}
	if run.final.GetOutcome() != pb.Outcome_OUTCOME_CANCELLED || !strings.Contains(run.final.GetReason(), "while it pulled its image") || len(run.stdout) != 0 {
		t.Fatalf("outcome %v reason %q stdout %q", run.final.GetOutcome(), run.final.GetReason(), run.stdout)
	}
	ta.complete(t, tk)
	assertClean(t, cli, ta, tk)
}

// In a cgroup of its own, a host step's processes are all ended, also a
// daemon that left the session and cleared its environment (which the
// session and the step's mark cannot find): by a cancel, and by
// CompleteStep when the script ended and left it running. The step's
// cgroup is removed with the step.
func TestCancelHostStepEndsEscapedDaemonsByCgroup(t *testing.T) {
	ta := startAgent(t)
	caps, err := ta.client.GetCapabilities(context.Background(), &pb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(caps.GetHostProcessTracking(), "cgroup ") {
		t.Skipf("host steps are not tracked by cgroup here: %s", caps.GetHostProcessTracking())
	}
	const escape = `setsid -f env -i /bin/bash -c 'echo $$ > escaped.pid; trap "" TERM; exec sleep 600' </dev/null >/dev/null 2>&1
echo started
`
	tests := []struct {
		name    string
		script  string
		cancel  bool
		outcome pb.Outcome
	}{
		{"cancelled", escape + "trap '' TERM; sleep 600", true, pb.Outcome_OUTCOME_CANCELLED},
		{"script ended and left it", escape + "while [ ! -s escaped.pid ]; do sleep 0.05; done", false, pb.Outcome_OUTCOME_SUCCEEDED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tk := ticket(t)
			if _, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tk, Script: bash(tt.script), Execution: host(),
				CancelGrace: durationpb.New(time.Second)}); err != nil {
				t.Fatal(err)
			}
			waitForLine(t, ta, tk, "started")
			dir := filepath.Join(ta.stateDir, "steps", tk)
			escaped := readPID(t, filepath.Join(dir, "work", "escaped.pid"))
			t.Cleanup(func() {
				if !pidGone(escaped) {
					p, _ := os.FindProcess(escaped)
					p.Kill()
				}
			})
			if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", escaped)); err != nil || bytes.Contains(env, []byte("STEVEDORE_STEP_DIR")) {
				t.Fatalf("the daemon is not unmarked (%v): %q", err, env)
			}
			b, err := os.ReadFile(filepath.Join(dir, "runner.cgroup"))
			if err != nil {
				t.Fatalf("no cgroup recorded: %v", err)
			}
			cgroup := strings.TrimSpace(string(b))
			if procs, err := os.ReadFile(filepath.Join(cgroup, "cgroup.procs")); err != nil || !bytes.Contains(procs, []byte(strconv.Itoa(escaped)+"\n")) {
				t.Fatalf("the daemon %d is not in the step's cgroup %s (%v): %q", escaped, cgroup, err, procs)
			}
			if tt.cancel {
				if _, err := ta.client.CancelStep(context.Background(), &pb.CancelStepRequest{Ticket: tk}); err != nil {
					t.Fatal(err)
				}
			}
			run := ta.follow(t, tk)
			if run.final.GetOutcome() != tt.outcome {
				t.Fatalf("outcome %v, want %v (%s)", run.final.GetOutcome(), tt.outcome, run.final.GetReason())
			}
			ta.complete(t, tk)
			deadline := time.Now().Add(5 * time.Second)
			for !pidGone(escaped) && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if !pidGone(escaped) {
				t.Errorf("the escaped daemon (pid %d) outlived the step", escaped)
			}
			if _, err := os.Stat(cgroup); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the step's cgroup %s is still there: %v", cgroup, err)
			}
		})
	}
}
