package server

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/go-hclog"

	"stevedore/server/store"
	"stevedore/server/store/boltstore"
)

// The server keeps its state in the store Config.OpenStore opens, not in
// the data dir's file (a bbolt file elsewhere, on either test backend: it
// is the Config's promise under test, not a backend's).
func TestServerOnGivenStore(t *testing.T) {
	elsewhere := filepath.Join(t.TempDir(), "state.db")
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Identity: compatIdentity(t), AdminPassword: "pw", Logger: hclog.NewNullLogger(),
		OpenStore: func() (store.Store, error) { return boltstore.Open(elsewhere) }}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := s.Submit(SubmitRequest{Pool: "linux", Key: "k", Step: compatStep("echo hi")})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, dbFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a %s in the data dir: %v", dbFile, err)
	}
	if s, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, ok := s.Step(rec.ID); !ok || got.State != StateQueued {
		t.Errorf("after a restart on the same store: %+v, %v", got, ok)
	}
	if err := s.Authenticate("admin", "pw"); err != nil {
		t.Error(err)
	}
}
