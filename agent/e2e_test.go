package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"stevedore/agent"
	"stevedore/executor"
	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

// withImages makes sure the engine has the fixtures a test uses.
func withImages(t *testing.T, refs ...string) *client.Client {
	t.Helper()
	cli, _ := testenv.Docker(t)
	for _, ref := range refs {
		testenv.Image(t, cli, ref)
	}
	return cli
}

// managedContainers lists the containers this agent made.
func managedContainers(t *testing.T, cli *client.Client, ta *testAgent) []container.Summary {
	t.Helper()
	list, err := cli.ContainerList(context.Background(), container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", executor.LabelManaged+"=true"), filters.Arg("label", executor.LabelAgent+"="+ta.id.Thumbprint))})
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func assertClean(t *testing.T, cli *client.Client, ta *testAgent, tickets ...string) {
	t.Helper()
	if left := managedContainers(t, cli, ta); len(left) > 0 {
		t.Errorf("%d managed containers left behind, e.g. %v", len(left), left[0].Names)
	}
	for _, tk := range tickets {
		if _, err := os.Stat(filepath.Join(ta.stateDir, "steps", tk)); err == nil {
			t.Errorf("workspace of %s left behind", tk)
		}
	}
}

func TestContainerExitCodesAndStreams(t *testing.T) {
	cli := withImages(t, testenv.Bookworm)
	ta := startAgent(t)
	tests := []struct {
		name       string
		script     string
		wantCode   int
		wantOut    []string
		wantErr    []string
		wantResult pb.Outcome
	}{
		{"exit 0", "echo hello; echo oops >&2", 0, []string{"hello"}, []string{"oops"}, pb.Outcome_OUTCOME_SUCCEEDED},
		{"exit 42", "echo before; echo to-stderr >&2; exit 42", 42, []string{"before"}, []string{"to-stderr"}, pb.Outcome_OUTCOME_FAILED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tk := ticket(t)
			run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Script: bash(tt.script), Execution: inContainer(testenv.Bookworm)})
			if got := exitCode(run.final); got != tt.wantCode || run.final.GetOutcome() != tt.wantResult {
				t.Fatalf("exit %d outcome %v (%s), want %d %v; log %q", got, run.final.GetOutcome(), run.final.GetReason(), tt.wantCode, tt.wantResult, run.agent)
			}
			if fmt.Sprint(run.stdout) != fmt.Sprint(tt.wantOut) || fmt.Sprint(run.stderr) != fmt.Sprint(tt.wantErr) {
				t.Errorf("stdout %q stderr %q, want %q %q", run.stdout, run.stderr, tt.wantOut, tt.wantErr)
			}
			ta.complete(t, tk)
			assertClean(t, cli, ta, tk)
		})
	}
}

func TestHundredThousandLinesInOrder(t *testing.T) {
	withImages(t, testenv.Bookworm)
	ta := startAgent(t)
	const n = 100000
	tk := ticket(t)
	run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Script: bash(fmt.Sprintf("seq 1 %d", n)), Execution: inContainer(testenv.Bookworm)})
	if len(run.stdout) != n {
		t.Fatalf("%d lines, want %d", len(run.stdout), n)
	}
	for i, l := range run.stdout {
		if l != strconv.Itoa(i+1) {
			t.Fatalf("line %d is %q", i+1, l)
		}
	}
	ta.complete(t, tk)
}

func TestNonRootImageWithFailingEntrypoint(t *testing.T) {
	withImages(t, testenv.NonRoot)
	ta := startAgent(t)
	tk := ticket(t)
	run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Execution: inContainer(testenv.NonRoot),
		Script: bash(`id -un; echo data > written.txt && cat written.txt; mkdir sub && touch sub/f && echo ok`)})
	if exitCode(run.final) != 0 {
		t.Fatalf("exit %d (%s); stderr %q agent %q", exitCode(run.final), run.final.GetReason(), run.stderr, run.agent)
	}
	if want := []string{"app", "data", "ok"}; fmt.Sprint(run.stdout) != fmt.Sprint(want) {
		t.Errorf("stdout %q, want %q (the entrypoint exits 97 if it runs)", run.stdout, want)
	}
	ta.complete(t, tk)
}

