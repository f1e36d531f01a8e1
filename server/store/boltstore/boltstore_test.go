package boltstore_test

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"stevedore/server/store"
	"stevedore/server/store/boltstore"
)

// The server's fixture of a data dir from before the store interface
// (server/testdata/compat-v1/README).
var compatDir = filepath.Join("..", "..", "testdata", "compat-v1")

func copyCompat(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(compatDir, "server.db"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "server.db")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Every bucket the server wrote before the store interface reads back,
// including those the server's own compatibility test cannot see.
func TestOpensOlderFile(t *testing.T) {
	var facts struct {
		APIKey   string            `json:"api_key"`
		APIKeyID string            `json:"api_key_id"`
		Steps    map[string]string `json:"steps"`
		LeftAt   time.Time         `json:"left_at"`
	}
	b, err := os.ReadFile(filepath.Join(compatDir, "facts.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &facts); err != nil {
		t.Fatal(err)
	}
	s, err := boltstore.Open(copyCompat(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	if got, err := s.AbandonedOn("poller"); err != nil || !slices.Equal(got, []string{facts.Steps["lost"]}) {
		t.Errorf("abandoned %v, %v; want the lost step", got, err)
	}
	if at, err := s.WorkerLeft("poller"); err != nil || !at.Equal(facts.LeftAt) {
		t.Errorf("left at %v, %v; want %v", at, err, facts.LeftAt)
	}
	if c, err := s.User("admin"); err != nil || len(c.Salt) != 16 || len(c.Hash) != 32 || c.Iterations == 0 {
		t.Errorf("admin credential %+v, %v", c, err)
	}
	k, err := s.APIKeyByHash(sha256.Sum256([]byte(facts.APIKey)))
	if err != nil || k.ID != facts.APIKeyID || k.Name != "ci" || k.Role != "submitter" || k.CreatedAt.IsZero() {
		t.Errorf("api key %+v, %v", k, err)
	}
	if asked, err := s.CancelRequested(facts.Steps["running"]); !asked || err != nil {
		t.Errorf("cancel flag %v, %v", asked, err)
	}
	if n, err := s.CountQueued(); n != 2 || err != nil {
		t.Errorf("%d queued, %v; want 2", n, err)
	}
	if again, created, err := s.CreateStep(store.StepRecord{ID: "s-new", State: store.StateQueued}, "sub-key-4"); err != nil || created || again.ID != facts.Steps["complete"] {
		t.Errorf("submission key: %s, created %v, %v", again.ID, created, err)
	}
	tps, err := s.ListTrusted()
	if err != nil || len(tps) != 1 {
		t.Errorf("trusted %v, %v", tps, err)
	}
}

// A file of a newer schema is refused, and left as it was.
func TestRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "server.db")
	s, err := boltstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte("99")) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if s, err := boltstore.Open(path); !errors.Is(err, store.ErrSchemaTooNew) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("Open of schema 99: %v, want ErrSchemaTooNew", err)
	}
	db, err = bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket([]byte("meta")).Get([]byte("schema")); string(v) != "99" {
			t.Errorf("schema rewritten to %q", v)
		}
		return nil
	})
}

// A backup is a bbolt file that opens as a store with the same steps.
func TestBackupOpens(t *testing.T) {
	s, err := boltstore.Open(copyCompat(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	path := filepath.Join(t.TempDir(), "backup.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Backup(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b, err := boltstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	want, _ := s.ListSteps("")
	got, err := b.ListSteps("")
	if err != nil || len(got) != len(want) || len(got) != 5 {
		t.Errorf("backup has %d steps, %v; want %d", len(got), err, len(want))
	}
}
