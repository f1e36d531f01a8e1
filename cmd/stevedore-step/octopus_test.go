package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"stevedore/internal/steplog"
	"stevedore/internal/stepspec"
)

// Values that must reach scripts byte for byte.
var trickyValues = []stepspec.Variable{
	{Name: "Tricky.Quotes", Value: `it's "quoted" \ back\slash`},
	{Name: "Tricky.Newlines", Value: "line 1\nline 2\n\n"},
	{Name: "Tricky.Unicode", Value: "héllo wörld ✓ 日本"},
	{Name: "Tricky.Subst", Value: "$(touch pwned) ${HOME} $HOME"},
	{Name: "Tricky.Backticks", Value: "`touch pwned` ']' [x]"},
	{Name: "Tricky.Empty", Value: ""},
	{Name: "$(touch pwned).Name]", Value: "odd name"},
}

// octopusText drops Octopus's level switches ("##octopus[stdout-verbose]"):
// the helpers' exact output is TestOctopusHelperOutput's; here they may
// still be lines or already be levels.
func octopusText(lines []string) []string {
	return slices.DeleteFunc(slices.Clone(lines), func(l string) bool {
		rest, ok := strings.CutPrefix(l, "##octopus[stdout-")
		return ok && strings.HasSuffix(rest, "]") && !strings.ContainsAny(rest, " '")
	})
}

// checkRoundTrip compares the files a script wrote to dir, one per name,
// with the values.
func checkRoundTrip(t *testing.T, dir, suffix string, vars []stepspec.Variable) {
	t.Helper()
	for i, v := range vars {
		got, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("%d%s", i, suffix)))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != v.Value {
			t.Errorf("%s%s: %q, want %q", v.Name, suffix, got, v.Value)
		}
	}
}

func noPwned(t *testing.T, d done) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(d.dir, stepspec.WorkDir, "pwned")); err == nil {
		t.Error("a value or name was executed")
	}
}

// octopusStep is a step with the variables the Octopus-style scripts use.
func octopusStep(syntax, script, roundTrip string) step {
	vars := []stepspec.Variable{
		{Name: "Octopus.Action.Name", Value: "Deploy web"},
		{Name: "MyApp.ConnectionString", Value: "Server=db;User='app'"},
		{Name: "ROUNDTRIP_DIR", Value: roundTrip},
	}
	return step{syntax: syntax, script: script,
		vars:    append(vars, trickyValues...),
		secrets: []stepspec.Variable{{Name: "MyApp.Password", Value: "pa55-w0rd"}},
	}
}

// The events both scripts' helpers must produce, in order.
func checkOctopusEvents(t *testing.T, d done, wantExit int) {
	t.Helper()
	if d.exit != wantExit || d.result.Message != "Deployment failed: it broke" || d.result.RunnerError {
		t.Fatalf("exit %d, result %+v; records %s", d.exit, d.result, dump(d.records))
	}
	report := filepath.Join(d.dir, stepspec.WorkDir, "out", "report.txt")
	evs := d.events(t)
	if len(evs) != 6 {
		t.Fatalf("events %+v", evs)
	}
	if evs[0] != (steplog.Event{Type: "setVariable", Name: "TestResult", Value: "Passed"}) {
		t.Errorf("plain output variable %+v", evs[0])
	}
	if evs[1].Name != "Password" || !evs[1].Sensitive {
		t.Errorf("sensitive output variable %+v", evs[1])
	} else if v, err := steplog.OpenValue(testKey, evs[1].Value); err != nil || v != "correct horse battery staple" {
		t.Errorf("sensitive output variable opens to %q, %v", v, err)
	}
	want := []steplog.Event{
		{Type: "createArtifact", Path: report, Name: "report.txt"},
		{Type: "createArtifact", Path: report, Name: "Report.txt"},
		{Type: "progress", Percentage: 50, Message: "Half way"},
		{Type: "resultMessage", Message: "Deployment failed: it broke"},
	}
	if !slices.Equal(evs[2:], want) {
		t.Errorf("events %+v, want %+v", evs[2:], want)
	}
	noSecret(t, d, "pa55-w0rd")
	noSecret(t, d, "correct horse battery staple")
	noPwned(t, d)
}

