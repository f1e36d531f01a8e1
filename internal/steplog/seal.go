package steplog

import (
	"encoding/base64"
	"errors"
	"fmt"

	"stevedore/internal/seal"
)

// errKeySize is wrapped when a step key is not 32 bytes (AES-256).
var errKeySize = errors.New("steplog: step key must be 32 bytes")

// SealValue encrypts a sensitive output variable's value with the step's key
// (AES-256-GCM, a random nonce) and returns base64(nonce || ciphertext), so
// that output.log never holds the plaintext; the agent, which keeps the key,
// opens it with OpenValue.
func SealValue(key []byte, plaintext string) (string, error) {
	box, err := newBox(key)
	if err != nil {
		return "", err
	}
	sealed, err := box.Seal([]byte(plaintext))
	if err != nil {
		return "", fmt.Errorf("steplog: %w", err)
	}
	return base64.StdEncoding.EncodeToString(sealed), nil
}

// OpenValue decrypts a value sealed by SealValue with the same key. It fails
// when the key is wrong or the value was altered.
func OpenValue(key []byte, sealed string) (string, error) {
	box, err := newBox(key)
	if err != nil {
		return "", err
	}
	b, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil {
		return "", fmt.Errorf("steplog: open: %w", err)
	}
	plain, err := box.Open(b)
	if err != nil {
		return "", fmt.Errorf("steplog: open: %w", err)
	}
	return string(plain), nil
}

func newBox(key []byte) (*seal.Box, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("%w, not %d", errKeySize, len(key))
	}
	return seal.New(key)
}
