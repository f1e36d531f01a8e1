package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"stevedore/internal/steplog"
	"stevedore/internal/stepspec"
)

func ptr[T any](v T) *T { return &v }

func TestRun(t *testing.T) {
	stdout, stderr := steplog.KindStdout, steplog.KindStderr
	tests := []struct {
		name     string
		step     step
		wantExit int
		check    func(t *testing.T, d done)
	}{
		{name: "exit 0", step: step{script: "true\n"}, wantExit: 0, check: func(t *testing.T, d done) {
			if len(d.records) != 0 || d.result.LastSequence != 0 || d.result.RunnerError {
				t.Fatalf("records %d, result %+v", len(d.records), d.result)
			}
		}},
		{name: "exit 42", step: step{script: "echo bye\nexit 42\n"}, wantExit: 42, check: func(t *testing.T, d done) {
			wantLines(t, d.lines(stdout), "bye")
			if d.result.Signal != "" || d.result.Message != "" {
				t.Fatalf("result %+v", d.result)
			}
		}},
		{name: "stdout and stderr apart", step: step{script: "echo out1\necho err1 >&2\necho out2\necho err2 >&2\n"}, check: func(t *testing.T, d done) {
			wantLines(t, d.lines(stdout), "out1", "out2")
			wantLines(t, d.lines(stderr), "err1", "err2")
		}},
		{name: "100000 lines complete and in order", step: step{script: "seq 1 100000\n", firstSeq: 1000}, check: func(t *testing.T, d done) {
			got := d.lines(stdout)
			if len(got) != 100000 {
				t.Fatalf("%d lines", len(got))
			}
			for i, l := range got {
				if l != strconv.Itoa(i+1) {
					t.Fatalf("line %d = %q", i, l)
				}
			}
			for i, r := range d.records {
				if r.Seq != 1000+uint64(i) {
					t.Fatalf("record %d has seq %d", i, r.Seq)
				}
			}
			if d.result.LastSequence != 1000+100000-1 {
				t.Fatalf("LastSequence %d", d.result.LastSequence)
			}
		}},
		{name: "long line", step: step{script: "head -c 200000 /dev/zero | tr '\\0' a\necho\necho next\n"}, check: func(t *testing.T, d done) {
			want := []struct {
				n       int
				partial bool
			}{{steplog.MaxData, true}, {steplog.MaxData, true}, {steplog.MaxData, true}, {200000 - 3*steplog.MaxData, false}}
			if len(d.records) != len(want)+1 {
				t.Fatalf("%d records", len(d.records))
			}
			for i, w := range want {
				r := d.records[i]
				if len(r.Data) != w.n || r.Partial != w.partial || strings.Trim(string(r.Data), "a") != "" {
					t.Fatalf("piece %d: %d bytes, partial %v", i, len(r.Data), r.Partial)
				}
			}
			if string(d.records[4].Data) != "next" {
				t.Fatalf("after the long line: %q", d.records[4].Data)
			}
		}},
		{name: "no trailing newline", step: step{script: "echo a\nprintf b\n"}, check: func(t *testing.T, d done) {
			if len(d.records) != 2 || d.records[0].Partial || !d.records[1].Partial || string(d.records[1].Data) != "b" {
				t.Fatalf("records %+v", d.records)
			}
		}},
		{name: "invalid UTF-8, binary, CR and empty lines", step: step{script: `printf '\377\376 x\r\n\na\000b\n'` + "\n"}, check: func(t *testing.T, d done) {
			wantLines(t, d.lines(stdout), "\xff\xfe x\r", "", "a\x00b")
		}},
		{name: "set_variable", step: step{script: `set_variable Out "value 1"
set_variable Octopus.Out 'it'"'"'s'
set_variable Sec "s3cr3t value" sensitive
echo "it is s3cr3t value"
echo "s3cr3t value" >&2
`}, check: func(t *testing.T, d done) {
			evs := d.events(t)
			if len(evs) != 3 {
				t.Fatalf("events %+v", evs)
			}
			if evs[0] != (steplog.Event{Type: "setVariable", Name: "Out", Value: "value 1"}) ||
				evs[1] != (steplog.Event{Type: "setVariable", Name: "Octopus.Out", Value: "it's"}) {
				t.Fatalf("events %+v", evs)
			}
			if evs[2].Name != "Sec" || !evs[2].Sensitive {
				t.Fatalf("sensitive event %+v", evs[2])
			}
			if v, err := steplog.OpenValue(testKey, evs[2].Value); err != nil || v != "s3cr3t value" {
				t.Fatalf("sealed value opens to %q, %v", v, err)
			}
			wantLines(t, d.lines(stdout), "it is "+maskText)
			wantLines(t, d.lines(stderr), maskText)
			noSecret(t, d, "s3cr3t")
		}},
		{name: "sensitive set_variable without a step key", step: step{noKey: true, script: "set_variable Sec abc123 sensitive\necho abc123\n"}, check: func(t *testing.T, d done) {
			if evs := d.events(t); len(evs) != 0 {
				t.Fatalf("events %+v", evs)
			}
			if got := d.lines(stderr); len(got) != 1 || !strings.Contains(got[0], `"Sec" was not recorded`) {
				t.Fatalf("stderr %q", got)
			}
			wantLines(t, d.lines(stdout), maskText)
			noSecret(t, d, "abc123")
		}},
		{name: "sensitive input variable masked", step: step{
			secrets: []stepspec.Variable{{Name: "Password", Value: "hunter2"}, {Name: "Db.Password", Value: "pa55word"}},
			script:  "echo \"pw=$Password\"\necho \"$Db_Password\" >&2\necho \"$(get_variable Db.Password)\"\n",
		}, check: func(t *testing.T, d done) {
			wantLines(t, d.lines(stdout), "pw="+maskText, maskText)
			wantLines(t, d.lines(stderr), maskText)
			noSecret(t, d, "hunter2")
			noSecret(t, d, "pa55word")
		}},
		{name: "mask", step: step{script: "echo before xyzzy\nmask xyzzy\necho after xyzzy\n"}, check: func(t *testing.T, d done) {
			wantLines(t, d.lines(stdout), "before xyzzy", "after "+maskText)
			if evs := d.events(t); len(evs) != 1 || evs[0] != (steplog.Event{Type: "mask"}) {
				t.Fatalf("events %+v", evs)
			}
		}},
		{name: "new_artifact", step: step{script: "mkdir out\necho x > out/a.txt\nnew_artifact out/a.txt\nnew_artifact /tmp/b.zip Bundle\ncd out && new_artifact a.txt A\n"}, check: func(t *testing.T, d done) {
			work := filepath.Join(d.dir, stepspec.WorkDir)
			want := []steplog.Event{
				{Type: "createArtifact", Path: filepath.Join(work, "out/a.txt"), Name: "a.txt"},
				{Type: "createArtifact", Path: "/tmp/b.zip", Name: "Bundle"},
				{Type: "createArtifact", Path: filepath.Join(work, "out/a.txt"), Name: "A"},
			}
			if evs := d.events(t); !slices.Equal(evs, want) {
				t.Fatalf("events %+v, want %+v", evs, want)
			}
		}},
		{name: "raw createArtifact is relative to the work dir", step: step{script: "cd /tmp\necho \"##stevedore[createArtifact path='$(printf rel/x.txt | base64)']\"\n"}, check: func(t *testing.T, d done) {
			want := []steplog.Event{{Type: "createArtifact", Path: filepath.Join(d.dir, stepspec.WorkDir, "rel/x.txt"), Name: "x.txt"}}
			if evs := d.events(t); !slices.Equal(evs, want) {
				t.Fatalf("events %+v, want %+v", evs, want)
			}
		}},
		{name: "fail_step", step: step{script: "echo before\nfail_step \"it broke\"\necho after\n"}, wantExit: 1, check: func(t *testing.T, d done) {
			wantLines(t, d.lines(stdout), "before")
			if d.result.Message != "it broke" || d.result.RunnerError {
				t.Fatalf("result %+v", d.result)
			}
			if evs := d.events(t); len(evs) != 1 || evs[0] != (steplog.Event{Type: "resultMessage", Message: "it broke"}) {
				t.Fatalf("events %+v", evs)
			}
		}},
		{name: "set_progress", step: step{script: "set_progress 40 \"almost half\"\nset_progress 100\n"}, check: func(t *testing.T, d done) {
			want := []steplog.Event{{Type: "progress", Percentage: 40, Message: "almost half"}, {Type: "progress", Percentage: 100}}
			if evs := d.events(t); !slices.Equal(evs, want) {
				t.Fatalf("events %+v", evs)
			}
		}},
		{name: "get_variable", step: step{
			vars:    []stepspec.Variable{{Name: "Plain", Value: "p 1"}, {Name: "Octopus.Action.Name", Value: "deploy"}},
			secrets: []stepspec.Variable{{Name: "Password", Value: "hunter2"}},
			script: `echo "[$(get_variable Plain)]"
echo "[$(get_variable Octopus.Action.Name)]"
get_variable Password | tr a-z A-Z; echo
get_variable Missing 2>/dev/null || echo "missing: $?"
`,
		}, check: func(t *testing.T, d done) {
			wantLines(t, d.lines(stdout), "[p 1]", "[deploy]", "HUNTER2", "missing: 1")
		}},
		{name: "environment", step: step{
			vars: []stepspec.Variable{{Name: "Octopus.Action.Name", Value: "deploy"}, {Name: "1st", Value: "one"}, {Name: "a-b", Value: "ab"}, {Name: "a_b", Value: "exact"}},
			script: `echo "$Octopus_Action_Name $_1st $a_b"
echo "$STEVEDORE_TICKET"
[ "$STEVEDORE_WORK_DIR" = "$PWD" ] && echo "cwd ok"
[ "$STEVEDORE_STEP_DIR/work" = "$PWD" ] && echo "step dir ok"
"$STEVEDORE_RUNNER" version | cut -d' ' -f1
[ -n "$PATH" ] && [ -n "$HOME" ] && echo "inherited"
[ -r /dev/stdin ] && [ -z "$(cat)" ] && echo "stdin empty"
`,
		}, check: func(t *testing.T, d done) {
			wantLines(t, d.lines(stdout), "deploy one exact", "ticket-TestRun-environment", "cwd ok", "step dir ok", "stevedore-step", "inherited", "stdin empty")
		}},
		{name: "bash script semantics", step: step{script: `echo "$0 $#"
f() { return 3; }
set -e
echo before
f
echo after
`}, wantExit: 3, check: func(t *testing.T, d done) {
			wantLines(t, d.lines(stdout), filepath.Join(d.dir, "script")+" 0", "before")
		}},
		{name: "bash exit in a function", step: step{script: "f() { exit 7; }\nf\necho no\n"}, wantExit: 7},
		{name: "sh", step: step{syntax: stepspec.SyntaxSh, script: `echo "$0 $#"
set_variable A "b c"
echo "[$(get_variable V)]"
set -e
false
echo unreachable
`, vars: []stepspec.Variable{{Name: "V", Value: "v"}}}, wantExit: 1, check: func(t *testing.T, d done) {
			wantLines(t, d.lines(stdout), filepath.Join(d.dir, "script")+" 0", "[v]")
			if evs := d.events(t); len(evs) != 1 || evs[0] != (steplog.Event{Type: "setVariable", Name: "A", Value: "b c"}) {
				t.Fatalf("events %+v", evs)
			}
		}},
		{name: "sh exit code", step: step{syntax: stepspec.SyntaxSh, script: "exit 9\n"}, wantExit: 9},
		{name: "python", step: step{syntax: stepspec.SyntaxPython,
			vars:    []stepspec.Variable{{Name: "Octopus.Action.Name", Value: "deploy"}},
			secrets: []stepspec.Variable{{Name: "Password", Value: "hunter2"}},
			script: `import os, sys
print(__name__, __file__ == os.path.join(os.environ["STEVEDORE_STEP_DIR"], "script"), sys.argv == [__file__])
print(get_variable("Octopus.Action.Name"), os.environ["Octopus_Action_Name"], get_variable("Password").upper())
print(get_variable("Missing", "default"))
set_variable("Out", "v")
set_variable("Sec", "py-secret", sensitive=True)
print("py-secret")
new_artifact("a.txt")
set_progress(10, "ten")
mask("m4sk")
print("m4sk", file=sys.stderr)
import stevedore_helpers
class C: pass
import pickle; pickle.dumps(C())
sys.exit(3)
`}, wantExit: 3, check: func(t *testing.T, d done) {
			wantLines(t, d.lines(stdout), "__main__ True True", "deploy deploy HUNTER2", "default", maskText)
			wantLines(t, d.lines(stderr), maskText)
			evs := d.events(t)
			if len(evs) != 5 || evs[0] != (steplog.Event{Type: "setVariable", Name: "Out", Value: "v"}) || !evs[1].Sensitive ||
				evs[2] != (steplog.Event{Type: "createArtifact", Name: "a.txt", Path: filepath.Join(d.dir, "work", "a.txt")}) ||
				evs[3] != (steplog.Event{Type: "progress", Percentage: 10, Message: "ten"}) || evs[4] != (steplog.Event{Type: "mask"}) {
				t.Fatalf("events %+v", evs)
			}
			noSecret(t, d, "py-secret")
		}},
		{name: "python fail_step", step: step{syntax: stepspec.SyntaxPython, script: "fail_step('py broke')\nprint('no')\n"}, wantExit: 1, check: func(t *testing.T, d done) {
			if d.result.Message != "py broke" || len(d.lines(stdout)) != 0 {
				t.Fatalf("result %+v, stdout %q", d.result, d.lines(stdout))
			}
		}},
		{name: "python traceback names the script", step: step{syntax: stepspec.SyntaxPython, script: "def f():\n    raise ValueError('boom')\nf()\n"}, wantExit: 1, check: func(t *testing.T, d done) {
			text := strings.Join(d.lines(stderr), "\n")
			if !strings.Contains(text, `File "`+filepath.Join(d.dir, "script")+`", line 2, in f`) || strings.Contains(text, "bootstrap") || !strings.HasSuffix(text, "ValueError: boom") {
				t.Fatalf("traceback:\n%s", text)
			}
		}},
		{name: "python syntax error", step: step{syntax: stepspec.SyntaxPython, script: "print('a'\n"}, wantExit: 1, check: func(t *testing.T, d done) {
			text := strings.Join(d.lines(stderr), "\n")
			if !strings.Contains(text, filepath.Join(d.dir, "script")) || !strings.Contains(text, "SyntaxError") {
				t.Fatalf("stderr:\n%s", text)
			}
		}},
		{name: "malformed service messages stay lines", step: step{script: `echo "##stevedore[setVariable name='!!!']"
echo "##stevedore[launchRockets]"
echo "##octopus[stdout-loud]"
`}, check: func(t *testing.T, d done) {
			wantLines(t, d.lines(stdout), "##stevedore[setVariable name='!!!']", "##stevedore[launchRockets]", "##octopus[stdout-loud]")
			if len(d.events(t)) != 0 {
				t.Fatal("events")
			}
		}},
		{name: "octopus service message", step: step{script: `echo "##octopus[setVariable name='$(printf Out | base64)' value='$(printf 'o v' | base64)' sensitive='VHJ1ZQ==']"` + "\necho 'o v'\n"}, check: func(t *testing.T, d done) {
			evs := d.events(t)
			if len(evs) != 1 || evs[0].Name != "Out" || !evs[0].Sensitive {
				t.Fatalf("events %+v", evs)
			}
			wantLines(t, d.lines(stdout), maskText)
		}},
		{name: "service message after output without a newline", step: step{script: "printf 'working...'\nset_variable A b\n"}, check: func(t *testing.T, d done) {
			if len(d.records) != 2 || !d.records[0].Partial || string(d.records[0].Data) != "working..." || d.records[1].Kind != steplog.KindEvent {
				t.Fatalf("records %+v", d.records)
			}
		}},
		{name: "background process holding stdout", step: step{script: "sleep 60 &\necho started\n"}, check: func(t *testing.T, d done) {
			if d.duration > 10*time.Second {
				t.Fatalf("the runner took %s", d.duration)
			}
			wantLines(t, d.lines(stdout), "started")
		}},
		{name: "missing interpreter", step: step{syntax: stepspec.SyntaxPython, script: "print(1)\n", env: []string{"PATH=/nonexistent"}}, wantExit: exitNotFound, check: func(t *testing.T, d done) {
			if !d.result.RunnerError || d.result.ExitCode != exitNotFound || !strings.Contains(d.result.Message, "python3 or python was not found") {
				t.Fatalf("result %+v", d.result)
			}
			if got := d.lines(stderr); len(got) != 1 || !strings.Contains(got[0], "not found") {
				t.Fatalf("stderr %q", got)
			}
		}},
		{name: "unknown syntax", step: step{syntax: "perl", script: "print 1\n"}, wantExit: exitRunnerError, check: func(t *testing.T, d done) {
			if !d.result.RunnerError || !strings.Contains(d.result.Message, `"perl"`) {
				t.Fatalf("result %+v", d.result)
			}
		}},
		{name: "malformed secrets", step: step{stdin: ptr(`{"variables":[{"name":"P","value":"hunter2"`), script: "echo no\n"}, wantExit: exitRunnerError, check: func(t *testing.T, d done) {
			if !d.result.RunnerError || len(d.lines(stdout)) != 0 {
				t.Fatalf("result %+v", d.result)
			}
			noSecret(t, d, "hunter2")
		}},
		{name: "short step key", step: step{stdin: ptr(`{"step_key":"AAAA"}`), script: "echo no\n"}, wantExit: exitRunnerError, check: func(t *testing.T, d done) {
			if !d.result.RunnerError || !strings.Contains(d.result.Message, "3 bytes") {
				t.Fatalf("result %+v", d.result)
			}
		}},
		{name: "empty secrets", step: step{stdin: ptr(""), script: "echo yes\n"}, check: func(t *testing.T, d done) {
			wantLines(t, d.lines(stdout), "yes")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := runStepT(t, tt.step)
			if d.exit != tt.wantExit || d.result.ExitCode != tt.wantExit {
				t.Fatalf("exit %d, result %+v, want %d; runner stderr %q; records %s", d.exit, d.result, tt.wantExit, d.stderr, dump(d.records))
			}
			if want := max(tt.step.firstSeq, 1) + uint64(len(d.records)) - 1; d.result.LastSequence != want {
				t.Fatalf("LastSequence %d, want %d", d.result.LastSequence, want)
			}
			if d.result.StartedAt.IsZero() || d.result.FinishedAt.Before(d.result.StartedAt) {
				t.Fatalf("times %+v", d.result)
			}
			if tt.check != nil {
				tt.check(t, d)
			}
		})
	}
}

