package server

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// apiBackup streams a consistent copy of the server's database (steps,
// queue, workers, trust, users and API keys) while the server runs: a
// bbolt read transaction sees one moment, and writers go on meanwhile.
// Restoring is putting the copy in a data dir as server.db, with the same
// master key (MASTER_KEY, or the master.key file), since the steps are
// sealed with it. Task logs and artifacts are plain files: copy their
// directories beside it.
func (s *Server) apiBackup(w http.ResponseWriter, _ *http.Request) {
	err := s.db.View(func(tx *bolt.Tx) error {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="stevedore-server-%s.db"`, time.Now().UTC().Format("20060102T150405Z")))
		w.Header().Set("Content-Length", strconv.FormatInt(tx.Size(), 10))
		_, err := tx.WriteTo(w)
		return err
	})
	if err != nil {
		// The status is sent: a short body (Content-Length) tells the client.
		s.log.Warn("backup not sent whole", "error", err)
	}
}
