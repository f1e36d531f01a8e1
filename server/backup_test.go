package server_test

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"stevedore/internal/seal"
	"stevedore/internal/testenv"
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
	restored := t.TempDir()
	var openRestored *server.TestBackend
	code, db := a.do("GET", "/api/backup", nil)
	if e.backend.URL != "" {
		// PostgreSQL's backup is pg_dump's, as the README says: the API
		// declines, and pg_dump's copy restores the server.
		if code != http.StatusNotImplemented || !strings.Contains(string(db), "database's own tools") {
			t.Fatalf("GET /api/backup on PostgreSQL: %d %s, want 501", code, db)
		}
		openRestored = server.NewTestBackend(t)
		pgCopy(t, e.backend.URL, openRestored.URL)
	} else {
		if code != http.StatusOK || len(db) == 0 {
			t.Fatalf("GET /api/backup: %d, %d bytes", code, len(db))
		}
		if err := os.WriteFile(filepath.Join(restored, "server.db"), db, 0o600); err != nil {
			t.Fatal(err)
		}
		openRestored = &server.TestBackend{Name: testenv.BackendBolt}
	}
	mk, err := os.ReadFile(filepath.Join(e.dir, "server", seal.MasterKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(restored, seal.MasterKeyFile), mk, 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{DataDir: restored, Identity: e.id, Trust: e.trust, Logger: e.log, OpenStore: openRestored.OpenStore()})
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

// pgCopy copies the database at from into the empty one at to with
// pg_dump and pg_restore, as an operator backs up and restores.
func pgCopy(t *testing.T, from, to string) {
	t.Helper()
	dump := filepath.Join(t.TempDir(), "server.dump")
	for _, args := range [][]string{
		{"pg_dump", "--format=custom", "--no-owner", "--file", dump, "--dbname", from},
		{"pg_restore", "--no-owner", "--exit-on-error", "--dbname", to, dump},
	} {
		if _, err := exec.LookPath(args[0]); err != nil {
			testenv.Unavailable(t, "%s: %v", args[0], err)
			return
		}
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", args[0], err, out)
		}
	}
}
