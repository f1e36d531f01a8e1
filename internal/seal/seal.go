// Package seal encrypts small values at rest with AES-GCM: a fresh random
// nonce per value, stored in front of the ciphertext. The agent's master key
// and a step's key both use it.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"stevedore/internal/fsutil"
)

// ErrOpen is wrapped when a value cannot be opened: wrong key, or altered.
var ErrOpen = errors.New("cannot open sealed value")

// Box seals and opens values under one key.
type Box struct{ aead cipher.AEAD }

// New returns a Box for a 16-, 24- or 32-byte AES key.
func New(key []byte) (*Box, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return &Box{aead: aead}, nil
}

// Seal returns nonce || ciphertext of plain.
func (b *Box) Seal(plain []byte) ([]byte, error) {
	n := b.aead.NonceSize()
	nonce := make([]byte, n, n+len(plain)+b.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal: nonce: %w", err)
	}
	return b.aead.Seal(nonce, nonce, plain, nil), nil
}

// Open returns the plaintext of a value Seal made under the same key.
func (b *Box) Open(sealed []byte) ([]byte, error) {
	n := b.aead.NonceSize()
	if len(sealed) < n+b.aead.Overhead() {
		return nil, fmt.Errorf("%w: too short", ErrOpen)
	}
	plain, err := b.aead.Open(nil, sealed[:n], sealed[n:], nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOpen, err)
	}
	return plain, nil
}

// MasterKeyFile holds a generated master key when MASTER_KEY is not set.
const MasterKeyFile = "master.key"

// ErrNoMasterKey: MASTER_KEY is not set and no key file has been generated yet.
var ErrNoMasterKey = errors.New("no master key yet")

// ReadMasterKey returns the master key LoadMasterKey would use (MASTER_KEY
// when set, else MasterKeyFile in dir) without generating one; with
// neither it returns ErrNoMasterKey. For backups: the key is what makes the
// sealed data readable elsewhere.
func ReadMasterKey(env, dir string) ([]byte, error) {
	if env != "" {
		k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(env))
		if err != nil || (len(k) != 16 && len(k) != 32) {
			return nil, errors.New("MASTER_KEY: want the base64 of 16 random bytes (`head -c16 /dev/urandom | base64`)")
		}
		return k, nil
	}
	path := filepath.Join(dir, MasterKeyFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		k, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
		if derr != nil || len(k) != 16 {
			return nil, fmt.Errorf("%s: not the base64 of 16 bytes", path)
		}
		return k, nil
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%w: MASTER_KEY is not set and there is no %s", ErrNoMasterKey, path)
	default:
		return nil, fmt.Errorf("master key: %w", err)
	}
}

// LoadMasterKey returns a Box for the master key: from env (MASTER_KEY, the
// base64 of 16 bytes) when set, else from MasterKeyFile in dir, generating
// that file (mode 0600) on first use.
func LoadMasterKey(env, dir string) (*Box, error) {
	key, err := ReadMasterKey(env, dir)
	if errors.Is(err, ErrNoMasterKey) {
		key = make([]byte, 16)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("generate master key: %w", err)
		}
		err = fsutil.WriteFileAtomic(filepath.Join(dir, MasterKeyFile), []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600)
	}
	if err != nil {
		return nil, err
	}
	box, err := New(key)
	if err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	return box, nil
}
