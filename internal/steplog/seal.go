package steplog

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
)

// errKeySize is wrapped when a step key is not 32 bytes (AES-256).
var errKeySize = errors.New("steplog: step key must be 32 bytes")

// SealValue encrypts a sensitive output variable's value with the step's key
// (AES-256-GCM, a random nonce) and returns base64(nonce || ciphertext), so
// that output.log never holds the plaintext; the agent, which keeps the key,
// opens it with OpenValue.
func SealValue(key []byte, plaintext string) (string, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("steplog: seal: nonce: %w", err)
	}
	sealed := aead.Seal(nonce, nonce, []byte(plaintext), nil)
	return base64.StdEncoding.EncodeToString(sealed), nil
}

// OpenValue decrypts a value sealed by SealValue with the same key. It fails
// when the key is wrong or the value was altered.
func OpenValue(key []byte, sealed string) (string, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return "", err
	}
	b, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil {
		return "", fmt.Errorf("steplog: open: %w", err)
	}
	if len(b) < aead.NonceSize()+aead.Overhead() {
		return "", errors.New("steplog: open: sealed value too short")
	}
	plain, err := aead.Open(nil, b[:aead.NonceSize()], b[aead.NonceSize():], nil)
	if err != nil {
		return "", fmt.Errorf("steplog: open: %w", err)
	}
	return string(plain), nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("%w, not %d", errKeySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("steplog: %w", err)
	}
	return cipher.NewGCM(block)
}