func TestRejectedImages(t *testing.T) {
	cli := withImages(t, testenv.Musl, testenv.Static)
	ta := startAgent(t)
	tests := []struct {
		image string
		want  []string
	}{
		{testenv.Musl, []string{"musl", "/lib/ld-musl-", "glibc"}},
		{testenv.Static, []string{"no dynamic loader", "glibc"}},
	}
	for _, tt := range tests {
		t.Run(tt.image, func(t *testing.T) {
			tk := ticket(t)
			// The script would leave a mark if anything of it ran.
			run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Script: bash("echo RAN"), Execution: inContainer(tt.image)})
			if run.final.GetOutcome() != pb.Outcome_OUTCOME_IMAGE_REJECTED {
				t.Fatalf("outcome %v (%s), want IMAGE_REJECTED", run.final.GetOutcome(), run.final.GetReason())
			}
			for _, w := range tt.want {
				if !strings.Contains(run.final.GetReason(), w) {
					t.Errorf("reason %q does not mention %q", run.final.GetReason(), w)
				}
			}
			if len(run.stdout) != 0 || run.final.ExitCode != nil {
				t.Errorf("something ran: stdout %q exit %v", run.stdout, run.final.ExitCode)
			}
			if left := managedContainers(t, cli, ta); len(left) != 0 {
				t.Errorf("the rejected image's container is still there: %v", left[0].Names)
			}
			ta.complete(t, tk)
		})
	}
}

// The runner's glibc floor (2.17) is below bullseye's 2.31: the probe
// accepts it and each script syntax runs to its own exit code.
func TestBullseyeRunsEverySyntax(t *testing.T) {
	cli := withImages(t, testenv.Bullseye)
	ta := startAgent(t)
	tests := []struct {
		name   string
		script *pb.Script
		want   []string
		code   int
	}{
		{"bash", bash(`echo "bash $BASH_VERSION" | cut -d. -f1; exit 3`), []string{"bash 5"}, 3},
		{"sh", &pb.Script{Syntax: pb.Syntax_SYNTAX_SH, Body: "echo sh; exit 4"}, []string{"sh"}, 4},
		{"python", &pb.Script{Syntax: pb.Syntax_SYNTAX_PYTHON, Body: "import sys\nprint('python', sys.version_info[:2])\nsys.exit(5)"},
			[]string{"python (3, 9)"}, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tk := ticket(t)
			run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Script: tt.script, Execution: inContainer(testenv.Bullseye)})
			if run.final.GetOutcome() != pb.Outcome_OUTCOME_FAILED || exitCode(run.final) != tt.code {
				t.Fatalf("outcome %v exit %d (%s), want FAILED %d; stderr %q agent %q",
					run.final.GetOutcome(), exitCode(run.final), run.final.GetReason(), tt.code, run.stderr, run.agent)
			}
			if fmt.Sprint(run.stdout) != fmt.Sprint(tt.want) {
				t.Errorf("stdout %q, want %q", run.stdout, tt.want)
			}
			ta.complete(t, tk)
			assertClean(t, cli, ta, tk)
		})
	}
}

// A runner linked against the host's glibc (2.36 here) needs more than
// bullseye has: the probe rejects the image before anything of it runs,
// naming what it found, what is needed and what to use.
func TestBullseyeRejectedByHostGlibcRunner(t *testing.T) {
	cli := withImages(t, testenv.Bullseye)
	bundle, err := executor.LoadBundle(testenv.HostGlibcBundleDir(t))
	if err != nil {
		t.Fatal(err)
	}
	need := bundle.Manifest.Requires.MinGlibc
	if executor.CompareGlibc(need, "2.31") <= 0 {
		t.Fatalf("the host-glibc runner needs only glibc %s: this host's glibc is too old to test a rejection", need)
	}
	ta := startAgent(t, func(c *agent.Config) { c.Bundle = bundle })
	tk := ticket(t)
	run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Script: bash("echo RAN"), Execution: inContainer(testenv.Bullseye)})
	if run.final.GetOutcome() != pb.Outcome_OUTCOME_IMAGE_REJECTED {
		t.Fatalf("outcome %v (%s), want IMAGE_REJECTED", run.final.GetOutcome(), run.final.GetReason())
	}
	for _, w := range []string{"has glibc 2.31", "needs glibc " + need, "use an image based on"} {
		if !strings.Contains(run.final.GetReason(), w) {
			t.Errorf("reason %q does not say %q", run.final.GetReason(), w)
		}
	}
	if len(run.stdout) != 0 || run.final.ExitCode != nil {
		t.Errorf("something ran: stdout %q exit %v", run.stdout, run.final.ExitCode)
	}
	ta.complete(t, tk)
	assertClean(t, cli, ta, tk)
}

