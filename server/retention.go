package server

import (
	"cmp"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"
)

// retentionEvery is how often completed steps past retention are removed;
// storageEvery how often the size of what they keep is checked, more often
// because a burst of big logs fills a disk faster than an hour.
const (
	retentionEvery = time.Hour
	storageEvery   = 5 * time.Minute
)

// keepRetention removes, now and then periodically, what the server keeps
// of steps that completed more than Config.Retention ago, and the oldest
// completed steps while they keep more than Config.MaxStorage bytes.
func (s *Server) keepRetention() {
	every := retentionEvery
	if s.cfg.MaxStorage > 0 {
		every = storageEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if s.cfg.Retention > 0 {
			s.logPruned("age", s.cfg.Retention.String())(s.Prune(time.Now().Add(-s.cfg.Retention)))
		}
		if s.cfg.MaxStorage > 0 {
			s.logPruned("size", strconv.FormatInt(s.cfg.MaxStorage, 10)+" bytes")(s.PruneToSize(s.cfg.MaxStorage))
		}
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) logPruned(reason, limit string) func(int, error) {
	return func(n int, err error) {
		switch {
		case err != nil:
			s.log.Warn("cannot prune old steps", "by", reason, "error", err)
		case n > 0:
			s.metrics.pruned.WithLabelValues(reason).Add(float64(n))
			s.log.Info("old steps pruned", "steps", n, "by", reason, "limit", limit)
		}
	}
}

// Prune removes the steps that completed before cutoff: their records,
// task logs, artifacts and submission keys. Queued and running steps are
// never pruned. Returns how many were removed.
func (s *Server) Prune(cutoff time.Time) (int, error) {
	done, err := s.db.ListSteps(StateComplete)
	if err != nil {
		return 0, err
	}
	var old []string
	for _, rec := range done {
		if !rec.FinishedAt.IsZero() && rec.FinishedAt.Before(cutoff) {
			old = append(old, rec.ID)
		}
	}
	return s.remove(old)
}

// PruneToSize removes the steps that completed first until the task logs
// and artifacts of completed steps take at most limit bytes. Queued and
// running steps are never pruned, and do not count. Returns how many were
// removed.
func (s *Server) PruneToSize(limit int64) (int, error) {
	type kept struct {
		id       string
		finished time.Time
		size     int64
	}
	complete, err := s.db.ListSteps(StateComplete)
	if err != nil {
		return 0, err
	}
	var done []kept
	var total int64
	for _, rec := range complete {
		k := kept{id: rec.ID, finished: rec.FinishedAt}
		if fi, err := os.Stat(s.TaskLogPath(rec.ID)); err == nil {
			k.size += fi.Size()
		}
		for _, a := range rec.Artifacts {
			k.size += a.Size
		}
		total += k.size
		done = append(done, k)
	}
	if total <= limit {
		return 0, nil
	}
	slices.SortFunc(done, func(a, b kept) int { return cmp.Or(a.finished.Compare(b.finished), cmp.Compare(a.id, b.id)) })
	var old []string
	for _, k := range done {
		if total <= limit {
			break
		}
		old = append(old, k.id)
		total -= k.size
	}
	return s.remove(old)
}

// remove deletes the records, task logs, artifacts and submission keys of
// the completed steps ids.
func (s *Server) remove(old []string) (int, error) {
	if len(old) == 0 {
		return 0, nil
	}
	if err := s.db.DeleteSteps(old); err != nil {
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
