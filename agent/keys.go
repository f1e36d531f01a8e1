package agent

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"stevedore/internal/fsutil"
	"stevedore/internal/seal"
)

// masterKeyFile holds a generated master key when MASTER_KEY is not set.
const masterKeyFile = "master.key"

// sealer encrypts sensitive values at rest with the agent's master key.
type sealer struct{ *seal.Box }

func (s *sealer) seal(plain []byte) ([]byte, error) { return s.Seal(plain) }

func (s *sealer) open(sealed []byte) ([]byte, error) {
	plain, err := s.Open(sealed)
	if err != nil {
		return nil, fmt.Errorf("decrypt with the master key (was MASTER_KEY changed?): %w", err)
	}
	return plain, nil
}

// loadMasterKey returns the key from env (base64 of 16 bytes, as MASTER_KEY
// is given) or from the key file in stateDir, generating that file (0600)
// on first use.
func loadMasterKey(env, stateDir string) (*sealer, error) {
	var key []byte
	if env != "" {
		k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(env))
		if err != nil || (len(k) != 16 && len(k) != 32) {
			return nil, errors.New("MASTER_KEY: want the base64 of 16 random bytes (`head -c16 /dev/urandom | base64`)")
		}
		key = k
	} else {
		path := filepath.Join(stateDir, masterKeyFile)
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			k, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
			if derr != nil || len(k) != 16 {
				return nil, fmt.Errorf("%s: not the base64 of 16 bytes", path)
			}
			key = k
		case errors.Is(err, fs.ErrNotExist):
			key = make([]byte, 16)
			if _, err := rand.Read(key); err != nil {
				return nil, fmt.Errorf("generate master key: %w", err)
			}
			if err := fsutil.WriteFileAtomic(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("master key: %w", err)
		}
	}
	box, err := seal.New(key)
	if err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	return &sealer{box}, nil
}