func TestSensitiveValuesNeverLeak(t *testing.T) {
	cli := withImages(t, testenv.Bookworm)
	ta := startAgent(t)
	const secret = "hunter2-very-secret-value"
	tk := ticket(t)
	req := &pb.StartStepRequest{Ticket: tk, Execution: inContainer(testenv.Bookworm),
		Variables: []*pb.Variable{{Name: "Password", Value: secret, Sensitive: true}, {Name: "Plain", Value: "visible"}},
		Script:    bash(`echo "pw=$Password plain=$Plain"; echo "via helper: $(get_variable Password)"; sleep 2`)}
	if _, err := ta.client.StartStep(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	// While it runs: the container's configuration must not hold the secret.
	deadline := time.Now().Add(time.Minute)
	for {
		list := managedContainers(t, cli, ta)
		if len(list) == 1 {
			inspect, err := cli.ContainerInspect(context.Background(), list[0].ID)
			if errdefs.IsNotFound(err) {
				// Listed while it was being replaced: look again.
				t.Logf("container %s vanished between list and inspect", list[0].ID)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(inspect)
			if bytes.Contains(b, []byte(secret)) {
				t.Fatal("docker inspect shows the sensitive value")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no container appeared")
		}
		time.Sleep(50 * time.Millisecond)
	}
	run := ta.follow(t, tk)
	if want := []string{"pw=******** plain=visible", "via helper: ********"}; fmt.Sprint(run.stdout) != fmt.Sprint(want) {
		t.Errorf("stdout %q, want %q", run.stdout, want)
	}
	// Nothing in the state dir holds it in plaintext: journal, step dir, keys.
	noPlaintext(t, ta.stateDir, secret)
	ta.complete(t, tk)
}

func TestOutputVariablesAndArtifacts(t *testing.T) {
	withImages(t, testenv.Bookworm)
	ta := startAgent(t)
	tk := ticket(t)
	run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Execution: inContainer(testenv.Bookworm), Script: bash(`
set_variable Greeting "hello world"
set_variable Token s3cr3t-token sensitive
echo "token is s3cr3t-token"
echo report-content > report.txt
new_artifact report.txt report
`)})
	if run.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("%v %s; stderr %q", run.final.GetOutcome(), run.final.GetReason(), run.stderr)
	}
	vars := map[string]string{}
	for _, v := range run.final.GetOutputVariables() {
		vars[v.GetName()] = v.GetValue()
	}
	if vars["Greeting"] != "hello world" || vars["Token"] != "s3cr3t-token" {
		t.Errorf("output variables %v", vars)
	}
	if fmt.Sprint(run.stdout) != "[token is ********]" {
		t.Errorf("stdout %q: the sensitive output value should be masked", run.stdout)
	}
	if len(run.final.GetArtifacts()) != 1 {
		t.Fatalf("artifacts %v", run.final.GetArtifacts())
	}
	art := run.final.GetArtifacts()[0]
	got := download(t, ta, tk, art.GetPath())
	if art.GetName() != "report" || string(got) != "report-content\n" || art.GetSizeBytes() != int64(len(got)) {
		t.Errorf("artifact %v content %q", art, got)
	}
	ta.complete(t, tk)
}

