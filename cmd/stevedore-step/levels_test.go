package main

import (
	"fmt"
	"strings"
	"testing"

	"stevedore/internal/steplog"
)

// line is a stdout or stderr record as the level tests see it.
type line struct {
	kind    steplog.Kind
	level   steplog.Level
	partial bool
	text    string
}

func (l line) String() string {
	return fmt.Sprintf("{%d %s %v %q}", l.kind, l.level, l.partial, l.text)
}

// outputLines returns d's stdout and stderr records, in order.
func (d done) outputLines() []line {
	var out []line
	for _, r := range d.records {
		if r.Kind != steplog.KindEvent {
			out = append(out, line{r.Kind, r.Level, r.Partial, string(r.Data)})
		}
	}
	return out
}

func ofKind(lines []line, k steplog.Kind) []line {
	var out []line
	for _, l := range lines {
		if l.kind == k {
			out = append(out, l)
		}
	}
	return out
}

func TestLevels(t *testing.T) {
	out, errk := steplog.KindStdout, steplog.KindStderr
	tests := []struct {
		name   string
		script string
		want   []line
	}{
		{"every level, then back to default", `echo plain
echo '##octopus[stdout-verbose]'; echo v
echo '##octopus[stdout-highlight]'; echo h
echo '##octopus[stdout-wait]'; echo w
echo '##octopus[stdout-warning]'; echo careful
echo '##octopus[stdout-error]'; echo bad
echo '##octopus[stdout-default]'; echo plain again
`, []line{
			{out, steplog.LevelDefault, false, "plain"},
			{out, steplog.LevelVerbose, false, "v"},
			{out, steplog.LevelHighlight, false, "h"},
			{out, steplog.LevelWait, false, "w"},
			{out, steplog.LevelWarning, false, "careful"},
			{out, steplog.LevelError, false, "bad"},
			{out, steplog.LevelDefault, false, "plain again"},
		}},
		{"a level lasts until the next switch, over many lines", "echo '##stevedore[stdout-warning]'\nseq 1 3\n", []line{
			{out, steplog.LevelWarning, false, "1"},
			{out, steplog.LevelWarning, false, "2"},
			{out, steplog.LevelWarning, false, "3"},
		}},
		{"stderr keeps the default level", "echo '##octopus[stdout-verbose]'\necho to-err >&2\necho to-out\n", []line{
			{errk, steplog.LevelDefault, false, "to-err"},
			{out, steplog.LevelVerbose, false, "to-out"},
		}},
		{"text before the switch keeps the old level", "echo '##octopus[stdout-highlight]'\nprintf 'half '\necho '##octopus[stdout-default]'\necho after\n", []line{
			{out, steplog.LevelHighlight, true, "half "},
			{out, steplog.LevelDefault, false, "after"},
		}},
		{"output without a newline at the end", "echo '##octopus[stdout-wait]'\nprintf 'waiting'\n", []line{
			{out, steplog.LevelWait, true, "waiting"},
		}},
		{"every piece of a long line", "echo '##octopus[stdout-error]'\nhead -c 70000 /dev/zero | tr '\\0' e\necho\n", []line{
			{out, steplog.LevelError, true, strings.Repeat("e", steplog.MaxData)},
			{out, steplog.LevelError, false, strings.Repeat("e", 70000-steplog.MaxData)},
		}},
		{"the runner's own lines are default", "echo '##octopus[stdout-warning]'\nmask s3\nset_variable Plain 'has s3'\necho s3\n", nil},
		{"a malformed switch is a line", "echo '##octopus[stdout-warning] x'\necho y\n", []line{
			{out, steplog.LevelDefault, false, "##octopus[stdout-warning] x"},
			{out, steplog.LevelDefault, false, "y"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := runStepT(t, step{script: tt.script})
			if d.exit != 0 {
				t.Fatalf("exit %d; runner stderr %q; records %s", d.exit, d.stderr, dump(d.records))
			}
			got := d.outputLines()
			if tt.want == nil {
				// Only what the runner itself said, each at the default
				// level, and the masked line at the script's.
				for _, l := range got {
					switch {
					case l.kind == errk && strings.HasPrefix(l.text, "stevedore-step: "):
						if l.level != steplog.LevelDefault {
							t.Errorf("runner line %v", l)
						}
					case l.kind == out && l.text == maskText:
						if l.level != steplog.LevelWarning {
							t.Errorf("masked line %v", l)
						}
					default:
						t.Errorf("unexpected %v", l)
					}
				}
				if len(got) < 2 {
					t.Fatalf("lines %v: want the runner's line and the masked one", got)
				}
				return
			}
			// Per source: the order between stdout and stderr is the pipes'.
			for _, k := range []steplog.Kind{out, errk} {
				if g, w := ofKind(got, k), ofKind(tt.want, k); fmt.Sprint(g) != fmt.Sprint(w) {
					t.Fatalf("kind %d lines\n%v\nwant\n%v", k, g, w)
				}
			}
			// The switches are not records of any kind.
			if evs := d.events(t); len(evs) != 0 {
				t.Fatalf("events %+v", evs)
			}
		})
	}
}

// TestNoLevelsForAnOlderAgent: an agent that does not ask for levels gets
// none in output.log (its reader would stop at the first), and the
// switches stay lines, as they were before levels existed.
func TestNoLevelsForAnOlderAgent(t *testing.T) {
	d := runStepT(t, step{noLevels: true, script: "echo '##octopus[stdout-warning]'; echo careful\nprintf 'a '; echo '##octopus[stdout-default]'\n"})
	want := []line{
		{steplog.KindStdout, steplog.LevelDefault, false, "##octopus[stdout-warning]"},
		{steplog.KindStdout, steplog.LevelDefault, false, "careful"},
		{steplog.KindStdout, steplog.LevelDefault, false, "a ##octopus[stdout-default]"},
	}
	if got := d.outputLines(); d.exit != 0 || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("exit %d, lines %v, want %v", d.exit, got, want)
	}
}

