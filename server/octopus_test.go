package server_test

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
)

// Scripts written against Octopus's helpers (internal/testenv/octopus) run
// unchanged through the server, in a container: the task log's API has
// every line with its level, the text view marks them, and the step's
// reason, exit code, output variables and artifact are what an Octopus
// user expects.
func TestOctopusScriptsThroughTheServer(t *testing.T) {
	cli, _ := testenv.Docker(t)
	testenv.Image(t, cli, testenv.Bookworm)
	e := newEnv(t)
	e.pollingAgent("w1", 2)
	a := e.api()
	for _, sc := range testenv.OctopusScripts() {
		t.Run(sc.Name, func(t *testing.T) {
			v := a.submit(map[string]any{"pool": "linux"}, &pb.StartStepRequest{
				Execution: &pb.Execution{Target: &pb.Execution_Container{Container: &pb.ContainerExecution{Image: testenv.Bookworm,
					PullPolicy:  pb.PullPolicy_PULL_POLICY_IF_NOT_PRESENT,
					Credentials: &pb.RegistryCredentials{Username: testenv.RegistryUser, Password: testenv.RegistryPassword}}}},
				Script:    &pb.Script{Syntax: sc.Syntax, Body: sc.Body},
				Variables: testenv.OctopusVariables()})
			lines, final := a.follow(v.ID)
			if final.Outcome != "FAILED" || final.ExitCode == nil || int(*final.ExitCode) != sc.WantExit || final.Reason != testenv.OctopusReason {
				t.Fatalf("outcome %s exit %v reason %q, want FAILED %d %q", final.Outcome, final.ExitCode, final.Reason, sc.WantExit, testenv.OctopusReason)
			}
			// The workspace is the agent's, named by the step's ticket, its ID.
			want := sc.Stdout(filepath.Join(e.dir, "agent-w1", "steps", v.ID, "work"))
			var got []testenv.LevelLine
			for _, l := range lines {
				if l.Source == "stdout" {
					got = append(got, testenv.LevelLine{Text: string(l.Content()), Level: l.LogLevel()})
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("stdout\n%v\nwant\n%v", got, want)
			}
			if final.OutputVariables["TestResult"] != "Passed" {
				t.Errorf("output variables %v", final.OutputVariables)
			}
			// A sensitive output is masked in the step's view; its submitter
			// reads it from /outputs.
			if final.OutputVariables["Password"] != server.SensitiveMask || !slices.Equal(final.SensitiveOutputs, []string{"Password"}) {
				t.Errorf("output variables %v, sensitive %v", final.OutputVariables, final.SensitiveOutputs)
			}
			code, body := a.do("GET", "/api/steps/"+v.ID+"/outputs", nil)
			var outs struct {
				OutputVariables map[string]string `json:"output_variables"`
			}
			if code != http.StatusOK || json.Unmarshal(body, &outs) != nil || outs.OutputVariables["Password"] != "correct horse battery staple" {
				t.Errorf("outputs: %d %s", code, body)
			}
			if len(final.Artifacts) != 1 || final.Artifacts[0].Name != testenv.OctopusArtifact {
				t.Fatalf("artifacts %+v", final.Artifacts)
			}
			if code, body := a.do("GET", "/api/steps/"+v.ID+"/artifacts/"+testenv.OctopusArtifact, nil); code != http.StatusOK || string(body) != "report\n" {
				t.Errorf("artifact: %d %q", code, body)
			}

			code, body = a.do("GET", "/api/steps/"+v.ID+"/log?format=text", nil)
			text := string(body)
			for _, w := range []string{
				"[verbose] Connecting to the load balancer\n[wait] Waiting for the load balancer to drain\n[warning] Disk is 91% full\n[highlight] Deployed\n",
				"\nPassword is: ********\n",
				"[stevedore] progress 50%: Half way\n",
			} {
				if code != http.StatusOK || !strings.Contains(text, w) {
					t.Errorf("text log %d:\n%s\nwant it to hold %q", code, text, w)
				}
			}
			for _, never := range []string{testenv.OctopusSecret, "correct horse battery staple", "##octopus[", "unreachable"} {
				if strings.Contains(text, never) {
					t.Errorf("text log holds %q:\n%s", never, text)
				}
			}
		})
	}
}
