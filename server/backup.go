package server

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"stevedore/server/store"
)

// apiBackup sends a consistent copy of the server's database (steps,
// queue, workers, trust, users and API keys) taken while the server runs.
// The store makes the copy to a file in the data dir first (bbolt: within
// one read transaction that lasts as long as the local copy): a slow
// client must not hold a transaction open, since bbolt's writers wait for
// open ones when the file grows. A store whose database has backup tools
// of its own answers 501. Restoring is putting the copy in a data dir as
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
	if _, err := s.db.Backup(f); errors.Is(err, store.ErrUnsupported) {
		apiError(w, http.StatusNotImplemented, fmt.Errorf("backup: take it with the database's own tools: %w", err))
		return
	} else if err != nil {
		apiError(w, http.StatusInternalServerError, fmt.Errorf("backup: %w", err))
		return
	}
	taken := time.Now().UTC()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="stevedore-server-%s.db"`, taken.Format("20060102T150405Z")))
	http.ServeContent(w, r, "", taken, f)
}
