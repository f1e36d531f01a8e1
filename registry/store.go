package registry

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// StoreFile is the image store's file in the agent's state dir.
const StoreFile = "images.db"

var (
	imagesBucket   = []byte("images")
	verdictsBucket = []byte("verdicts")
	metaBucket     = []byte("meta")
	saltKey        = []byte("credential-salt")
)

// ImageRecord is what the agent knows of an image it pulled.
type ImageRecord struct {
	ImageID  string    `json:"image_id"`
	Refs     []string  `json:"refs"` // normalised references it was pulled as
	Digest   string    `json:"digest,omitempty"`
	Size     int64     `json:"size"`
	PulledAt time.Time `json:"pulled_at"`
	LastUsed time.Time `json:"last_used"`
	// Authorized maps keyed hashes of credentials (never the credentials)
	// to when the registry last let them read this image.
	Authorized map[string]time.Time `json:"authorized,omitempty"`
}

// Store keeps image records and probe verdicts across restarts. Records
// are served from memory; LastUsed changes are flushed in batches so that
// using a cached image costs no disk write.
type Store struct {
	db   *bolt.DB
	salt []byte

	mu    sync.Mutex
	recs  map[string]*ImageRecord
	dirty map[string]bool
}

// OpenStore opens (creating) the store in stateDir.
func OpenStore(stateDir string) (*Store, error) {
	path := filepath.Join(stateDir, StoreFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open image store %s: %w", path, err)
	}
	s := &Store{db: db, recs: map[string]*ImageRecord{}, dirty: map[string]bool{}}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{imagesBucket, verdictsBucket, metaBucket} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(metaBucket)
		if salt := meta.Get(saltKey); salt != nil {
			s.salt = slices.Clone(salt)
		} else {
			s.salt = make([]byte, 32)
			if _, err := rand.Read(s.salt); err != nil {
				return err
			}
			if err := meta.Put(saltKey, s.salt); err != nil {
				return err
			}
		}
		return tx.Bucket(imagesBucket).ForEach(func(k, v []byte) error {
			rec := &ImageRecord{}
			if err := json.Unmarshal(v, rec); err != nil {
				return fmt.Errorf("image record %s: %w", k, err)
			}
			s.recs[rec.ImageID] = rec
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("image store: %w", err)
	}
	return s, nil
}

// Close flushes and closes the store.
func (s *Store) Close() error {
	ferr := s.Flush()
	if err := s.db.Close(); err != nil {
		return err
	}
	return ferr
}

// credentialKey is a keyed hash naming credentials for host without
// revealing them: the same credentials give the same key on this agent only.
func (s *Store) credentialKey(host string, c Credentials) string {
	m := hmac.New(sha256.New, s.salt)
	for _, part := range []string{host, c.Username, c.Password, c.IdentityToken} {
		m.Write([]byte(part))
		m.Write([]byte{0})
	}
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// Get returns a copy of the record of imageID.
func (s *Store) Get(imageID string) (ImageRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[imageID]
	if !ok {
		return ImageRecord{}, false
	}
	return r.clone(), true
}

// All returns copies of every record.
func (s *Store) All() []ImageRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ImageRecord, 0, len(s.recs))
	for _, r := range s.recs {
		out = append(out, r.clone())
	}
	return out
}

func (r *ImageRecord) clone() ImageRecord {
	c := *r
	c.Refs = slices.Clone(r.Refs)
	if r.Authorized != nil {
		c.Authorized = make(map[string]time.Time, len(r.Authorized))
		for k, v := range r.Authorized {
			c.Authorized[k] = v
		}
	}
	return c
}

// Pulled records a pull of ref as imageID, durably.
func (s *Store) Pulled(ref, imageID, digest string, size int64, credKey string) error {
	s.mu.Lock()
	now := time.Now().UTC()
	r := s.recs[imageID]
	if r == nil {
		r = &ImageRecord{ImageID: imageID, PulledAt: now}
		s.recs[imageID] = r
	}
	if !slices.Contains(r.Refs, ref) {
		r.Refs = append(r.Refs, ref)
	}
	r.Digest, r.Size, r.LastUsed = digest, size, now
	if r.Authorized == nil {
		r.Authorized = map[string]time.Time{}
	}
	r.Authorized[credKey] = now
	s.dirty[imageID] = true
	s.mu.Unlock()
	return s.Flush()
}

// Authorize notes that credKey may read imageID as of now.
func (s *Store) Authorize(imageID, credKey string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.recs[imageID]; r != nil {
		if r.Authorized == nil {
			r.Authorized = map[string]time.Time{}
		}
		r.Authorized[credKey] = time.Now().UTC()
		s.dirty[imageID] = true
	}
}

// Touch marks imageID used now; flushed later.
func (s *Store) Touch(imageID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.recs[imageID]; r != nil {
		r.LastUsed = time.Now().UTC()
		s.dirty[imageID] = true
	}
}

// Forget removes the record of imageID.
func (s *Store) Forget(imageID string) error {
	s.mu.Lock()
	delete(s.recs, imageID)
	delete(s.dirty, imageID)
	s.mu.Unlock()
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(imagesBucket).Delete([]byte(imageID)) })
}

// Flush writes the changed records.
func (s *Store) Flush() error {
	s.mu.Lock()
	batch := map[string][]byte{}
	for id := range s.dirty {
		if r := s.recs[id]; r != nil {
			b, err := json.Marshal(r)
			if err != nil {
				s.mu.Unlock()
				return err
			}
			batch[id] = b
		}
	}
	s.dirty = map[string]bool{}
	s.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(imagesBucket)
		for id, v := range batch {
			if err := b.Put([]byte(id), v); err != nil {
				return err
			}
		}
		return nil
	})
}

// GetVerdict returns a stored probe verdict.
func (s *Store) GetVerdict(key string) ([]byte, bool) {
	var out []byte
	_ = s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(verdictsBucket).Get([]byte(key)); v != nil {
			out = slices.Clone(v)
		}
		return nil
	})
	return out, out != nil
}

// PutVerdict stores a probe verdict durably.
func (s *Store) PutVerdict(key string, v []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(verdictsBucket).Put([]byte(key), v) })
}