func wantLines(t *testing.T, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("lines %q, want %q", got, want)
	}
}

// noSecret checks that secret is nowhere in the step directory's files.
func noSecret(t *testing.T, d done, secret string) {
	t.Helper()
	if bytes.Contains(d.raw, []byte(secret)) {
		t.Fatalf("output.log holds %q", secret)
	}
	filepath.WalkDir(d.dir, func(path string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			if b, _ := os.ReadFile(path); bytes.Contains(b, []byte(secret)) && filepath.Base(path) != stepspec.ScriptFile {
				t.Errorf("%s holds %q", path, secret)
			}
		}
		return nil
	})
}

func dump(recs []steplog.Record) string {
	var b strings.Builder
	for _, r := range recs {
		fmt.Fprintf(&b, "\n  %d k%d partial=%v %q", r.Seq, r.Kind, r.Partial, r.Data)
	}
	return b.String()
}

func TestSecondRunRefused(t *testing.T) {
	s := step{script: "echo once\n"}
	dir := newStepDir(t, s)
	first := finishRun(t, s, dir, nil)
	if first.exit != 0 {
		t.Fatalf("first run: %d", first.exit)
	}
	result, _ := os.ReadFile(filepath.Join(dir, stepspec.ResultFile))
	cmd, stderr := startRunner(t, s, dir)
	if code := exitCode(t, cmd.Wait()); code != exitRunnerError {
		t.Fatalf("second run: exit %d", code)
	}
	if !strings.Contains(stderr.String(), "already been started") {
		t.Fatalf("second run's stderr: %q", stderr)
	}
	_, raw := readLog(t, dir)
	result2, _ := os.ReadFile(filepath.Join(dir, stepspec.ResultFile))
	if !bytes.Equal(raw, first.raw) || !bytes.Equal(result, result2) {
		t.Fatal("the second run changed output.log or result.json")
	}
}

