package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"stevedore/internal/steplog"
	"stevedore/internal/stepspec"
	"stevedore/internal/testenv"
)

// runnerBin is the runner, built once for all tests.
var runnerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "stevedore-step-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	runnerBin = filepath.Join(dir, "stevedore-step")
	// The runner as it ships (`make build`'s recipe, linked against the
	// glibc sysroot), so that these tests run what images run. Without the
	// sysroot (no root to make it) a plain build stands in, outside CI.
	if err := testenv.BuildRunner(runnerBin); err != nil {
		if testenv.InCI() {
			fmt.Fprintf(os.Stderr, "build the runner: %v\n", err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "testing a plain build of the runner, not the shipped one (run `make setup`): %v\n", err)
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		if out, err := exec.Command(goTool, "build", "-o", runnerBin, ".").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build the runner: %v\n%s", err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testKey is the step key the tests give the runner.
var testKey = bytes.Repeat([]byte{0x5a}, 32)

// step describes a step to run.
type step struct {
	syntax   string
	script   string
	vars     []stepspec.Variable
	secrets  []stepspec.Variable
	noKey    bool    // give no step key
	stdin    *string // the raw secrets document, instead of one made of secrets
	firstSeq uint64
	grace    time.Duration
	env      []string // the runner's environment, instead of the test's
	noLevels bool     // as an agent that reads no levels asks
}

// newStepDir writes a step directory for s.
func newStepDir(t testing.TB, s step) string {
	t.Helper()
	dir := t.TempDir()
	spec := stepspec.Spec{
		Ticket:        "ticket-" + strings.ReplaceAll(t.Name(), "/", "-"),
		Syntax:        s.syntax,
		FirstSequence: s.firstSeq,
		Variables:     s.vars,
		CancelGrace:   stepspec.Duration(s.grace),
		LogLevels:     !s.noLevels,
	}
	if spec.Syntax == "" {
		spec.Syntax = stepspec.SyntaxBash
	}
	if spec.FirstSequence == 0 {
		spec.FirstSequence = 1
	}
	if err := stepspec.WriteJSON(filepath.Join(dir, stepspec.SpecFile), spec, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, stepspec.ScriptFile), []byte(s.script), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, stepspec.WorkDir), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func (s step) stdinDoc(t testing.TB) string {
	if s.stdin != nil {
		return *s.stdin
	}
	doc := stepspec.Secrets{Variables: s.secrets}
	if !s.noKey {
		doc.StepKey = testKey
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// startRunner starts the runner on dir; the caller waits for it.
func startRunner(t testing.TB, s step, dir string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(runnerBin, "run", dir)
	cmd.Stdin = strings.NewReader(s.stdinDoc(t))
	var stderr bytes.Buffer
	cmd.Stdout = &stderr // the runner prints nothing of the script's
	cmd.Stderr = &stderr
	if s.env != nil {
		cmd.Env = s.env
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, &stderr
}

// done is a finished run.
type done struct {
	dir      string
	exit     int
	stderr   string // the runner's own
	result   stepspec.Result
	records  []steplog.Record
	raw      []byte // output.log
	duration time.Duration
}

// runStep runs s to its end.
func runStepT(t testing.TB, s step) done {
	t.Helper()
	dir := newStepDir(t, s)
	return finishRun(t, s, dir, nil)
}

// finishRun starts the runner on dir (unless cmd is given) and waits for it.
func finishRun(t testing.TB, s step, dir string, started *exec.Cmd) done {
	t.Helper()
	start := time.Now()
	cmd, stderr := started, new(bytes.Buffer)
	if cmd == nil {
		cmd, stderr = startRunner(t, s, dir)
	}
	err := cmd.Wait()
	d := done{dir: dir, exit: exitCode(t, err), stderr: stderr.String(), duration: time.Since(start)}
	if err := stepspec.ReadJSON(filepath.Join(dir, stepspec.ResultFile), &d.result); err != nil {
		t.Fatalf("result: %v (runner's stderr: %s)", err, d.stderr)
	}
	d.records, d.raw = readLog(t, dir)
	return d
}

// readLog reads every record of dir's output.log and checks that nothing
// follows the last.
func readLog(t testing.TB, dir string) ([]steplog.Record, []byte) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, stepspec.OutputLog))
	if err != nil {
		t.Fatal(err)
	}
	r := steplog.NewReader(bytes.NewReader(raw), 0)
	var recs []steplog.Record
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, rec)
	}
	if r.Offset() != int64(len(raw)) {
		t.Fatalf("output.log: %d bytes after the last record", int64(len(raw))-r.Offset())
	}
	return recs, raw
}

// lines returns the text of d's records of kind.
func (d done) lines(kind steplog.Kind) []string {
	var out []string
	for _, r := range d.records {
		if r.Kind == kind {
			out = append(out, string(r.Data))
		}
	}
	return out
}

func (d done) events(t *testing.T) []steplog.Event {
	t.Helper()
	var out []steplog.Event
	for _, r := range d.records {
		if r.Kind == steplog.KindEvent {
			var ev steplog.Event
			if err := json.Unmarshal(r.Data, &ev); err != nil {
				t.Fatal(err)
			}
			out = append(out, ev)
		}
	}
	return out
}

// waitForLine tails dir's output.log until a stdout record is line.
func waitForLine(t *testing.T, dir, line string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var f *os.File
	for f == nil {
		f, _ = os.Open(filepath.Join(dir, stepspec.OutputLog))
		if time.Now().After(deadline) {
			t.Fatal("no output.log")
		}
		time.Sleep(5 * time.Millisecond)
	}
	defer f.Close()
	r := steplog.NewReader(f, 0)
	for time.Now().Before(deadline) {
		rec, err := r.Next()
		if err == io.EOF {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if rec.Kind == steplog.KindStdout && string(rec.Data) == line {
			return
		}
	}
	t.Fatalf("no line %q within 10s", line)
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(runnerBin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), "stevedore-step ") {
		t.Fatalf("version: %q", out)
	}
	if err := exec.Command(runnerBin, "bogus").Run(); exitCode(t, err) != exitUsage {
		t.Fatalf("bogus command: %v", err)
	}
}