// TestOctopusBashScript runs a bash script written the way Octopus's
// documentation shows, in strict mode, with every helper.
func TestOctopusBashScript(t *testing.T) {
	t.Parallel()
	roundTrip := t.TempDir()
	var save strings.Builder
	for i, v := range trickyValues {
		fmt.Fprintf(&save, "k=%s\n", shellQuote(v.Name))
		fmt.Fprintf(&save, "printf '%%s' \"${octopus_parameters[$k]}\" > \"$ROUNDTRIP_DIR/%d.array\"\n", i)
		fmt.Fprintf(&save, "get_octopusvariable \"$k\" > \"$ROUNDTRIP_DIR/%d.get\"\n", i)
	}
	script := `#!/bin/bash
set -euo pipefail

# It's a good idea to copy the value into a variable to avoid quoting issues
connectionString=$(get_octopusvariable "MyApp.ConnectionString")
echo "Connection string is: $connectionString"
password=$(get_octopusvariable "MyApp.Password")
echo "Password is: $password"
echo "Password from the array: ${octopus_parameters['MyApp.Password']}"
missing=$(get_octopusvariable "No.Such.Variable")
echo "missing: [$missing]"
echo "action: ${octopus_parameters['Octopus.Action.Name']}"
echo "count: ${#octopus_parameters[@]}"
` + save.String() + `
set_octopusvariable "TestResult" "Passed"
set_octopusvariable "Password" "correct horse battery staple" -sensitive
echo "the new password is correct horse battery staple"

mkdir -p out
echo report > out/report.txt
new_octopusartifact out/report.txt
new_octopusartifact "$PWD/out/report.txt" "Report.txt"
update_progress 50 "Half way"
write_verbose "verbose text"
write_highlight "highlight text"
write_wait "wait text"
write_warning "warning text"
echo "still running"
fail_step "Deployment failed: it broke"
echo "unreachable"
`
	d := runStepT(t, octopusStep(stepspec.SyntaxBash, script, roundTrip))
	checkOctopusEvents(t, d, 1)
	work := filepath.Join(d.dir, stepspec.WorkDir)
	wantLines(t, octopusText(d.lines(steplog.KindStdout)),
		"Connection string is: Server=db;User='app'",
		"Password is: "+maskText,
		"Password from the array: "+maskText,
		"missing: []",
		"action: Deploy web",
		fmt.Sprintf("count: %d", 4+len(trickyValues)),
		"the new password is "+maskText,
		"Collecting out/report.txt as an artifact...",
		"Artifact report.txt will be collected from out/report.txt after this step completes",
		"Collecting "+work+"/out/report.txt as an artifact...",
		"Artifact Report.txt will be collected from "+work+"/out/report.txt after this step completes",
		"verbose text", "highlight text", "wait text", "warning text",
		"still running",
	)
	if got := d.lines(steplog.KindStderr); len(got) != 0 {
		t.Errorf("stderr %q", got)
	}
	checkRoundTrip(t, roundTrip, ".array", trickyValues)
	checkRoundTrip(t, roundTrip, ".get", trickyValues)
}

