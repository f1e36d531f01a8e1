package server_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
)

// TestAPILogLevels: the levels a step's script set are in the task log
// and its API (omitted for the ordinary level, also in the file), marked in
// the text view; the script's resultMessage is the step's reason.
func TestAPILogLevels(t *testing.T) {
	e := newEnv(t)
	e.pollingAgent("w1", 1)
	a := e.api()
	step := &pb.StartStepRequest{Execution: &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}},
		Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: `echo '##octopus[stdout-warning]'; echo careful; echo '##octopus[stdout-default]'; echo plain
echo '##octopus[stdout-verbose]'; echo detail
echo '##octopus[stdout-highlight]'; echo v2 is live; head -c 70000 /dev/zero | tr '\0' x; echo
echo '##octopus[stdout-default]'; echo oops >&2
echo "##octopus[resultMessage message='$(printf 'deployed v2' | base64)']"`}}
	v := a.submit(map[string]any{"pool": "linux"}, step)
	lines, final := a.follow(v.ID)
	if final.Outcome != "SUCCEEDED" || final.Reason != "deployed v2" {
		t.Fatalf("final %+v", final.StepRecord)
	}

	var got []string
	for _, l := range lines {
		if l.Source != "agent" {
			got = append(got, fmt.Sprintf("%s %q %s %v", l.Source, l.Text[:min(len(l.Text), 12)], l.Level, l.Partial))
		}
	}
	want := []string{`stdout "careful" warning false`, `stdout "plain"  false`, `stdout "detail" verbose false`, `stdout "v2 is live" highlight false`,
		`stdout "xxxxxxxxxxxx" highlight true`, `stdout "xxxxxxxxxxxx" highlight false`, `stderr "oops"  false`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("lines\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The file: "level" only where there is one.
	f, err := os.Open(filepath.Join(e.dir, "server", server.TaskLogsDir, v.ID+".log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	withLevel := 0
	for r := bufio.NewReader(f); ; {
		line, err := r.ReadBytes('\n')
		if err != nil {
			break
		}
		has := bytes.Contains(line, []byte(`"level":`))
		if has {
			withLevel++
		}
		if plain := bytes.Contains(line, []byte(`"text":"plain"`)); plain && has {
			t.Errorf("a default line with a level: %s", line)
		}
	}
	if withLevel != 5 {
		t.Errorf("%d task log lines with a level, want 5", withLevel)
	}

	code, body := a.do("GET", "/api/steps/"+v.ID+"/log?format=text", nil)
	text := string(body)
	for _, w := range []string{
		"[warning] careful\nplain\n[verbose] detail\n[highlight] v2 is live\n",
		"\n[highlight] " + strings.Repeat("x", 70000) + "\n", // one mark for both pieces
		"[stderr] oops\n",
		"[stevedore] result message: deployed v2\n",
	} {
		if code != http.StatusOK || !strings.Contains(text, w) {
			t.Errorf("text log %d:\n%.2000s\nwant it to hold %.200q", code, text, w)
		}
	}
}
