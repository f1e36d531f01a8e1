package server

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

// compatDir holds a server.db written by the server before its state went
// behind the store interface (testdata/compat-v1/README), so that data dirs
// of that time are proved to keep working. TestWriteCompatFixture wrote it
// with the code of commit fd748a2 and is gone since: later code writing it
// again would prove nothing.
const compatDir = "testdata/compat-v1"

// The fixture's master key (base64 of "stevedore-fixtur") and admin password.
const (
	compatMasterKey = "c3RldmVkb3JlLWZpeHR1cg=="
	compatPassword  = "fixture-password"
	compatTrusted   = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	compatListener  = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// compatFacts is what the fixture's writer made, for its readers to check.
type compatFacts struct {
	APIKey   string            `json:"api_key"`
	APIKeyID string            `json:"api_key_id"`
	Steps    map[string]string `json:"steps"` // role → ID
	LeftAt   time.Time         `json:"left_at"`
}

func compatStep(body string) *pb.StartStepRequest {
	return &pb.StartStepRequest{Execution: &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}},
		Script:    &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: body},
		Variables: []*pb.Variable{{Name: "TOKEN", Value: "fixture-secret", Sensitive: true}}}
}

// compatIdentity is the server's identity: the listening worker is dialed.
func compatIdentity(t *testing.T) *transport.Identity {
	id, _, err := transport.LoadOrCreateIdentity(filepath.Join(t.TempDir(), "id"))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// openCompat starts a server on a copy of the fixture's data dir.
func openCompat(t *testing.T) (*Server, compatFacts) {
	t.Helper()
	var facts compatFacts
	fb, err := os.ReadFile(filepath.Join(compatDir, "facts.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(fb, &facts); err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(filepath.Join(compatDir, dbFile))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, dbFile), db, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{DataDir: dir, Identity: compatIdentity(t), MasterKey: compatMasterKey, Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, facts
}

// A data dir written before the store interface keeps working: every kind
// of record reads back as it was written. bbolt only, on either test
// backend: the fixture is a bbolt file, and no PostgreSQL database of that
// time exists (the schema's own versions are pgdb's tests').
func TestCompatDataDir(t *testing.T) {
	s, facts := openCompat(t)
	ids := facts.Steps

	var got []string
	for _, rec := range s.Steps() {
		got = append(got, rec.ID)
	}
	want := []string{ids["queued1"], ids["queued2"], ids["running"], ids["complete"], ids["lost"]}
	if !slices.Equal(got, want) {
		t.Fatalf("steps %v, want %v", got, want)
	}
	var queued []string
	for _, rec := range s.queued() {
		queued = append(queued, rec.ID)
	}
	if !slices.Equal(queued, want[:2]) {
		t.Errorf("queue %v, want %v", queued, want[:2])
	}

	q1, ok := s.Step(ids["queued1"])
	if !ok || q1.State != StateQueued || q1.Labels["zone"] != "a" || q1.SubmitterKey != facts.APIKeyID || q1.SubmittedBy != "key:ci" {
		t.Errorf("queued step: %+v", q1)
	}
	plain, err := s.keys.Open(q1.Sealed)
	if err != nil {
		t.Fatalf("the sealed step does not open: %v", err)
	}
	var step pb.StartStepRequest
	if err := proto.Unmarshal(plain, &step); err != nil || step.GetScript().GetBody() != "echo queued1" || step.GetTicket() != q1.ID ||
		step.GetVariables()[0].GetValue() != "fixture-secret" {
		t.Errorf("sealed step: %v, %v", &step, err)
	}
	// The submission key still names its step.
	again, err := s.Submit(SubmitRequest{Pool: "linux", Key: "sub-key-1", Step: compatStep("other")})
	if err != nil || again.ID != q1.ID {
		t.Errorf("a repeated submission key gave %s, %v; want %s", again.ID, err, q1.ID)
	}

	run, _ := s.Step(ids["running"])
	if run.State != StateRunning || run.Assigned != "poller" || run.Cursor != 7 || !run.CancelRequested || !s.cancelRequested(run.ID) {
		t.Errorf("running step: %+v, cancel flag %v", run, s.cancelRequested(run.ID))
	}
	out, err := s.Outputs(ids["complete"])
	if err != nil || out.OutputVariables["SECRET"] != "s3cr3t" || out.OutputVariables["PLAIN"] != "p" {
		t.Errorf("outputs: %+v, %v", out, err)
	}
	done, _ := s.Step(ids["complete"])
	if done.Outcome != "SUCCEEDED" || done.ExitCode == nil || *done.ExitCode != 0 || len(done.Artifacts) != 1 || done.Artifacts[0].Size != 3 ||
		done.OutputVariables["SECRET"] != SensitiveMask {
		t.Errorf("complete step: %+v", done)
	}

	if err := s.Authenticate("admin", compatPassword); err != nil {
		t.Errorf("admin: %v", err)
	}
	k, err := s.AuthenticateKey(facts.APIKey)
	if err != nil || k.ID != facts.APIKeyID || k.Name != "ci" || k.Role != RoleSubmitter {
		t.Errorf("api key: %+v, %v", k, err)
	}
	if keys := s.APIKeys(); len(keys) != 1 || keys[0].ID != facts.APIKeyID {
		t.Errorf("api keys: %+v", keys)
	}
	if !slices.Contains(s.Trusted(), compatTrusted) {
		t.Errorf("trusted %v, want %s among them", s.Trusted(), compatTrusted)
	}
	ws := s.Workers()
	if len(ws) != 2 || ws[0].Name != "listener" || ws[0].Address != "127.0.0.1:1" || ws[0].Thumbprint != compatListener ||
		ws[1].Name != "poller" || ws[1].Labels["zone"] != "a" || !ws[1].DisconnectedSince.Equal(facts.LeftAt) {
		t.Errorf("workers: %+v", ws)
	}
}
