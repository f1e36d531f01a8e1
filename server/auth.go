package server

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/mail"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"stevedore/server/store"
)

// AdminPasswordFile is written in the data dir, mode 0600, when the server
// first starts without ADMIN_PASSWORD: the generated password is in it.
const AdminPasswordFile = "admin-password"

// pbkdf2Iterations follows OWASP's advice for PBKDF2-HMAC-SHA256; the
// cost is paid once per credentials and then cached (authCache).
const pbkdf2Iterations = 600_000

// authCacheTTL is how long a verified username and password are trusted
// without deriving the key again, so that a client following a log with
// many requests does not pay PBKDF2 on each.
const authCacheTTL = 5 * time.Minute

type credential = store.Credential

type authCache struct {
	mu sync.Mutex
	ok map[[32]byte]time.Time
	// keyUsed is when each API key's (by its hash) last use was written.
	keyUsed map[[32]byte]time.Time
	// now replaces time.Now for the keys' times in tests.
	now func() time.Time
}

// clock is now, or time.Now; the caller holds mu.
func (c *authCache) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// deriving bounds the PBKDF2 derivations running at once, so a flood of
// requests with wrong passwords costs the server a core or two, not all.
var deriving = make(chan struct{}, max(1, runtime.NumCPU()/2))

// ErrBadEmail: an email address (ADMIN_EMAIL) is not a bare address
// such as admin@example.com.
var ErrBadEmail = errors.New("not a bare email address such as admin@example.com")

// checkEmail accepts "" (no address) and a bare addr-spec only: a display
// name ("Admin <admin@example.com>") would be dropped from what is
// stored, so it is refused rather than silently cut.
func checkEmail(email string) error {
	if email == "" {
		return nil
	}
	a, err := mail.ParseAddress(email)
	if err != nil {
		return fmt.Errorf("%q: %w: %w", email, ErrBadEmail, err)
	}
	if a.Name != "" || a.Address != email {
		return fmt.Errorf("%q: %w: give the address alone, %q", email, ErrBadEmail, a.Address)
	}
	return nil
}

// ensureAdmin creates the admin credentials on the server's first start:
// from username and password (ADMIN_USERNAME / ADMIN_PASSWORD) when given,
// otherwise "admin" with a generated password written to AdminPasswordFile,
// with email (ADMIN_EMAIL, already checked) stored beside them.
// Later starts keep the stored credentials and email.
func (s *Server) ensureAdmin(username, password, email string) error {
	exists, err := s.db.HasUsers()
	if err != nil {
		return fmt.Errorf("admin credentials: %w", err)
	}
	if exists {
		if username != "" || password != "" || email != "" {
			s.log.Debug("admin credentials exist; ADMIN_USERNAME, ADMIN_PASSWORD and ADMIN_EMAIL only apply on the first start")
		}
		return nil
	}
	if username == "" {
		username = "admin"
	}
	if password == "" {
		b := make([]byte, 18)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		password = base64.RawURLEncoding.EncodeToString(b)
		path := filepath.Join(s.cfg.DataDir, AdminPasswordFile)
		if err := os.WriteFile(path, []byte(password+"\n"), 0o600); err != nil {
			return fmt.Errorf("admin password: %w", err)
		}
		s.log.Warn("no ADMIN_PASSWORD on first start: generated one", "username", username, "password_file", path)
	}
	c, err := newCredential(password)
	if err != nil {
		return err
	}
	c.Email = email
	if err := s.db.CreateUser(username, c); errors.Is(err, store.ErrConflict) {
		// Another server on the same database created it first: theirs stand.
		s.log.Info("admin credentials created meanwhile by another server", "username", username)
		return nil
	} else if err != nil {
		return fmt.Errorf("admin credentials: %w", err)
	}
	s.log.Info("admin credentials created", "username", username, "email", email)
	return nil
}

func newCredential(password string) (credential, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return credential{}, err
	}
	hash, err := pbkdf2.Key(sha256.New, password, salt, pbkdf2Iterations, 32)
	if err != nil {
		return credential{}, err
	}
	return credential{Salt: salt, Hash: hash, Iterations: pbkdf2Iterations}, nil
}

// ErrBadCredentials: the username is unknown or the password wrong.
var ErrBadCredentials = errors.New("bad username or password")

// Authenticate checks a username and password.
func (s *Server) Authenticate(username, password string) error {
	key := sha256.Sum256([]byte(username + "\x00" + password))
	s.auth.mu.Lock()
	if t, ok := s.auth.ok[key]; ok && time.Since(t) < authCacheTTL {
		s.auth.mu.Unlock()
		return nil
	}
	s.auth.mu.Unlock()
	c, err := s.db.User(username)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		s.log.Warn("cannot read a user's credentials", "username", username, "error", err)
	}
	found := err == nil
	if !found {
		// Derive anyway, so that an unknown name takes as long as a wrong password.
		c = credential{Salt: make([]byte, 16), Hash: make([]byte, 32), Iterations: pbkdf2Iterations}
	}
	deriving <- struct{}{}
	hash, err := pbkdf2.Key(sha256.New, password, c.Salt, c.Iterations, len(c.Hash))
	<-deriving
	if err != nil || !found || subtle.ConstantTimeCompare(hash, c.Hash) != 1 {
		return ErrBadCredentials
	}
	s.auth.mu.Lock()
	if s.auth.ok == nil {
		s.auth.ok = map[[32]byte]time.Time{}
	}
	s.auth.ok[key] = time.Now()
	s.auth.mu.Unlock()
	return nil
}
