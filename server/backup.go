package server

import (
	"fmt"
	"net/http"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// apiBackup sends a consistent copy of the server's database (steps,
// queue, workers, trust, users and API keys) taken while the server runs.
// The copy is made to a file in the data dir first, within one read
// transaction that lasts as long as the local copy: a slow client must
// not hold a transaction open, since bbolt's writers wait for open ones
// when the file grows. Restoring is putting the copy in a data dir as
// server.db, with the same master key (MASTER_KEY, or the master.key
// file), since the steps are sealed with it. Task logs and artifacts are
// plain files: copy their directories beside it.
func (s *Server) apiBackup(w http.ResponseWriter, r *http.Request) {
	f, err := os.CreateTemp(s.cfg.DataDir, ".backup-*.db")
	if err != nil {
		apiError(w, http.StatusInternalServerError, fmt.Errorf("backup: %w", err))
		return
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := s.db.View(func(tx *bolt.Tx) error { _, err := tx.WriteTo(f); return err }); err != nil {
		apiError(w, http.StatusInternalServerError, fmt.Errorf("backup: %w", err))
		return
	}
	taken := time.Now().UTC()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="stevedore-server-%s.db"`, taken.Format("20060102T150405Z")))
	http.ServeContent(w, r, "", taken, f)
}
