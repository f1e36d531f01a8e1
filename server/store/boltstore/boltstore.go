// Package boltstore is the embedded store.Store: one bbolt file in the
// server's data dir, needing no database server. Its buckets and JSON
// records are those the server wrote before the store interface existed,
// so older data dirs open unchanged.
package boltstore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"stevedore/server/store"
)

// SchemaVersion is the version of the buckets and records this code
// writes. A file without one is version 1, the first.
const SchemaVersion = 1

var (
	stepsBucket   = []byte("steps")
	workersBucket = []byte("workers")
	// queueBucket indexes the queued steps by ID (time-ordered), so that
	// dispatch reads the queue, not every step ever kept.
	queueBucket = []byte("queue")
	// cancelsBucket marks the steps whose cancel was asked for, so that the
	// driver's checks need no step decoded.
	cancelsBucket = []byte("cancels")
	// keysBucket maps a client's submission key to its step.
	keysBucket = []byte("submission-keys")
	// abandonedBucket maps the steps ended LOST while their worker was
	// away to that worker.
	abandonedBucket = []byte("abandoned")
	// leftBucket maps a worker that is not connected to when it went
	// away (RFC 3339).
	leftBucket = []byte("workers-left")
	// usersBucket maps a username to its credential.
	usersBucket = []byte("users")
	// trustBucket holds the thumbprints trusted through the API as keys.
	trustBucket = []byte("trust")
	// apiKeysBucket maps the SHA-256 of an API key's secret to the key's
	// record: a request's key is found with one lookup.
	apiKeysBucket = []byte("api-keys")
	// settingsBucket holds the server's own settings (KeepSetting).
	settingsBucket = []byte("settings")
	// leasesBucket maps a lease's name to its holder and until (JSON).
	leasesBucket = []byte("leases")
	// metaBucket holds the schema version (schemaKey, decimal).
	metaBucket = []byte("meta")
	schemaKey  = []byte("schema")
)

// Store is a store.Store in a bbolt file.
type Store struct {
	db *bolt.DB
}

var _ store.Store = (*Store)(nil)

// Open opens or creates the bbolt file at path. It waits up to five
// seconds for another process to release the file's lock. It refuses a
// file of a newer schema (store.ErrSchemaTooNew).
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open %s (is another server using it?): %w", path, err)
	}
	if err := db.Update(migrate); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// migrate brings a file to SchemaVersion, in one transaction, and rebuilds
// the queue index: it can only agree with the steps.
func migrate(tx *bolt.Tx) error {
	version := 1
	if m := tx.Bucket(metaBucket); m != nil {
		if v := m.Get(schemaKey); v != nil {
			n, err := strconv.Atoi(string(v))
			if err != nil {
				return fmt.Errorf("schema version %q: %w", v, err)
			}
			version = n
		}
	}
	if version > SchemaVersion {
		return fmt.Errorf("%w: version %d, this server knows up to %d", store.ErrSchemaTooNew, version, SchemaVersion)
	}
	// Version 1 is the buckets; later versions' steps go here, in order.
	for _, b := range [][]byte{stepsBucket, workersBucket, keysBucket, usersBucket, trustBucket, cancelsBucket, apiKeysBucket, abandonedBucket, leftBucket, metaBucket, settingsBucket, leasesBucket} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	if err := tx.Bucket(metaBucket).Put(schemaKey, []byte(strconv.Itoa(SchemaVersion))); err != nil {
		return err
	}
	if tx.Bucket(queueBucket) != nil {
		if err := tx.DeleteBucket(queueBucket); err != nil {
			return err
		}
	}
	queue, err := tx.CreateBucket(queueBucket)
	if err != nil {
		return err
	}
	return tx.Bucket(stepsBucket).ForEach(func(k, v []byte) error {
		var rec store.StepRecord
		if json.Unmarshal(v, &rec) == nil && rec.State == store.StateQueued {
			return queue.Put(k, nil)
		}
		return nil
	})
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Backup writes the file as it is in one read transaction; writers go on
// meanwhile (bbolt's readers do not block them, but for a file that must
// grow), so w should be quick: a local file, not a client.
func (s *Store) Backup(w io.Writer) (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}

// CreateStep implements store.Steps.
func (s *Store) CreateStep(rec store.StepRecord, key string) (store.StepRecord, bool, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return store.StepRecord{}, false, err
	}
	var prev store.StepRecord
	created := false
	err = s.db.Update(func(tx *bolt.Tx) error {
		steps := tx.Bucket(stepsBucket)
		if key != "" {
			if id := tx.Bucket(keysBucket).Get([]byte(key)); id != nil {
				v := steps.Get(id)
				if v == nil {
					return fmt.Errorf("step %s of submission key %q: %w", id, key, store.ErrNotFound)
				}
				return json.Unmarshal(v, &prev)
			}
		}
		if steps.Get([]byte(rec.ID)) != nil {
			return fmt.Errorf("step %s: %w", rec.ID, store.ErrConflict)
		}
		if key != "" {
			if err := tx.Bucket(keysBucket).Put([]byte(key), []byte(rec.ID)); err != nil {
				return err
			}
		}
		if err := index(tx, rec); err != nil {
			return err
		}
		created = true
		return steps.Put([]byte(rec.ID), b)
	})
	switch {
	case err != nil:
		return store.StepRecord{}, false, err
	case !created:
		return prev, false, nil
	}
	return rec, true, nil
}