// TestOctopusPythonScript is the same script in Python, as Octopus's
// documentation writes it.
func TestOctopusPythonScript(t *testing.T) {
	t.Parallel()
	roundTrip := t.TempDir()
	names := make([]string, len(trickyValues))
	for i, v := range trickyValues {
		names[i] = fmt.Sprintf("%q", v.Name) // a Go quoted ASCII string is a Python string
	}
	script := `import os
import sys

connectionString = get_octopusvariable("MyApp.ConnectionString")
print("Connection string is: " + connectionString)
print("Password is: " + get_octopusvariable("MyApp.Password"))
print("Password from the dict: " + octopus_parameters["MyApp.Password"])
try:
    get_octopusvariable("No.Such.Variable")
except KeyError:
    print("missing: KeyError")
print("action: " + octopus_parameters["Octopus.Action.Name"])
print("count: %d, one dict: %s" % (len(octopus_parameters), octopus_parameters is octopusvariables))
for i, name in enumerate([` + strings.Join(names, ", ") + `]):
    with open(os.path.join(os.environ["ROUNDTRIP_DIR"], "%d.dict" % i), "w", encoding="utf-8", newline="") as f:
        f.write(octopus_parameters[name])
    with open(os.path.join(os.environ["ROUNDTRIP_DIR"], "%d.get" % i), "w", encoding="utf-8", newline="") as f:
        f.write(get_octopusvariable(name))

set_octopusvariable("TestResult", "Passed")
set_octopusvariable("Password", "correct horse battery staple", True)
print("set locally: " + get_octopusvariable("TestResult"))
print("the new password is correct horse battery staple")

os.makedirs("out", exist_ok=True)
with open("out/report.txt", "w") as f:
    f.write("report\n")
createartifact("out/report.txt")
createartifact(os.path.abspath("out/report.txt"), "Report.txt")
updateprogress(50, "Half way")
printverbose("verbose text")
printhighlight("highlight text")
printwait("wait text")
printwarning("warning text")
from stevedore_helpers import failstep as imported
print("importable: %s" % (imported is failstep))
failstep("Deployment failed: it broke")
print("unreachable")
`
	d := runStepT(t, octopusStep(stepspec.SyntaxPython, script, roundTrip))
	checkOctopusEvents(t, d, 255) // failstep exits -1
	report := filepath.Join(d.dir, stepspec.WorkDir, "out", "report.txt")
	wantLines(t, octopusText(d.lines(steplog.KindStdout)),
		"Connection string is: Server=db;User='app'",
		"Password is: "+maskText,
		"Password from the dict: "+maskText,
		"missing: KeyError",
		"action: Deploy web",
		fmt.Sprintf("count: %d, one dict: True", 4+len(trickyValues)),
		"set locally: Passed",
		"the new password is "+maskText,
		"Artifact report.txt will be collected from "+report+" after this step completes",
		"Artifact Report.txt will be collected from "+report+" after this step completes",
		"verbose text", "highlight text", "wait text", "warning text",
		"importable: True",
	)
	if got := d.lines(steplog.KindStderr); len(got) != 0 {
		t.Errorf("stderr %q", got)
	}
	checkRoundTrip(t, roundTrip, ".dict", trickyValues)
	checkRoundTrip(t, roundTrip, ".get", trickyValues)
}

// shellQuote quotes s for sh, independently of writeBashQuoted.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}