func TestCancelEndsStepWithinGrace(t *testing.T) {
	tests := []struct {
		name   string
		exec   *pb.Execution
		script string
	}{
		{"container sleep", inContainer(testenv.Bookworm), "echo started; sleep 600"},
		{"container ignoring TERM", inContainer(testenv.Bookworm), "trap '' TERM; echo started; sleep 600"},
		{"host ignoring TERM", host(), "trap '' TERM; echo started; sleep 600 & wait; sleep 600"},
	}
	cli := withImages(t, testenv.Bookworm)
	ta := startAgent(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tk := ticket(t)
			_, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tk, Script: bash(tt.script),
				Execution: tt.exec, CancelGrace: durationpb.New(2 * time.Second)})
			if err != nil {
				t.Fatal(err)
			}
			waitForLine(t, ta, tk, "started")
			start := time.Now()
			if _, err := ta.client.CancelStep(context.Background(), &pb.CancelStepRequest{Ticket: tk}); err != nil {
				t.Fatal(err)
			}
			run := ta.follow(t, tk)
			took := time.Since(start)
			if run.final.GetOutcome() != pb.Outcome_OUTCOME_CANCELLED {
				t.Fatalf("outcome %v (%s)", run.final.GetOutcome(), run.final.GetReason())
			}
			if took > 2*time.Second+10*time.Second {
				t.Errorf("cancel took %s with a 2s grace", took)
			}
			// Cancel again: idempotent.
			if _, err := ta.client.CancelStep(context.Background(), &pb.CancelStepRequest{Ticket: tk}); err != nil {
				t.Fatal(err)
			}
			ta.complete(t, tk)
			assertClean(t, cli, ta, tk)
		})
	}
}

func waitForLine(t *testing.T, ta *testAgent, tk, want string) {
	t.Helper()
	var after uint64
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		st, err := ta.client.GetStatus(context.Background(), &pb.GetStatusRequest{Ticket: tk, AfterSequence: after, Wait: durationpb.New(5 * time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range st.GetLines() {
			after = l.GetSequence()
			if string(l.GetText()) == want {
				return
			}
		}
		if st.GetState() == pb.StepState_STEP_STATE_COMPLETE {
			t.Fatalf("step ended (%v %s) before printing %q", st.GetOutcome(), st.GetReason(), want)
		}
	}
	t.Fatalf("no line %q", want)
}

func TestTimeout(t *testing.T) {
	withImages(t, testenv.Bookworm)
	ta := startAgent(t)
	tk := ticket(t)
	run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Script: bash("sleep 600"), Execution: inContainer(testenv.Bookworm),
		Timeout: durationpb.New(2 * time.Second), CancelGrace: durationpb.New(time.Second)})
	if run.final.GetOutcome() != pb.Outcome_OUTCOME_TIMED_OUT || !strings.Contains(run.final.GetReason(), "timed out") {
		t.Fatalf("outcome %v reason %q", run.final.GetOutcome(), run.final.GetReason())
	}
	ta.complete(t, tk)
}

func TestStartStepTwiceRunsOnce(t *testing.T) {
	ta := startAgent(t)
	marks := filepath.Join(t.TempDir(), "marks")
	tk := ticket(t)
	req := &pb.StartStepRequest{Ticket: tk, Script: bash("echo run >> " + marks + "; echo done"), Execution: host()}
	for range 3 {
		if _, err := ta.client.StartStep(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	run := ta.follow(t, tk)
	if _, err := ta.client.StartStep(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(marks)
	if string(b) != "run\n" || fmt.Sprint(run.stdout) != "[done]" {
		t.Errorf("the script ran %d times (stdout %q)", strings.Count(string(b), "run"), run.stdout)
	}
	ta.complete(t, tk)
	ta.complete(t, tk) // idempotent
}

func TestHostStep(t *testing.T) {
	ta := startAgent(t)
	tk := ticket(t)
	run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Execution: host(),
		Variables: []*pb.Variable{{Name: "Octopus.Action.Name", Value: "deploy"}},
		Script:    &pb.Script{Syntax: pb.Syntax_SYNTAX_PYTHON, Body: "import os\nprint(get_variable('Octopus.Action.Name'))\nprint(os.getcwd().endswith('/work'))\nraise SystemExit(3)"}})
	if exitCode(run.final) != 3 || fmt.Sprint(run.stdout) != "[deploy True]" {
		t.Fatalf("exit %d stdout %q stderr %q", exitCode(run.final), run.stdout, run.stderr)
	}
	ta.complete(t, tk)
	assertNoWorkspace(t, ta, tk)
}

func assertNoWorkspace(t *testing.T, ta *testAgent, tk string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(ta.stateDir, "steps", tk)); err == nil {
		t.Errorf("workspace of %s left behind", tk)
	}
}