// index keeps the queue and the cancel flags agreeing with rec.
func index(tx *bolt.Tx, rec store.StepRecord) error {
	if rec.CancelRequested {
		if err := tx.Bucket(cancelsBucket).Put([]byte(rec.ID), nil); err != nil {
			return err
		}
	}
	if rec.State == store.StateQueued {
		return tx.Bucket(queueBucket).Put([]byte(rec.ID), nil)
	}
	return tx.Bucket(queueBucket).Delete([]byte(rec.ID))
}

// Step implements store.Steps.
func (s *Store) Step(id string) (store.StepRecord, error) {
	var rec store.StepRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(stepsBucket).Get([]byte(id))
		if v == nil {
			return fmt.Errorf("step %s: %w", id, store.ErrNotFound)
		}
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("step %s: %w", id, err)
		}
		return nil
	})
	return rec, err
}

// ListSteps implements store.Steps. A record that does not decode is left
// out, as the server always did, rather than hiding every other step.
func (s *Store) ListSteps(state string) ([]store.StepRecord, error) {
	var out []store.StepRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		steps := tx.Bucket(stepsBucket)
		add := func(v []byte) {
			var rec store.StepRecord
			if v != nil && json.Unmarshal(v, &rec) == nil && (state == "" || rec.State == state) {
				out = append(out, rec)
			}
		}
		if state == store.StateQueued {
			return tx.Bucket(queueBucket).ForEach(func(k, _ []byte) error { add(steps.Get(k)); return nil })
		}
		return steps.ForEach(func(_, v []byte) error { add(v); return nil })
	})
	return out, err
}

// UpdateStep implements store.Steps: bbolt has one writer at a time, so
// the read and the write cannot interleave with another update.
func (s *Store) UpdateStep(id string, fn func(*store.StepRecord) error) (store.StepRecord, error) {
	var rec store.StepRecord
	err := s.db.Update(func(tx *bolt.Tx) error {
		steps := tx.Bucket(stepsBucket)
		v := steps.Get([]byte(id))
		if v == nil {
			return fmt.Errorf("step %s: %w", id, store.ErrNotFound)
		}
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("step %s: %w", id, err)
		}
		cancel := rec.CancelRequested || tx.Bucket(cancelsBucket).Get([]byte(id)) != nil
		if err := fn(&rec); err != nil {
			return err
		}
		rec.ID = id
		rec.CancelRequested = rec.CancelRequested || cancel
		b, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if err := index(tx, rec); err != nil {
			return err
		}
		return steps.Put([]byte(id), b)
	})
	if err != nil {
		return store.StepRecord{}, err
	}
	return rec, nil
}

// CancelRequested implements store.Steps.
func (s *Store) CancelRequested(id string) (bool, error) {
	var asked bool
	err := s.db.View(func(tx *bolt.Tx) error {
		asked = tx.Bucket(cancelsBucket).Get([]byte(id)) != nil
		return nil
	})
	return asked, err
}

// CountQueued implements store.Steps from the queue index's key count.
func (s *Store) CountQueued() (int, error) {
	var n int
	err := s.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(queueBucket).Stats().KeyN
		return nil
	})
	return n, err
}