// TestOctopusHelperOutput checks, byte for byte, what each helper prints:
// the lines and service messages of Octopus's own bootstrap, values in
// base64. Each call's standard output goes to a file of its own.
func TestOctopusHelperOutput(t *testing.T) {
	msg := func(typ string, kv ...string) string {
		var b strings.Builder
		b.WriteString("##octopus[" + typ)
		for i := 0; i < len(kv); i += 2 {
			fmt.Fprintf(&b, " %s='%s'", kv[i], b64(kv[i+1]))
		}
		return b.String() + "]\n"
	}
	level := func(l, text string) string {
		return "##octopus[stdout-" + l + "]\n" + text + "\n##octopus[stdout-default]\n"
	}
	const tricky = "it's \"x\"\nline 2 $(touch pwned) `touch pwned` ✓"
	tests := []struct {
		name string
		sh   string // for bash and sh
		py   string
		want func(work string) string
		// wantPy, when set, is Python's: Octopus's two bootstraps differ.
		wantPy func(work string) string
	}{
		{name: "set_octopusvariable",
			sh: `set_octopusvariable "TestResult" "Passed"`, py: `set_octopusvariable("TestResult", "Passed")`,
			want: func(string) string { return msg("setVariable", "name", "TestResult", "value", "Passed") }},
		{name: "set_octopusvariable sensitive",
			sh: `set_octopusvariable "Password" "correct horse battery staple" -sensitive`,
			py: `set_octopusvariable("Password", "correct horse battery staple", True)`,
			want: func(string) string {
				return msg("setVariable", "name", "Password", "value", "correct horse battery staple", "sensitive", "True")
			}},
		{name: "set_octopusvariable other third argument is not sensitive",
			sh: `set_octopusvariable "A" "b" sensitive`, py: `set_octopusvariable("A", "b", False)`,
			want: func(string) string { return msg("setVariable", "name", "A", "value", "b") }},
		{name: "set_octopusvariable tricky value",
			sh: `set_octopusvariable "TrickyOut" "$TRICKY"`, py: `set_octopusvariable("TrickyOut", os.environ["TRICKY"])`,
			want: func(string) string { return msg("setVariable", "name", "TrickyOut", "value", tricky) }},
		{name: "set_octopusvariable empty value",
			sh: `set_octopusvariable "Empty" ""`, py: `set_octopusvariable("Empty", "")`,
			want:   func(string) string { return msg("setVariable", "name", "Empty") },
			wantPy: func(string) string { return msg("setVariable", "name", "Empty", "value", "") }},
		{name: "update_progress",
			sh: `update_progress 50 "Half way"`, py: `updateprogress(50, "Half way")`,
			want: func(string) string { return msg("progress", "percentage", "50", "message", "Half way") }},
		{name: "update_progress without a message",
			sh: `update_progress 100`, py: `updateprogress(100)`,
			want: func(string) string { return msg("progress", "percentage", "100", "message", "") }},
		{name: "write_verbose", sh: `write_verbose "a  b *"`, py: `printverbose("a  b *")`,
			want: func(string) string { return level("verbose", "a  b *") }},
		{name: "write_highlight", sh: `write_highlight "-n $TRICKY"`, py: `printhighlight("-n " + os.environ["TRICKY"])`,
			want: func(string) string { return level("highlight", "-n "+tricky) }},
		{name: "write_wait", sh: `write_wait "waiting"`, py: `printwait("waiting")`,
			want: func(string) string { return level("wait", "waiting") }},
		{name: "write_warning", sh: `write_warning "careful"`, py: `printwarning("careful")`,
			want: func(string) string { return level("warning", "careful") }},
		{name: "fail_step",
			sh: `( fail_step "it broke" ); echo "exit=$?"`, py: `exit_of(lambda: failstep("it broke"))`,
			want:   func(string) string { return msg("resultMessage", "message", "it broke") + "exit=1\n" },
			wantPy: func(string) string { return msg("resultMessage", "message", "it broke") + "exit=-1\n" }},
		{name: "fail_step without a message",
			sh: `( fail_step ); echo "exit=$?"`, py: `exit_of(lambda: failstep())`,
			want:   func(string) string { return "exit=1\n" },
			wantPy: func(string) string { return "exit=-1\n" }},
		{name: "new_octopusartifact",
			sh: `new_octopusartifact out/report.txt`, py: `createartifact("out/report.txt")`,
			want: func(work string) string {
				return "Collecting out/report.txt as an artifact...\n" +
					level("verbose", "Artifact report.txt will be collected from out/report.txt after this step completes") +
					msg("createArtifact", "path", work+"/out/report.txt", "name", "report.txt", "length", "7")
			},
			wantPy: func(work string) string {
				return level("verbose", "Artifact report.txt will be collected from "+work+"/out/report.txt after this step completes") +
					msg("createArtifact", "path", work+"/out/report.txt", "name", "report.txt", "length", "7")
			}},
		{name: "new_octopusartifact with a name",
			sh: `cd out && new_octopusartifact report.txt "The report"; cd ..`, py: `createartifact("out/report.txt", "The report")`,
			want: func(work string) string {
				return "Collecting report.txt as an artifact...\n" +
					level("verbose", "Artifact The report will be collected from report.txt after this step completes") +
					msg("createArtifact", "path", work+"/out/report.txt", "name", "The report", "length", "7")
			},
			wantPy: func(work string) string {
				return level("verbose", "Artifact The report will be collected from "+work+"/out/report.txt after this step completes") +
					msg("createArtifact", "path", work+"/out/report.txt", "name", "The report", "length", "7")
			}},
		{name: "new_octopusartifact of a missing file",
			sh: `( new_octopusartifact nothing.txt 2>/dev/null ); echo "exit=$?"`, py: `createartifact("nothing.txt")`,
			want: func(string) string { return "Collecting nothing.txt as an artifact...\nexit=1\n" },
			wantPy: func(work string) string {
				return level("verbose", "Artifact nothing.txt will be collected from "+work+"/nothing.txt after this step completes") +
					msg("createArtifact", "path", work+"/nothing.txt", "name", "nothing.txt", "length", "0")
			}},
		{name: "get_octopusvariable",
			sh: `get_octopusvariable "Octopus.Action.Name"`, py: `sys.stdout.write(get_octopusvariable("Octopus.Action.Name"))`,
			want: func(string) string { return "Deploy web" }},
		{name: "get_octopusvariable keeps trailing newlines",
			sh: `get_octopusvariable "Tricky"`, py: `sys.stdout.write(get_octopusvariable("Tricky"))`,
			want: func(string) string { return tricky + "\n\n" }},
		{name: "get_octopusvariable sensitive",
			sh: `get_octopusvariable "Secret" | tr a-z A-Z`, py: `sys.stdout.write(get_octopusvariable("Secret").upper())`,
			want: func(string) string { return "S3CRET" }},
		{name: "get_octopusvariable unknown",
			sh: `get_octopusvariable "No.Such"; echo "exit=$?"`, py: `key_error(lambda: get_octopusvariable("No.Such"))`,
			want:   func(string) string { return "\nexit=0\n" },
			wantPy: func(string) string { return "KeyError\n" }},
	}
	vars := []stepspec.Variable{{Name: "Octopus.Action.Name", Value: "Deploy web"}, {Name: "TRICKY", Value: tricky}, {Name: "Tricky", Value: tricky + "\n\n"}}
	secrets := []stepspec.Variable{{Name: "Secret", Value: "s3cret"}}

	shScript := "mkdir out && echo report > out/report.txt\n"
	pyScript := `import contextlib, os, sys
os.mkdir("out")
with open("out/report.txt", "w") as f:
    f.write("report\n")
def exit_of(f):
    try:
        f()
    except SystemExit as e:
        print("exit=%s" % e.code)
def key_error(f):
    try:
        f()
    except KeyError:
        print("KeyError")
`
	for i, tt := range tests {
		shScript += fmt.Sprintf("{ %s\n} > \"$STEVEDORE_WORK_DIR/raw.%d\"\n", tt.sh, i)
		pyScript += fmt.Sprintf("with open(os.path.join(os.environ[\"STEVEDORE_WORK_DIR\"], \"raw.%d\"), \"w\", encoding=\"utf-8\", newline=\"\") as f, contextlib.redirect_stdout(f):\n    %s\n", i, tt.py)
	}
	for _, syntax := range []string{stepspec.SyntaxBash, stepspec.SyntaxSh, stepspec.SyntaxPython} {
		t.Run(syntax, func(t *testing.T) {
			t.Parallel()
			script := shScript
			if syntax == stepspec.SyntaxPython {
				script = pyScript
			}
			d := runStepT(t, step{syntax: syntax, script: script, vars: vars, secrets: secrets})
			if d.exit != 0 {
				t.Fatalf("exit %d; records %s", d.exit, dump(d.records))
			}
			work := filepath.Join(d.dir, stepspec.WorkDir)
			for i, tt := range tests {
				want := tt.want(work)
				if tt.wantPy != nil && syntax == stepspec.SyntaxPython {
					want = tt.wantPy(work)
				}
				got, err := os.ReadFile(filepath.Join(work, fmt.Sprintf("raw.%d", i)))
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != want {
					t.Errorf("%s:\n got %q\nwant %q", tt.name, got, want)
				}
			}
			noPwned(t, d)
		})
	}
}

