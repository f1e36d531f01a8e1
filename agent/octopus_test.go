package agent_test

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
)

// Scripts written against Octopus's helpers, as its documentation shows
// them (internal/testenv/octopus), run unchanged in a container of the
// bookworm fixture and on the host: variables, masked secrets, artifacts,
// progress, the failure's reason and the levels of the lines.
func TestOctopusScripts(t *testing.T) {
	ta := startAgent(t)
	for _, container := range []bool{true, false} {
		for _, sc := range testenv.OctopusScripts() {
			t.Run(fmt.Sprintf("%s container=%v", sc.Name, container), func(t *testing.T) {
				testOctopusScript(t, ta, hostOrContainer(t, container), sc)
			})
		}
	}
}

func testOctopusScript(t *testing.T, ta *testAgent, exec *pb.Execution, sc testenv.OctopusScript) {
	tk := ticket(t)
	run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Execution: exec,
		Script: &pb.Script{Syntax: sc.Syntax, Body: sc.Body}, Variables: testenv.OctopusVariables()})
	st := run.final
	if exitCode(st) != sc.WantExit || st.GetOutcome() != pb.Outcome_OUTCOME_FAILED || st.GetReason() != testenv.OctopusReason {
		t.Fatalf("exit %d outcome %v reason %q; stderr %q agent %q", exitCode(st), st.GetOutcome(), st.GetReason(), run.stderr, run.agent)
	}
	// Python's helper names the artifact's absolute path, in the
	// workspace, mounted at the same path as on the host.
	want := sc.Stdout(filepath.Join(ta.stateDir, "steps", tk, "work"))
	var got []testenv.LevelLine
	for _, l := range run.lines {
		if l.GetSource() == pb.LogSource_LOG_SOURCE_STDOUT {
			got = append(got, testenv.LevelLine{Text: string(l.GetText()), Level: l.GetLevel()})
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("stdout\n%v\nwant\n%v", got, want)
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
	if len(arts) != 1 || arts[0].GetName() != testenv.OctopusArtifact {
		t.Fatalf("artifacts %v", arts)
	}
	content := download(t, ta, tk, arts[0].GetPath())
	if string(content) != "report\n" {
		t.Errorf("artifact content %q", content)
	}
	// The sensitive input is nowhere in the state dir in plaintext.
	noPlaintext(t, ta.stateDir, testenv.OctopusSecret)
	ta.complete(t, tk)
}