func TestResultMessage(t *testing.T) {
	msg := func(s string) string {
		return fmt.Sprintf("echo \"##octopus[resultMessage message='$(printf %%s '%s' | base64)']\"\n", s)
	}
	tests := []struct {
		name        string
		script      string
		wantExit    int
		wantMessage string // Result.Message
		wantResult  string // Result.ResultMessage
	}{
		{"on success", msg("deployed v2"), 0, "deployed v2", "deployed v2"},
		{"Octopus's fail_step: resultMessage, then a non-zero exit", msg("db down") + "exit 1\n", 1, "db down", "db down"},
		{"the last one wins", msg("first") + msg("second"), 0, "second", "second"},
		{"failStep wins the failure's reason", msg("deployed") + "\"$STEVEDORE_RUNNER\" emit failStep 'message=it broke'\nexit 1\n", 1, "it broke", "deployed"},
		{"fail_step is Octopus's: its message is the last resultMessage", msg("deployed") + "fail_step 'it broke'\n", 1, "it broke", "it broke"},
		{"failStep wins also when it came first", "emit() { \"$STEVEDORE_RUNNER\" emit \"$@\"; }\nemit failStep message=broke\n" + msg("later") + "exit 2\n", 2, "broke", "later"},
		{"masked", "mask hunter2\n" + msg("pw hunter2"), 0, "pw " + maskText, "pw " + maskText},
		{"none", "exit 3\n", 3, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := runStepT(t, step{script: tt.script})
			if d.exit != tt.wantExit || d.result.Message != tt.wantMessage || d.result.ResultMessage != tt.wantResult || d.result.RunnerError {
				t.Fatalf("exit %d, result %+v; want exit %d, message %q, result message %q; records %s", d.exit, d.result, tt.wantExit, tt.wantMessage, tt.wantResult, dump(d.records))
			}
			// Each resultMessage is an event, recorded (masked) for the log;
			// Octopus's fail_step sends one too.
			n := strings.Count(tt.script, "resultMessage") + strings.Count(tt.script, "fail_step ")
			var got []string
			for _, ev := range d.events(t) {
				if ev.Type == "resultMessage" {
					got = append(got, ev.Message)
				}
			}
			if len(got) != n || (n > 0 && got[n-1] != tt.wantResult) {
				t.Fatalf("resultMessage events %q, want %d ending with %q", got, n, tt.wantResult)
			}
		})
	}
}