func TestCancel(t *testing.T) {
	tests := []struct {
		name       string
		script     string
		sig        syscall.Signal
		wantSignal string
		minTime    time.Duration // from the signal to the end
	}{
		{"script ends on SIGTERM", "echo ready\nsleep 60\n", syscall.SIGTERM, "SIGTERM", 0},
		{"SIGINT cancels too", "echo ready\nsleep 60\n", syscall.SIGINT, "SIGTERM", 0},
		{"script ignoring SIGTERM is killed after the grace period", "trap '' TERM\necho ready\nwhile :; do sleep 0.2; done\n", syscall.SIGTERM, "SIGKILL", time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := step{script: tt.script, grace: time.Second}
			dir := newStepDir(t, s)
			cmd, _ := startRunner(t, s, dir)
			waitForLine(t, dir, "ready")
			sent := time.Now()
			if err := cmd.Process.Signal(tt.sig); err != nil {
				t.Fatal(err)
			}
			d := finishRun(t, s, dir, cmd)
			took := time.Since(sent)
			signo := map[string]int{"SIGTERM": 15, "SIGKILL": 9}[tt.wantSignal]
			if d.result.Signal != tt.wantSignal || d.result.ExitCode != 128+signo || d.exit != 128+signo {
				t.Fatalf("exit %d, result %+v; records %s", d.exit, d.result, dump(d.records))
			}
			if took < tt.minTime || took > 5*time.Second {
				t.Fatalf("ended %s after the signal", took)
			}
			if !strings.Contains(d.result.Message, "cancelled") {
				t.Fatalf("message %q", d.result.Message)
			}
		})
	}
}

// TestCancelBeforeStart: a runner still waiting for its secrets ends on
// SIGTERM without running the script.
func TestCancelBeforeStart(t *testing.T) {
	s := step{script: "echo should not run\n"}
	dir := newStepDir(t, s)
	cmd := exec.Command(runnerBin, "run", dir)
	stdin, err := cmd.StdinPipe() // never closed before the signal
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, stepspec.OutputLog)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no output.log")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // let it reach the read of its stdin
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d := finishRun(t, s, dir, cmd)
	if d.exit != 143 || d.result.Signal != "SIGTERM" || d.result.RunnerError || !strings.Contains(d.result.Message, "before the script started") {
		t.Fatalf("exit %d, result %+v", d.exit, d.result)
	}
	if len(d.lines(steplog.KindStdout)) != 0 {
		t.Fatalf("the script ran: %s", dump(d.records))
	}
}