// TestOctopusShHelpers: sh gets the helpers that make sense in POSIX sh
// (no array), and they work under set -eu.
func TestOctopusShHelpers(t *testing.T) {
	t.Parallel()
	d := runStepT(t, step{syntax: stepspec.SyntaxSh,
		vars:    []stepspec.Variable{{Name: "Octopus.Action.Name", Value: "Deploy web"}},
		secrets: []stepspec.Variable{{Name: "Secret", Value: "s3cret"}},
		script: `set -eu
echo "action: $(get_octopusvariable Octopus.Action.Name)"
echo "secret: $(get_octopusvariable Secret)"
echo "missing: [$(get_octopusvariable Missing)]"
set_octopusvariable Out "o v"
update_progress 10
write_highlight "look"
echo "array: ${octopus_parameters-none}"
fail_step "sh broke"
`})
	if d.exit != 1 || d.result.Message != "sh broke" {
		t.Fatalf("exit %d result %+v; records %s", d.exit, d.result, dump(d.records))
	}
	wantLines(t, octopusText(d.lines(steplog.KindStdout)), "action: Deploy web", "secret: "+maskText, "missing: []", "look", "array: none")
	want := []steplog.Event{{Type: "setVariable", Name: "Out", Value: "o v"}, {Type: "progress", Percentage: 10}, {Type: "resultMessage", Message: "sh broke"}}
	if evs := d.events(t); !slices.Equal(evs, want) {
		t.Fatalf("events %+v, want %+v", evs, want)
	}
}