func TestUntrustedClientRefused(t *testing.T) {
	ta := startAgent(t)
	stranger, _, err := transport.LoadOrCreateIdentity(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := transport.Dial(ta.addr, stranger, ta.id.Thumbprint)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pb.NewAgentClient(conn).GetCapabilities(ctx, &pb.GetCapabilitiesRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("an untrusted client got %v, want refused at the handshake", err)
	}
	if logs := ta.logs.String(); !strings.Contains(logs, "refused an untrusted client") || !strings.Contains(logs, stranger.Thumbprint) {
		t.Errorf("the agent's log does not name the refused client: %q", logs)
	}
	// And a client pinning another thumbprint refuses the agent.
	conn2, _ := transport.Dial(ta.addr, ta.clientID, stranger.Thumbprint)
	defer conn2.Close()
	if _, err := pb.NewAgentClient(conn2).GetCapabilities(ctx, &pb.GetCapabilitiesRequest{}); err == nil {
		t.Fatal("a client pinning another thumbprint accepted the agent")
	}
}

func TestCapabilities(t *testing.T) {
	_, info := testenv.Docker(t)
	ta := startAgent(t, func(c *agent.Config) { c.Name = "w1"; c.Labels = map[string]string{"zone": "a"} })
	caps, err := ta.client.GetCapabilities(context.Background(), &pb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !caps.GetDocker().GetAvailable() || caps.GetDocker().GetVersion() != info.Version || caps.GetDocker().GetApiVersion() != info.APIVersion {
		t.Errorf("docker %v, want %+v", caps.GetDocker(), info)
	}
	b := caps.GetBundle()
	if b.GetName() != "stevedore-step" || b.GetRequires().GetLibc() != "glibc" || b.GetRequires().GetMinGlibc() == "" {
		t.Errorf("bundle %v", b)
	}
	if caps.GetThumbprint() != ta.id.Thumbprint || caps.GetName() != "w1" || caps.GetLabels()["zone"] != "a" ||
		caps.GetMaxConcurrentSteps() != 4 || caps.GetProtocolVersion() == 0 || caps.GetOs() == "" {
		t.Errorf("capabilities %v", caps)
	}
}

// Output that is not text, not UTF-8 or not newline-terminated arrives byte for byte.
func TestOutputBytesCarriedFaithfully(t *testing.T) {
	ta := startAgent(t)
	tk := ticket(t)
	run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Execution: host(),
		Script: bash(`printf 'caf\xc3\xa9 \xff\xfe bad utf8\n'; printf 'nul\x00byte\r\n'; head -c 200000 /dev/zero | tr '\0' x; echo; printf 'no newline at the end'`)})
	var stdout []byte
	for _, l := range run.lines {
		if l.GetSource() != pb.LogSource_LOG_SOURCE_STDOUT {
			continue
		}
		stdout = append(stdout, l.GetText()...)
		if !l.GetPartial() {
			stdout = append(stdout, '\n')
		}
	}
	want := "caf\xc3\xa9 \xff\xfe bad utf8\nnul\x00byte\r\n" + strings.Repeat("x", 200000) + "\nno newline at the end"
	if string(stdout) != want {
		t.Fatalf("stdout differs: got %d bytes, want %d; head %q tail %q", len(stdout), len(want), stdout[:min(40, len(stdout))], stdout[max(0, len(stdout)-30):])
	}
	ta.complete(t, tk)
}

func TestCancelWhileWaitingForASlot(t *testing.T) {
	ta := startAgent(t, func(c *agent.Config) { c.MaxSteps = 1 })
	busy, waiting := ticket(t), ticket(t)
	for _, tk := range []string{busy, waiting} {
		if _, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tk, Script: bash("echo started; sleep 600"), Execution: host()}); err != nil {
			t.Fatal(err)
		}
	}
	waitForLine(t, ta, busy, "started")
	if _, err := ta.client.CancelStep(context.Background(), &pb.CancelStepRequest{Ticket: waiting}); err != nil {
		t.Fatal(err)
	}
	run := ta.follow(t, waiting)
	if run.final.GetOutcome() != pb.Outcome_OUTCOME_CANCELLED || len(run.stdout) != 0 || !strings.Contains(run.final.GetReason(), "waited for a step slot") {
		t.Fatalf("outcome %v reason %q stdout %q", run.final.GetOutcome(), run.final.GetReason(), run.stdout)
	}
	ta.complete(t, busy) // cancels the busy one
	ta.complete(t, waiting)
}

