package server_test

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"testing"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
)

// The script makes its sensitive values at run time, so that they are in
// no request, only in the step's output variables.
const (
	secretPassword = "s3cret-7234"
	secretToken    = "tok-40002"
)

func sensitiveOutputsStep() *pb.StartStepRequest {
	return &pb.StartStepRequest{Execution: &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}},
		Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: `set_variable Version 1.2.3
pw="s3cret-$((7000+234))" tok="tok-$((40000+2))"
set_octopusvariable "Password" "$pw" -sensitive
printf "##stevedore[setVariable name='%s' value='%s' sensitive='VHJ1ZQ==']\n" "$(printf ApiToken | base64)" "$(printf %s "$tok" | base64)"
echo "password $pw, token $tok"
`}}
}

// A step's sensitive output variables are kept sealed with the master key:
// no step view shows them (they are masked and named), neither the
// database file nor a backup holds them in the clear, and GET
// .../outputs gives them to the step's submitter and an admin only, also
// after a restart.
func TestSensitiveOutputVariablesAreSealed(t *testing.T) {
	e := newEnv(t)
	e.pollingAgent("w1", 1)
	admin := e.api()
	teamA := admin.as(admin.createKey("team-a", server.RoleSubmitter).Key)
	teamB := admin.as(admin.createKey("team-b", server.RoleSubmitter).Key)
	reader := admin.as(admin.createKey("dashboard", server.RoleReader).Key)
	v := teamA.submit(map[string]any{"pool": "linux"}, sensitiveOutputsStep())
	_, final := admin.follow(v.ID)
	if final.Outcome != "SUCCEEDED" {
		t.Fatalf("the step: %+v", final.StepRecord)
	}
	masked := map[string]string{"Version": "1.2.3", "Password": server.SensitiveMask, "ApiToken": server.SensitiveMask}
	if !maps.Equal(final.OutputVariables, masked) || !slices.Equal(final.SensitiveOutputs, []string{"ApiToken", "Password"}) || final.SealedOutputs != nil {
		t.Errorf("the step view's outputs: %v, sensitive %v, sealed %d bytes; want %v, [ApiToken Password], none",
			final.OutputVariables, final.SensitiveOutputs, len(final.SealedOutputs), masked)
	}
	rec, _ := e.srv.Step(v.ID)
	if len(rec.SealedOutputs) == 0 {
		t.Error("the record keeps no sealed outputs")
	}

	// noSecret fails if b holds a sensitive value; what says what b is,
	// and must be in it, so that an empty answer passes nothing.
	noSecret := func(t *testing.T, what string, b []byte, must string) {
		t.Helper()
		if !bytes.Contains(b, []byte(must)) {
			t.Fatalf("%s lacks %q: is it the step's?", what, must)
		}
		for _, s := range []string{secretPassword, secretToken} {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s holds the sensitive value %q", what, s)
			}
		}
	}
	views := []struct {
		name string
		by   *api
		path string
	}{
		{"the step, to a reader", reader, "/api/steps/" + v.ID},
		{"the step, to its submitter", teamA, "/api/steps/" + v.ID},
		{"the step, to the admin", admin, "/api/steps/" + v.ID},
		{"the steps", reader, "/api/steps"},
		{"the complete steps", admin, "/api/steps?state=complete"},
		{"the log page", reader, "/api/steps/" + v.ID + "/log"},
		{"the text log", reader, "/api/steps/" + v.ID + "/log?format=text"},
	}
	for _, c := range views {
		t.Run(c.name, func(t *testing.T) {
			code, b := c.by.do("GET", c.path, nil)
			if code != http.StatusOK {
				t.Fatalf("GET %s: %d %s", c.path, code, b)
			}
			// The text log has no step view, but the line, masked.
			must := "password ********, token ********"
			if c.path != "/api/steps/"+v.ID+"/log?format=text" {
				must = `"sensitive_outputs"`
			}
			noSecret(t, "GET "+c.path, b, must)
		})
	}
	// PostgreSQL's backups are pg_dump's (501 here): the scan of its rows
	// below covers what they would hold.
	if e.backend.URL == "" {
		code, backup := admin.do("GET", "/api/backup", nil)
		if code != http.StatusOK {
			t.Fatalf("GET /api/backup: %d", code)
		}
		noSecret(t, "the backup", backup, v.ID)
	}

	want := map[string]string{"Version": "1.2.3", "Password": secretPassword, "ApiToken": secretToken}
	outputs := []struct {
		name string
		by   *api
		step string
		code int
	}{
		{"its submitter", teamA, v.ID, http.StatusOK},
		{"the admin", admin, v.ID, http.StatusOK},
		{"another submitter", teamB, v.ID, http.StatusForbidden},
		{"a reader", reader, v.ID, http.StatusForbidden},
		{"an unknown step", admin, "s-no-such-step", http.StatusNotFound},
	}
	readOutputs := func(t *testing.T) {
		for _, c := range outputs {
			t.Run(c.name, func(t *testing.T) {
				code, b := c.by.do("GET", "/api/steps/"+c.step+"/outputs", nil)
				if code != c.code {
					t.Fatalf("%d %s, want %d", code, b, c.code)
				}
				if code == http.StatusForbidden {
					noSecret(t, "the 403", b, "error")
				}
				if code != http.StatusOK {
					return
				}
				var got server.StepOutputs
				if err := json.Unmarshal(b, &got); err != nil {
					t.Fatal(err)
				}
				if got.ID != v.ID || !maps.Equal(got.OutputVariables, want) || !slices.Equal(got.Sensitive, []string{"ApiToken", "Password"}) {
					t.Errorf("outputs %+v, want %v with ApiToken and Password sensitive", got, want)
				}
			})
		}
	}
	t.Run("outputs", readOutputs)

	// The database (the file on disk, or every row), with the server
	// stopped so that all is written.
	e.stop()
	noSecret(t, "the "+e.backend.Name+" store", e.backend.StateBytes(t, filepath.Join(e.dir, "server")), v.ID)
	e.start("127.0.0.1:0")
	t.Run("outputs after a restart", readOutputs)
}