// DeleteSteps implements store.Steps.
func (s *Store) DeleteSteps(ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	gone := map[string]bool{}
	for _, id := range ids {
		gone[id] = true
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, id := range ids {
			for _, b := range [][]byte{stepsBucket, queueBucket, cancelsBucket} {
				if err := tx.Bucket(b).Delete([]byte(id)); err != nil {
					return err
				}
			}
		}
		// The keys are found by their steps by a scan: pruning is rare,
		// a submission's lookup by key is not.
		keys := tx.Bucket(keysBucket)
		var stale [][]byte
		if err := keys.ForEach(func(k, v []byte) error {
			if gone[string(v)] {
				stale = append(stale, bytes.Clone(k))
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
}

// Abandon implements store.Steps.
func (s *Store) Abandon(id, worker string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(abandonedBucket).Put([]byte(id), []byte(worker)) })
}

// AbandonedOn implements store.Steps.
func (s *Store) AbandonedOn(worker string) ([]string, error) {
	var ids []string
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(abandonedBucket).ForEach(func(k, v []byte) error {
			if string(v) == worker {
				ids = append(ids, string(k))
			}
			return nil
		})
	})
	return ids, err
}

// ForgetAbandoned implements store.Steps.
func (s *Store) ForgetAbandoned(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(abandonedBucket).Delete([]byte(id)) })
}

// PutWorker implements store.Workers.
func (s *Store) PutWorker(rec store.WorkerRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(workersBucket).Put([]byte(rec.Name), b) })
}

// ListWorkers implements store.Workers.
func (s *Store) ListWorkers() ([]store.WorkerRecord, error) {
	var out []store.WorkerRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(workersBucket).ForEach(func(k, v []byte) error {
			var w store.WorkerRecord
			if err := json.Unmarshal(v, &w); err != nil {
				return fmt.Errorf("worker %s: %w", k, err)
			}
			out = append(out, w)
			return nil
		})
	})
	return out, err
}

// DeleteWorker implements store.Workers.
func (s *Store) DeleteWorker(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(leftBucket).Delete([]byte(name)); err != nil {
			return err
		}
		return tx.Bucket(workersBucket).Delete([]byte(name))
	})
}

// SetWorkerLeft implements store.Workers.
func (s *Store) SetWorkerLeft(name string, at time.Time) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if at.IsZero() {
			return tx.Bucket(leftBucket).Delete([]byte(name))
		}
		return tx.Bucket(leftBucket).Put([]byte(name), []byte(at.Format(time.RFC3339Nano)))
	})
}

// WorkerLeft implements store.Workers. A time that does not parse counts
// as none, as the server always read it.
func (s *Store) WorkerLeft(name string) (time.Time, error) {
	var at time.Time
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(leftBucket).Get([]byte(name)); v != nil {
			at, _ = time.Parse(time.RFC3339Nano, string(v))
		}
		return nil
	})
	return at, err
}

// ListTrusted implements store.Trust.
func (s *Store) ListTrusted() ([]string, error) {
	var out []string
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(trustBucket).ForEach(func(k, _ []byte) error { out = append(out, string(k)); return nil })
	})
	return out, err
}

// KeepSetting implements store.Store.
func (s *Store) KeepSetting(name string, value []byte) ([]byte, error) {
	var out []byte
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(settingsBucket)
		if v := b.Get([]byte(name)); v != nil {
			out = bytes.Clone(v)
			return nil
		}
		out = bytes.Clone(value)
		return b.Put([]byte(name), out)
	})
	if err != nil {
		return nil, fmt.Errorf("setting %s: %w", name, err)
	}
	return out, nil
}

type lease struct {
	Holder string    `json:"holder"`
	Until  time.Time `json:"until"`
}

// TakeLease implements store.Store.
func (s *Store) TakeLease(name, holder string, now, until time.Time) (bool, error) {
	taken := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(leasesBucket)
		var cur lease
		if v := b.Get([]byte(name)); v != nil {
			if err := json.Unmarshal(v, &cur); err != nil {
				return err
			}
			if cur.Holder != holder && now.Before(cur.Until) {
				return nil
			}
		}
		v, err := json.Marshal(lease{Holder: holder, Until: until.UTC()})
		if err != nil {
			return err
		}
		taken = true
		return b.Put([]byte(name), v)
	})
	if err != nil {
		return false, fmt.Errorf("lease %s: %w", name, err)
	}
	return taken, nil
}