func TestUnknownTicketIsNotFound(t *testing.T) {
	ta := startAgent(t)
	_, err := ta.client.GetStatus(context.Background(), &pb.GetStatusRequest{Ticket: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("err %v, want NotFound", err)
	}
}

func TestInvalidRequests(t *testing.T) {
	ta := startAgent(t)
	tests := []struct {
		name string
		req  *pb.StartStepRequest
	}{
		{"empty ticket", &pb.StartStepRequest{Script: bash("true")}},
		{"ticket with slash", &pb.StartStepRequest{Ticket: "a/b", Script: bash("true")}},
		{"overlong ticket", &pb.StartStepRequest{Ticket: strings.Repeat("x", 129), Script: bash("true")}},
		{"bad image", &pb.StartStepRequest{Ticket: "x1", Script: bash("true"), Execution: inContainer("UPPER/Case::")}},
		{"escaping file", &pb.StartStepRequest{Ticket: "x2", Script: bash("true"), Files: []*pb.File{{Path: "../../etc/passwd"}}}},
		{"negative timeout", &pb.StartStepRequest{Ticket: "x3", Script: bash("true"), Timeout: durationpb.New(-time.Second)}},
		{"unknown syntax", &pb.StartStepRequest{Ticket: "x4", Script: &pb.Script{Syntax: 99, Body: "true"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ta.client.StartStep(context.Background(), tt.req)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("err %v, want InvalidArgument", err)
			}
		})
	}
}

func TestMaxStepsQueuesInOrder(t *testing.T) {
	ta := startAgent(t, func(c *agent.Config) { c.MaxSteps = 1 })
	first, second := ticket(t), ticket(t)
	for _, tk := range []string{first, second} {
		if _, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: tk, Script: bash("sleep 1; echo " + tk), Execution: host()}); err != nil {
			t.Fatal(err)
		}
	}
	run := ta.follow(t, second)
	if !strings.Contains(strings.Join(run.agent, "\n"), "waiting for a free step slot") {
		t.Errorf("the queued step's log does not say it waited: %q", run.agent)
	}
	r1 := ta.follow(t, first)
	if !r1.final.GetFinishedAt().AsTime().Before(run.final.GetStartedAt().AsTime().Add(time.Millisecond)) {
		t.Errorf("the second step started before the first finished")
	}
	ta.complete(t, first)
	ta.complete(t, second)
}

func TestAllowedImagesRefusesBeforeAnyPull(t *testing.T) {
	withImages(t, testenv.Bookworm)
	ta := startAgent(t, func(c *agent.Config) {
		c.Images.AllowedImages = []string{testenv.Registry + "/fixtures/bookworm:*"}
	})
	_, err := ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: ticket(t), Script: bash("true"), Execution: inContainer(testenv.Musl)})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "allowed_images") {
		t.Fatalf("err %v, want PermissionDenied naming allowed_images", err)
	}
	tk := ticket(t)
	run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Script: bash("echo ok"), Execution: inContainer(testenv.Bookworm)})
	if run.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("an allowed image: %v %s", run.final.GetOutcome(), run.final.GetReason())
	}
	ta.complete(t, tk)
	_, err = ta.client.StartStep(context.Background(), &pb.StartStepRequest{Ticket: ticket(t), Script: bash("true"),
		Execution: &pb.Execution{Target: &pb.Execution_Container{Container: &pb.ContainerExecution{Image: testenv.Bookworm, Feed: "nope"}}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("an unknown feed: err %v, want InvalidArgument", err)
	}
}

// noPlaintext fails t if any file under dir holds secret.
func noPlaintext(t *testing.T, dir, secret string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("%s holds the sensitive value in plaintext", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
