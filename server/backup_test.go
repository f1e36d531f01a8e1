package server_test

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"stevedore/internal/seal"
	"stevedore/server"
)

// GET /api/backup copies the live database; a server started on the copy
// (with the same master key) has the steps, queue and keys it had.
func TestBackupRestoresTheServer(t *testing.T) {
	e := newEnv(t)
	e.pollingAgent("w1", 1)
	a := e.api()
	done := a.submit(map[string]any{"pool": "linux"}, numbered(3, "0"))
	e.waitComplete(done.ID)
	queued := a.submit(map[string]any{"pool": "nowhere"}, numbered(1, "0"))
	key, err := e.srv.CreateAPIKey("ci", server.RoleSubmitter, 0)
	if err != nil {
		t.Fatal(err)
	}
	code, db := a.do("GET", "/api/backup", nil)
	if code != http.StatusOK || len(db) == 0 {
		t.Fatalf("GET /api/backup: %d, %d bytes", code, len(db))
	}
	restored := t.TempDir()
	if err := os.WriteFile(filepath.Join(restored, "server.db"), db, 0o600); err != nil {
		t.Fatal(err)
	}
	mk, err := os.ReadFile(filepath.Join(e.dir, "server", seal.MasterKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(restored, seal.MasterKeyFile), mk, 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{DataDir: restored, Identity: e.id, Trust: e.trust, Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if got, ok := srv.Step(done.ID); !ok || got.Outcome != "FAILED" {
		t.Errorf("the completed step after a restore: %+v %v", got, ok)
	}
	if got, ok := srv.Step(queued.ID); !ok || got.State != server.StateQueued {
		t.Errorf("the queued step after a restore: %+v %v", got, ok)
	}
	if k, err := srv.AuthenticateKey(key.Key); err != nil || k.Name != "ci" {
		t.Errorf("the API key after a restore: %+v %v", k, err)
	}
	// Only the admin may take one: it holds every step and credential hash.
	a.token = key.Key
	if code, _ := a.do("GET", "/api/backup", nil); code != http.StatusForbidden {
		t.Errorf("a submitter's backup: %d, want 403", code)
	}
}
