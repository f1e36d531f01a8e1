package server

import (
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// retentionEvery is how often completed steps past retention are removed.
const retentionEvery = time.Hour

// keepRetention removes, now and then every retentionEvery, what the server
// keeps of steps that completed more than Config.Retention ago.
func (s *Server) keepRetention() {
	t := time.NewTicker(retentionEvery)
	defer t.Stop()
	for {
		if n, err := s.Prune(time.Now().Add(-s.cfg.Retention)); err != nil {
			s.log.Warn("cannot prune old steps", "error", err)
		} else if n > 0 {
			s.log.Info("old steps pruned", "steps", n, "retention", s.cfg.Retention)
		}
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Prune removes the steps that completed before cutoff: their records,
// task logs, artifacts and submission keys. Queued and running steps are
// never pruned. Returns how many were removed.
func (s *Server) Prune(cutoff time.Time) (int, error) {
	var old []string
	for _, rec := range s.Steps() {
		if rec.State == StateComplete && !rec.FinishedAt.IsZero() && rec.FinishedAt.Before(cutoff) {
			old = append(old, rec.ID)
		}
	}
	if len(old) == 0 {
		return 0, nil
	}
	gone := map[string]bool{}
	for _, id := range old {
		gone[id] = true
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		keys := tx.Bucket(keysBucket)
		for _, id := range old {
			for _, b := range [][]byte{stepsBucket, queueBucket, cancelsBucket} {
				if err := tx.Bucket(b).Delete([]byte(id)); err != nil {
					return err
				}
			}
		}
		var stale [][]byte
		if err := keys.ForEach(func(k, v []byte) error {
			if gone[string(v)] {
				stale = append(stale, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range stale {
			if err := keys.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	// Files after the records: a crash in between leaves files no record
	// names, never a record whose log is gone.
	for _, id := range old {
		os.Remove(s.TaskLogPath(id))
		os.RemoveAll(filepath.Join(s.cfg.ArtifactsDir, id))
	}
	return len(old), nil
}
