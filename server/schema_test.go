package server_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"stevedore/internal/pgdb"
	"stevedore/server"
	"stevedore/server/store"
)

// A server refuses to start on state written by a newer server, on either
// backend, saying so; it does not start on it half-understood.
func TestServerRefusesNewerSchema(t *testing.T) {
	e := newEnv(t)
	e.stop()
	if e.backend.URL != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		pool, err := pgdb.Open(ctx, e.backend.URL)
		if err != nil {
			t.Fatal(err)
		}
		known, _ := pgdb.LatestVersion()
		_, err = pool.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_the_future')", known+1)
		pool.Close()
		if err != nil {
			t.Fatal(err)
		}
	} else {
		db, err := bolt.Open(filepath.Join(e.dir, "server", "server.db"), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte("99")) })
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	srv, err := server.New(server.Config{DataDir: filepath.Join(e.dir, "server"), Identity: e.id, Trust: e.trust, Logger: e.log,
		OpenStore: e.backend.OpenStore()})
	if err == nil {
		srv.Close()
	}
	if !errors.Is(err, store.ErrSchemaTooNew) {
		t.Fatalf("a server on a newer schema: %v, want ErrSchemaTooNew", err)
	}
	t.Logf("refused: %v", err)
}