// TestOctopusStrictModeBash: scripts that set -euo pipefail (as Octopus's
// own fixtures do) keep running through every helper that succeeds.
func TestOctopusStrictModeBash(t *testing.T) {
	t.Parallel()
	d := runStepT(t, step{vars: []stepspec.Variable{{Name: "Empty", Value: ""}}, script: `set -euo pipefail
shopt -s inherit_errexit
set_octopusvariable "Password" "correct horse battery staple"
set_octopusvariable "Empty" ""
v=$(get_octopusvariable "Empty")
v=$(get_octopusvariable "Missing")
echo x > a.txt
new_octopusartifact a.txt
update_progress 1
update_progress 2 "two"
write_verbose ""
write_highlight "h"
write_wait "w"
write_warning "w"
set_variable Out v
set_progress 3
get_variable Empty
echo "end of strict script"
`})
	if d.exit != 0 {
		t.Fatalf("exit %d; records %s", d.exit, dump(d.records))
	}
	if got := octopusText(d.lines(steplog.KindStdout)); len(got) == 0 || got[len(got)-1] != "end of strict script" {
		t.Fatalf("stdout %q", got)
	}
	if n := len(d.events(t)); n != 7 {
		t.Fatalf("%d events: %+v", n, d.events(t))
	}
}

