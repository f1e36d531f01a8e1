package server

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"stevedore/server/store"
)

// APIKeyPrefix begins every API key's secret, so that one is recognised in
// a configuration or a leaked log, and is never taken for the
// registration token.
const APIKeyPrefix = "sdk_"

// keyUseInterval is how often, at most, a key's last use is written: a
// client following a log makes many requests, and each write is an fsync.
const keyUseInterval = time.Minute

// Role is what an API client may do. Each role may do all that the roles
// before it may: reader, then submitter, then admin.
type Role string

const (
	// RoleReader reads steps, their logs and artifacts, and the workers.
	RoleReader Role = "reader"
	// RoleSubmitter also submits and cancels steps.
	RoleSubmitter Role = "submitter"
	// RoleAdmin may do everything: keys, trust, workers' registration.
	RoleAdmin Role = "admin"
)

func (r Role) rank() int {
	switch r {
	case RoleReader:
		return 1
	case RoleSubmitter:
		return 2
	case RoleAdmin:
		return 3
	}
	return 0
}

// allows reports whether r may use a route that needs the role need.
func (r Role) allows(need Role) bool { return r.rank() > 0 && r.rank() >= need.rank() }

// Errors of the API keys; test with errors.Is.
var (
	ErrBadKeyName = errors.New("bad key name")
	ErrBadRole    = errors.New("bad role")
	ErrKeyExists  = errors.New("a key with that name exists")
	ErrUnknownKey = errors.New("unknown key")
	// ErrBadKey: no key has this secret (never had, or revoked).
	ErrBadKey = errors.New("unknown or revoked API key")
	// ErrKeyExpired: the key's expires_at has passed.
	ErrKeyExpired = errors.New("API key expired")
	ErrBadExpiry  = errors.New("bad expiry")
)

// keyName keeps names plain: they appear in step records ("key:NAME") and logs.
var keyName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// APIKey is an API key as the API lists it: never its secret.
type APIKey struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Role       Role      `json:"role"`
	CreatedAt  time.Time `json:"created_at"`
	LastUsedAt time.Time `json:"last_used_at,omitzero"`
	// ExpiresAt is when the key stops working; zero: never.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// stored is k as the store keeps it.
func (k APIKey) stored() store.APIKey {
	return store.APIKey{ID: k.ID, Name: k.Name, Role: string(k.Role), CreatedAt: k.CreatedAt, LastUsedAt: k.LastUsedAt, ExpiresAt: k.ExpiresAt}
}

func apiKeyOf(k store.APIKey) APIKey {
	return APIKey{ID: k.ID, Name: k.Name, Role: Role(k.Role), CreatedAt: k.CreatedAt, LastUsedAt: k.LastUsedAt, ExpiresAt: k.ExpiresAt}
}

// NewAPIKey is a key just created, with its secret: the only time the
// secret is shown.
type NewAPIKey struct {
	APIKey
	Key string `json:"key"`
}

