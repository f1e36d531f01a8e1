package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	pb "stevedore/proto/stevedore/v1"
)

func TestLinePrinter(t *testing.T) {
	const (
		out   = pb.LogSource_LOG_SOURCE_STDOUT
		errs  = pb.LogSource_LOG_SOURCE_STDERR
		agent = pb.LogSource_LOG_SOURCE_AGENT
	)
	type in struct {
		src     pb.LogSource
		level   pb.LogLevel
		partial bool
		text    string
	}
	lines := []in{
		{out, pb.LogLevel_LOG_LEVEL_UNSPECIFIED, false, "plain"},
		{out, pb.LogLevel_LOG_LEVEL_VERBOSE, false, "detail"},
		{out, pb.LogLevel_LOG_LEVEL_HIGHLIGHT, false, "v2 is live"},
		{out, pb.LogLevel_LOG_LEVEL_WAIT, false, "waiting for the lock"},
		{out, pb.LogLevel_LOG_LEVEL_WARNING, false, "careful"},
		{out, pb.LogLevel_LOG_LEVEL_ERROR, false, "no database"},
		{errs, pb.LogLevel_LOG_LEVEL_UNSPECIFIED, false, "oops"},
		{agent, pb.LogLevel_LOG_LEVEL_UNSPECIFIED, false, "result message: done"},
		// A long warning in two pieces: one mark.
		{out, pb.LogLevel_LOG_LEVEL_WARNING, true, "long "},
		{out, pb.LogLevel_LOG_LEVEL_WARNING, false, "warning"},
		// A long verbose line: neither piece without --verbose.
		{out, pb.LogLevel_LOG_LEVEL_VERBOSE, true, "v1 "},
		{out, pb.LogLevel_LOG_LEVEL_VERBOSE, false, "v2"},
		// A partial stderr line cut by the agent's: the agent's is marked.
		{errs, pb.LogLevel_LOG_LEVEL_UNSPECIFIED, true, "half"},
		{agent, pb.LogLevel_LOG_LEVEL_UNSPECIFIED, false, "cancelled"},
	}
	tests := []struct {
		name             string
		verbose, styled  bool
		wantOut, wantErr string
	}{
		{"default", false, false,
			"plain\nv2 is live\nwaiting for the lock\n",
			"warning: careful\nerror: no database\noops\nstevedore: result message: done\nwarning: long warning\nhalfstevedore: cancelled\n"},
		{"verbose", true, false,
			"plain\ndetail\nv2 is live\nwaiting for the lock\nv1 v2\n",
			"warning: careful\nerror: no database\noops\nstevedore: result message: done\nwarning: long warning\nhalfstevedore: cancelled\n"},
		{"on a terminal", false, true,
			"plain\n\x1b[1mv2 is live\x1b[0m\nwaiting for the lock\n",
			"warning: careful\nerror: no database\noops\nstevedore: result message: done\nwarning: long warning\nhalfstevedore: cancelled\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o, e bytes.Buffer
			stdout, stderr := bufio.NewWriter(&o), bufio.NewWriter(&e)
			p := newLinePrinter(stdout, stderr, &o, &e, tt.verbose)
			if p.styleOut || p.styleErr {
				t.Fatal("a buffer taken for a terminal")
			}
			if f, err := os.CreateTemp(t.TempDir(), "out"); err != nil || styled(f) {
				t.Fatalf("a file taken for a terminal (%v)", err)
			}
			p.styleOut, p.styleErr = tt.styled, tt.styled
			var pbLines []*pb.LogLine
			for i, l := range lines {
				pbLines = append(pbLines, &pb.LogLine{Sequence: uint64(i + 1), Source: l.src, Level: l.level, Partial: l.partial, Text: []byte(l.text)})
			}
			// In two batches, and the first again: a repeat is not printed twice.
			after := p.print(pbLines[:5], 0)
			after = p.print(pbLines, after)
			stdout.Flush()
			stderr.Flush()
			if after != uint64(len(lines)) {
				t.Fatalf("after %d", after)
			}
			if o.String() != tt.wantOut || e.String() != tt.wantErr {
				t.Fatalf("stdout %q\nstderr %q\nwant   %q\n       %q", o.String(), e.String(), tt.wantOut, tt.wantErr)
			}
		})
	}
}

// TestRunLevels: `stevedore run`, straight to a real agent and through a
// server (its built-in worker): verbose lines only with --verbose,
// warnings on stderr, the resultMessage as the reason in --result.
func TestRunLevels(t *testing.T) {
	script := `echo '##octopus[stdout-warning]'; echo careful; echo '##octopus[stdout-default]'; echo plain
echo '##octopus[stdout-verbose]'; echo detail; echo '##octopus[stdout-default]'
echo '##octopus[stdout-highlight]'; echo v2 is live
echo "##octopus[resultMessage message='$(printf 'deployed v2' | base64)']"`
	clientDir := filepath.Join(t.TempDir(), "client")
	addr, tp := listeningAgent(t, clientDir)
	s := newServerSetup(t, "--builtin-worker")
	s.start(t)
	modes := []struct {
		name string
		run  func(t *testing.T, args ...string) (stdout, stderr string, code int)
	}{
		{"direct", func(t *testing.T, args ...string) (string, string, int) {
			stdout, stderr, err := run(t, append([]string{"run", "--state-dir", clientDir, "--agent", addr, "--agent-thumbprint", tp}, args...)...)
			code := 0
			if err != nil {
				code = -1
				var ec exitCodeError
				if errors.As(err, &ec) {
					code = ec.code
				}
			}
			return stdout, stderr, code
		}},
		{"through a server", func(t *testing.T, args ...string) (string, string, int) {
			code, stdout, stderr := runStevedore(t, nil, append([]string{"run", "--server", s.url(), "--pool", "builtin", "--user", testAdmin, "--password", testPassword}, args...)...)
			return stdout, stderr, code
		}},
	}
	for _, m := range modes {
		for _, verbose := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, verbose %v", m.name, verbose), func(t *testing.T) {
				result := filepath.Join(t.TempDir(), "result.json")
				args := []string{"--result", result, "--script", script}
				wantStdout := "plain\nv2 is live\n"
				if verbose {
					args = append(args, "--verbose")
					wantStdout = "plain\ndetail\nv2 is live\n"
				}
				stdout, stderr, code := m.run(t, args...)
				if code != 0 {
					t.Fatalf("exit %d; stderr %q", code, stderr)
				}
				// Not a terminal: the highlighted line is unmarked.
				if stdout != wantStdout || !strings.Contains(stderr, "warning: careful\n") {
					t.Fatalf("stdout %q stderr %q; want stdout %q and the warning on stderr", stdout, stderr, wantStdout)
				}
				if !verbose && strings.Contains(stderr, "detail") {
					t.Fatalf("a verbose line on stderr: %q", stderr)
				}
				b, err := os.ReadFile(result)
				if err != nil {
					t.Fatal(err)
				}
				var res map[string]any
				if err := json.Unmarshal(b, &res); err != nil || res["outcome"] != "SUCCEEDED" || res["reason"] != "deployed v2" {
					t.Fatalf("result %s (%v)", b, err)
				}
			})
		}
	}
}