// TestBashParametersRoundTrip declares octopus_parameters with names and
// values bash could misread, in a real bash, and reads them back.
func TestBashParametersRoundTrip(t *testing.T) {
	vars := append(slices.Clone(trickyValues),
		stepspec.Variable{Name: "@", Value: "at"},
		stepspec.Variable{Name: "*", Value: "star"},
		stepspec.Variable{Name: "a'b", Value: "'''"},
		stepspec.Variable{Name: "new\nline", Value: "\\n"},
		stepspec.Variable{Name: "Dup", Value: "first"},
	)
	secrets := []stepspec.Variable{{Name: "Dup", Value: "second wins"}, {Name: "", Value: "no name"}, {Name: "Nul", Value: "a\x00b"}}
	decl, skipped := bashParameters(vars, secrets)
	if !slices.Equal(skipped, []string{"", "Nul"}) {
		t.Fatalf("skipped %q", skipped)
	}
	dir := t.TempDir()
	declFile := filepath.Join(dir, "decl")
	if err := os.WriteFile(declFile, decl, 0o600); err != nil {
		t.Fatal(err)
	}
	// Every key and value, NUL-terminated, in any order.
	cmd := exec.Command("bash", "--noprofile", "--norc", "-c", `set -eu; . "$1"; for k in "${!octopus_parameters[@]}"; do printf '%s\0%s\0' "$k" "${octopus_parameters[$k]}"; done`, "bash", declFile)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bash: %v", err)
	}
	got := map[string]string{}
	fields := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	for i := 0; i+1 < len(fields); i += 2 {
		got[fields[i]] = fields[i+1]
	}
	want := map[string]string{}
	for _, v := range vars {
		want[v.Name] = v.Value
	}
	want["Dup"] = "second wins"
	if len(got) != len(want) {
		t.Errorf("%d keys, want %d: %q", len(got), len(want), got)
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("[%q] = %q (%v), want %q", k, g, ok, v)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "pwned")); err == nil {
		t.Error("sourcing the declaration executed a value")
	}
}

// manyVariables are n step variables with awkward values.
func manyVariables(n int) []stepspec.Variable {
	vars := make([]stepspec.Variable, 0, n)
	for i := range n {
		vars = append(vars, stepspec.Variable{Name: fmt.Sprintf("Project.Var[%d].Value", i), Value: strings.Repeat("v", i%100) + "'$x"})
	}
	return vars
}

// TestOctopusParametersManyVariables: thousands of variables, and a
// secret, reach octopus_parameters (one memfd, sourced once); the secret
// is masked and on no disk. BenchmarkOctopusParameters measures the cost.
func TestOctopusParametersManyVariables(t *testing.T) {
	t.Parallel()
	const n = 10000
	secrets := []stepspec.Variable{{Name: "Project.Secret", Value: "s3cr3t-many"}}
	d := runStepT(t, step{vars: manyVariables(n), secrets: secrets, script: `echo "${#octopus_parameters[@]} ${octopus_parameters['Project.Var[9999].Value']:98} $(get_octopusvariable 'Project.Var[5].Value')"
echo "${octopus_parameters['Project.Secret']}"
`})
	if d.exit != 0 {
		t.Fatalf("exit %d; records %s", d.exit, dump(d.records))
	}
	wantLines(t, d.lines(steplog.KindStdout), fmt.Sprintf("%d v'$x vvvvv'$x", n+1), maskText)
	noSecret(t, d, "s3cr3t-many")
	if bytes.Contains(d.raw, []byte("s3cr3t-many")) {
		t.Error("output.log holds the secret")
	}
}

// BenchmarkOctopusParameters: a bash step with 10,000 variables through
// the runner (octopus_parameters declared and sourced) against bash alone
// started with the same variables in its environment, which bash reads
// slowly by itself, and the runner's sh step (dash, no array). The ratio of
// the first two is what the runner and the array cost.
//
//	go test -run '^$' -bench OctopusParameters -benchtime 10x ./cmd/stevedore-step/
func BenchmarkOctopusParameters(b *testing.B) {
	vars := manyVariables(10000)
	env, _ := variableEnv(vars)
	b.Run("bash-alone", func(b *testing.B) {
		for b.Loop() {
			cmd := exec.Command("bash", "-c", "true")
			cmd.Env = append(os.Environ(), env...)
			if err := cmd.Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, bm := range []struct{ name, syntax string }{{"runner-sh", "sh"}, {"runner-bash-octopus_parameters", "bash"}} {
		b.Run(bm.name, func(b *testing.B) {
			for b.Loop() {
				if d := runStepT(b, step{syntax: bm.syntax, vars: vars, script: "true\n"}); d.exit != 0 {
					b.Fatalf("exit %d", d.exit)
				}
			}
		})
	}
}