// CreateAPIKey makes a key with a new secret, which stops working ttl
// after (0: never). Names are unique.
func (s *Server) CreateAPIKey(name string, role Role, ttl time.Duration) (NewAPIKey, error) {
	if !keyName.MatchString(name) {
		return NewAPIKey{}, fmt.Errorf("%w %q: want 1 to 64 letters, digits, '.', '_' or '-', beginning with a letter or digit", ErrBadKeyName, name)
	}
	if role.rank() == 0 {
		return NewAPIKey{}, fmt.Errorf("%w %q: want %s, %s or %s", ErrBadRole, role, RoleAdmin, RoleSubmitter, RoleReader)
	}
	if ttl < 0 {
		return NewAPIKey{}, fmt.Errorf("%w %s: want a positive duration, or none for a key that does not expire", ErrBadExpiry, ttl)
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return NewAPIKey{}, err
	}
	idBytes := make([]byte, 8)
	if _, err := rand.Read(idBytes); err != nil {
		return NewAPIKey{}, err
	}
	nk := NewAPIKey{
		APIKey: APIKey{ID: "k" + hex.EncodeToString(idBytes), Name: name, Role: role, CreatedAt: s.clock().UTC()},
		Key:    APIKeyPrefix + base64.RawURLEncoding.EncodeToString(secret),
	}
	if ttl > 0 {
		nk.ExpiresAt = nk.CreatedAt.Add(ttl)
	}
	// A plain SHA-256 suffices, unlike the admin's password (PBKDF2): the
	// secret is 256 random bits, so there is no dictionary to try against
	// a stolen database, and a fast hash keeps each request cheap.
	hash := sha256.Sum256([]byte(nk.Key))
	if err := s.db.CreateAPIKey(hash, nk.APIKey.stored()); errors.Is(err, store.ErrConflict) {
		return NewAPIKey{}, fmt.Errorf("api key %s: %w", name, ErrKeyExists)
	} else if err != nil {
		return NewAPIKey{}, fmt.Errorf("api key %s: %w", name, err)
	}
	s.log.Info("api key created", "key_id", nk.ID, "name", name, "role", role)
	return nk, nil
}

// APIKeys lists the keys, oldest first.
func (s *Server) APIKeys() []APIKey {
	keys, err := s.db.ListAPIKeys()
	if err != nil {
		s.log.Warn("cannot list the api keys", "error", err)
	}
	out := make([]APIKey, 0, len(keys))
	for _, k := range keys {
		out = append(out, apiKeyOf(k))
	}
	return out
}

// RevokeAPIKey deletes the key id; the next request with it is refused.
func (s *Server) RevokeAPIKey(id string) error {
	hash, err := s.db.DeleteAPIKey(id)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %s", ErrUnknownKey, id)
	} else if err != nil {
		return err
	}
	s.auth.mu.Lock()
	delete(s.auth.keyUsed, hash)
	s.auth.mu.Unlock()
	s.log.Info("api key revoked", "key_id", id)
	return nil
}

// AuthenticateKey returns the key whose secret this is, and notes its use.
// Nothing is cached: the lookup is one read by the hash (bbolt: in
// memory-mapped pages), and reading the store every time is what makes a
// revocation take effect at the very next request.
func (s *Server) AuthenticateKey(secret string) (APIKey, error) {
	if !strings.HasPrefix(secret, APIKeyPrefix) {
		return APIKey{}, ErrBadKey
	}
	hash := sha256.Sum256([]byte(secret))
	stored, err := s.db.APIKeyByHash(hash)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("cannot read an api key", "error", err)
		}
		return APIKey{}, ErrBadKey
	}
	k := apiKeyOf(stored)
	if !k.ExpiresAt.IsZero() && !s.clock().Before(k.ExpiresAt) {
		return APIKey{}, fmt.Errorf("%w at %s: ask the admin for a new one", ErrKeyExpired, k.ExpiresAt.Format(time.RFC3339))
	}
	s.noteKeyUse(hash, k)
	return k, nil
}

// noteKeyUse writes the key's last use when the one stored is older than
// keyUseInterval. A failed write is logged, not the request's failure.
func (s *Server) noteKeyUse(hash [32]byte, k APIKey) {
	s.auth.mu.Lock()
	now := s.auth.clock()
	last, ok := s.auth.keyUsed[hash]
	if !ok {
		last = k.LastUsedAt
	}
	if now.Sub(last) < keyUseInterval {
		s.auth.mu.Unlock()
		return
	}
	if s.auth.keyUsed == nil {
		s.auth.keyUsed = map[[32]byte]time.Time{}
	}
	s.auth.keyUsed[hash] = now
	s.auth.mu.Unlock()
	if err := s.db.TouchAPIKey(hash, now); err != nil {
		s.log.Warn("cannot record an api key's use", "key_id", k.ID, "error", err)
	}
}

// clock is the time the keys are stamped with.
func (s *Server) clock() time.Time {
	s.auth.mu.Lock()
	defer s.auth.mu.Unlock()
	return s.auth.clock()
}
