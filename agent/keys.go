package agent

import (
	"fmt"

	"stevedore/internal/seal"
)

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

// loadMasterKey returns the agent's sealer (seal.LoadMasterKey).
func loadMasterKey(env, stateDir string) (*sealer, error) {
	box, err := seal.LoadMasterKey(env, stateDir)
	if err != nil {
		return nil, err
	}
	return &sealer{box}, nil
}
