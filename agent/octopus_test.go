package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	pb "stevedore/proto/stevedore/v1"
)

// Scripts written against Octopus's helpers, as its documentation shows
// them, run unchanged in a container of the bookworm fixture and on the
// host.
var octopusScripts = []struct {
	name     string
	syntax   pb.Syntax
	body     string
	wantExit int
	wantOut  []string
}{
	{"bash", pb.Syntax_SYNTAX_BASH, `set -euo pipefail
connectionString=$(get_octopusvariable "MyApp.ConnectionString")
echo "Connection string is: $connectionString"
echo "Password is: $(get_octopusvariable "MyApp.Password")"
echo "Action: ${octopus_parameters['Octopus.Action.Name']}"
echo "Missing: [$(get_octopusvariable "No.Such.Variable")]"
set_octopusvariable "TestResult" "Passed"
set_octopusvariable "Password" "correct horse battery staple" -sensitive
echo "the new password is correct horse battery staple"
echo report > report.txt
new_octopusartifact report.txt "Report.txt"
update_progress 50 "Half way"
write_highlight "Deployed"
fail_step "Deployment failed: smoke test"
echo unreachable
`, 1, []string{
		"Connection string is: Server=db;User='app'",
		"Password is: ********",
		"Action: Deploy web",
		"Missing: []",
		"the new password is ********",
		"Collecting report.txt as an artifact...",
		"Artifact Report.txt will be collected from report.txt after this step completes",
		"Deployed",
	}},
	{"python", pb.Syntax_SYNTAX_PYTHON, `connectionString = get_octopusvariable("MyApp.ConnectionString")
print("Connection string is: " + connectionString)
print("Password is: " + get_octopusvariable("MyApp.Password"))
print("Action: " + octopus_parameters["Octopus.Action.Name"])
print("Missing: [%s]" % octopus_parameters.get("No.Such.Variable", ""))
set_octopusvariable("TestResult", "Passed")
set_octopusvariable("Password", "correct horse battery staple", True)
print("the new password is correct horse battery staple")
with open("report.txt", "w") as f:
    f.write("report\n")
createartifact("report.txt", "Report.txt")
updateprogress(50, "Half way")
printhighlight("Deployed")
failstep("Deployment failed: smoke test")
print("unreachable")
`, 255, []string{
		"Connection string is: Server=db;User='app'",
		"Password is: ********",
		"Action: Deploy web",
		"Missing: []",
		"the new password is ********",
		"Artifact Report.txt will be collected from WORK/report.txt after this step completes",
		"Deployed",
	}},
}

func TestOctopusScripts(t *testing.T) {
	ta := startAgent(t)
	for _, container := range []bool{true, false} {
		for _, tt := range octopusScripts {
			t.Run(fmt.Sprintf("%s container=%v", tt.name, container), func(t *testing.T) {
				testOctopusScript(t, ta, hostOrContainer(t, container), tt.syntax, tt.body, tt.wantExit, tt.wantOut)
			})
		}
	}
}

func testOctopusScript(t *testing.T, ta *testAgent, exec *pb.Execution, syntax pb.Syntax, body string, wantExit int, wantOut []string) {
	tk := ticket(t)
	run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Execution: exec,
		Script: &pb.Script{Syntax: syntax, Body: body},
		Variables: []*pb.Variable{
			{Name: "Octopus.Action.Name", Value: "Deploy web"},
			{Name: "MyApp.ConnectionString", Value: "Server=db;User='app'"},
			{Name: "MyApp.Password", Value: "pa55-w0rd-octopus", Sensitive: true},
		}})
	st := run.final
	if exitCode(st) != wantExit || st.GetOutcome() != pb.Outcome_OUTCOME_FAILED || st.GetReason() != "Deployment failed: smoke test" {
		t.Fatalf("exit %d outcome %v reason %q; stderr %q agent %q", exitCode(st), st.GetOutcome(), st.GetReason(), run.stderr, run.agent)
	}
	// The level switches are Octopus's; this test is about the text.
	stdout := slices.DeleteFunc(slices.Clone(run.stdout), func(l string) bool { return strings.HasPrefix(l, "##octopus[stdout-") })
	// Python's helper names the artifact's absolute path, in the
	// workspace, mounted at the same path as on the host.
	work := filepath.Join(ta.stateDir, "steps", tk, "work")
	want := slices.Clone(wantOut)
	for i := range want {
		want[i] = strings.ReplaceAll(want[i], "WORK", work)
	}
	if fmt.Sprint(stdout) != fmt.Sprint(want) {
		t.Errorf("stdout %q, want %q", stdout, want)
	}
	if len(run.stderr) != 0 {
		t.Errorf("stderr %q", run.stderr)
	}
	vars := map[string]*pb.OutputVariable{}
	for _, v := range st.GetOutputVariables() {
		vars[v.GetName()] = v
	}
	if v := vars["TestResult"]; len(vars) != 2 || v.GetValue() != "Passed" || v.GetSensitive() {
		t.Errorf("output variables %v", vars)
	}
	if v := vars["Password"]; v.GetValue() != "correct horse battery staple" || !v.GetSensitive() {
		t.Errorf("sensitive output variable %v", v)
	}
	if !slices.Contains(run.agent, "progress 50%: Half way") {
		t.Errorf("no progress line in %q", run.agent)
	}
	arts := st.GetArtifacts()
	if len(arts) != 1 || arts[0].GetName() != "Report.txt" {
		t.Fatalf("artifacts %v", arts)
	}
	stream, err := ta.client.DownloadFile(context.Background(), &pb.DownloadFileRequest{Ticket: tk, Path: arts[0].GetPath()})
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, msg.GetData()...)
	}
	if string(got) != "report\n" {
		t.Errorf("artifact content %q", got)
	}
	// The sensitive input is nowhere in the state dir in plaintext.
	err = filepath.WalkDir(ta.stateDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte("pa55-w0rd-octopus")) {
			t.Errorf("%s holds the sensitive value in plaintext", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ta.complete(t, tk)
}
