package agent

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

const journalFile = "journal.db"

var stepsBucket = []byte("steps")

// journal is the durable record of every step the agent accepted, keyed by
// ticket. A record is committed (fsync) before the step runs, so a retried
// StartStep or a restarted agent never runs a step twice.
type journal struct{ db *bolt.DB }

func openJournal(stateDir string) (*journal, error) {
	path := filepath.Join(stateDir, journalFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open journal %s (is another agent using this state dir?): %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(stepsBucket)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("journal: %w", err)
	}
	return &journal{db: db}, nil
}

func (j *journal) close() error { return j.db.Close() }

// put writes rec durably.
func (j *journal) put(rec *stepRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("journal: encode %s: %w", rec.Ticket, err)
	}
	return j.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(stepsBucket).Put([]byte(rec.Ticket), b)
	})
}

// create writes rec unless its ticket is already there; it reports whether
// it wrote. Check and write are one transaction, so two concurrent
// StartSteps with one ticket cannot both create it.
func (j *journal) create(rec *stepRecord) (bool, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return false, fmt.Errorf("journal: encode %s: %w", rec.Ticket, err)
	}
	created := false
	err = j.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(stepsBucket)
		if bk.Get([]byte(rec.Ticket)) != nil {
			return nil
		}
		created = true
		return bk.Put([]byte(rec.Ticket), b)
	})
	return created, err
}

// delete removes the record of ticket, if any.
func (j *journal) delete(ticket string) error {
	return j.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(stepsBucket).Delete([]byte(ticket))
	})
}

// all returns every record.
func (j *journal) all() ([]*stepRecord, error) {
	var out []*stepRecord
	err := j.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(stepsBucket).ForEach(func(k, v []byte) error {
			rec := &stepRecord{}
			if err := json.Unmarshal(v, rec); err != nil {
				return fmt.Errorf("journal: decode %s: %w", k, err)
			}
			out = append(out, rec)
			return nil
		})
	})
	return out, err
}