// DropLease implements store.Store.
func (s *Store) DropLease(name, holder string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(leasesBucket)
		var cur lease
		if v := b.Get([]byte(name)); v == nil || json.Unmarshal(v, &cur) != nil || cur.Holder != holder {
			return nil
		}
		return b.Delete([]byte(name))
	})
	if err != nil {
		return fmt.Errorf("lease %s: %w", name, err)
	}
	return nil
}

// AddTrusted implements store.Trust.
func (s *Store) AddTrusted(thumbprint string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(trustBucket).Put([]byte(thumbprint), []byte{1}) })
}

// RemoveTrusted implements store.Trust.
func (s *Store) RemoveTrusted(thumbprint string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(trustBucket).Delete([]byte(thumbprint)) })
}

// HasUsers implements store.Users.
func (s *Store) HasUsers() (bool, error) {
	var exists bool
	err := s.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(usersBucket).Cursor().First()
		exists = k != nil
		return nil
	})
	return exists, err
}

// CreateUser implements store.Users.
func (s *Store) CreateUser(name string, c store.Credential) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		users := tx.Bucket(usersBucket)
		if users.Get([]byte(name)) != nil {
			return fmt.Errorf("user %s: %w", name, store.ErrConflict)
		}
		return users.Put([]byte(name), b)
	})
}

// User implements store.Users.
func (s *Store) User(name string) (store.Credential, error) {
	var c store.Credential
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(usersBucket).Get([]byte(name))
		if v == nil {
			return fmt.Errorf("user %s: %w", name, store.ErrNotFound)
		}
		if err := json.Unmarshal(v, &c); err != nil {
			return fmt.Errorf("user %s: %w", name, err)
		}
		return nil
	})
	return c, err
}

// CreateAPIKey implements store.APIKeys. Names are checked by a scan of
// the keys: there are few, and keys are made rarely.
func (s *Store) CreateAPIKey(hash [32]byte, k store.APIKey) error {
	v, err := json.Marshal(k)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(apiKeysBucket)
		if err := b.ForEach(func(_, v []byte) error {
			var other store.APIKey
			if json.Unmarshal(v, &other) == nil && other.Name == k.Name {
				return fmt.Errorf("api key %s: %w", k.Name, store.ErrConflict)
			}
			return nil
		}); err != nil {
			return err
		}
		if b.Get(hash[:]) != nil {
			return fmt.Errorf("api key %s: its secret's hash: %w", k.Name, store.ErrConflict)
		}
		return b.Put(hash[:], v)
	})
}

// ListAPIKeys implements store.APIKeys; a record that does not decode is
// left out.
func (s *Store) ListAPIKeys() ([]store.APIKey, error) {
	var out []store.APIKey
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(apiKeysBucket).ForEach(func(_, v []byte) error {
			var k store.APIKey
			if json.Unmarshal(v, &k) == nil {
				out = append(out, k)
			}
			return nil
		})
	})
	slices.SortStableFunc(out, func(a, b store.APIKey) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out, err
}

// APIKeyByHash implements store.APIKeys.
func (s *Store) APIKeyByHash(hash [32]byte) (store.APIKey, error) {
	var k store.APIKey
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(apiKeysBucket).Get(hash[:])
		if v == nil {
			return fmt.Errorf("api key: %w", store.ErrNotFound)
		}
		return json.Unmarshal(v, &k)
	})
	return k, err
}

// DeleteAPIKey implements store.APIKeys.
func (s *Store) DeleteAPIKey(id string) ([32]byte, error) {
	var hash [32]byte
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(apiKeysBucket)
		var found []byte
		if err := b.ForEach(func(h, v []byte) error {
			var k store.APIKey
			if found == nil && json.Unmarshal(v, &k) == nil && k.ID == id {
				found = bytes.Clone(h)
			}
			return nil
		}); err != nil {
			return err
		}
		if len(found) != len(hash) {
			return fmt.Errorf("api key %s: %w", id, store.ErrNotFound)
		}
		copy(hash[:], found)
		return b.Delete(found)
	})
	return hash, err
}

// TouchAPIKey implements store.APIKeys.
func (s *Store) TouchAPIKey(hash [32]byte, at time.Time) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(apiKeysBucket)
		v := b.Get(hash[:])
		if v == nil {
			return nil // revoked meanwhile: not brought back
		}
		var k store.APIKey
		if err := json.Unmarshal(v, &k); err != nil {
			return err
		}
		k.LastUsedAt = at.UTC()
		v, err := json.Marshal(k)
		if err != nil {
			return err
		}
		return b.Put(hash[:], v)
	})
}
