// Package seal encrypts small values at rest with AES-GCM: a fresh random
// nonce per value, stored in front of the ciphertext. The agent's master key
// and a step's key both use it.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
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
