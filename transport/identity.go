// Package transport is how a stevedore server and agent reach each other:
// their identities, SHA-256 thumbprint pinning, the listening server and the
// polling (reverse) connection.
package transport

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"stevedore/internal/fsutil"
)

// The identity's files in a state directory.
const (
	CertFile = "identity.crt"
	KeyFile  = "identity.key"
	lockFile = "identity.lock"
)

// certValidity is long on purpose: trust comes from the pinned thumbprint,
// not from expiry, and a certificate that expires would silently break every
// pin on it.
const certValidity = 100 * 365 * 24 * time.Hour

// Identity is one side's self-signed certificate and key.
type Identity struct {
	Certificate tls.Certificate
	// Thumbprint is the SHA-256 of the DER certificate, 64 lowercase hex characters.
	Thumbprint string
}

// Thumbprint returns the SHA-256 of a DER certificate as 64 lowercase hex characters.
func Thumbprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// LoadOrCreateIdentity loads the identity in dir, creating dir and a new
// identity (ECDSA P-256, self-signed) when there is none. Safe to call from
// several processes at once: creation is serialised by a lock file, so all of
// them end up with the same identity. created reports whether this call made it.
func LoadOrCreateIdentity(dir string) (id *Identity, created bool, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("state dir: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("identity lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, false, fmt.Errorf("identity lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		id, err := LoadIdentity(dir)
		return id, false, err
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		if err := createIdentity(certPath, keyPath); err != nil {
			return nil, false, err
		}
		id, err := LoadIdentity(dir)
		return id, true, err
	case certErr != nil && !errors.Is(certErr, fs.ErrNotExist):
		return nil, false, fmt.Errorf("identity certificate: %w", certErr)
	case keyErr != nil && !errors.Is(keyErr, fs.ErrNotExist):
		return nil, false, fmt.Errorf("identity key: %w", keyErr)
	default:
		// Half an identity: making a new one would change the thumbprint and
		// break every peer that pinned the old one, so say so instead.
		return nil, false, fmt.Errorf("state dir %s holds only one of %s and %s: restore the other, or remove both to create a new identity (peers must then trust its new thumbprint)", dir, CertFile, KeyFile)
	}
}

// LoadIdentity loads an existing identity from dir.
func LoadIdentity(dir string) (*Identity, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("load identity from %s: %w", dir, err)
	}
	return &Identity{Certificate: cert, Thumbprint: Thumbprint(cert.Certificate[0])}, nil
}

func createIdentity(certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return fmt.Errorf("serial number: %w", err)
	}
	host, _ := os.Hostname()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "stevedore " + host},
		NotBefore:    now.Add(-time.Hour), // tolerate clock skew between peers
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("create certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key: %w", err)
	}
	// The key first: a certificate is only ever present with its key.
	if err := fsutil.WriteFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// PEM returns the identity as PEM: its certificate, then its key.
func (id *Identity) PEM() ([]byte, error) {
	cert, key, err := id.pemParts()
	return append(cert, key...), err
}

func (id *Identity) pemParts() (cert, key []byte, err error) {
	der, err := x509.MarshalPKCS8PrivateKey(id.Certificate.PrivateKey)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: id.Certificate.Certificate[0]}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseIdentity reads an identity from PEM, as PEM writes it.
func ParseIdentity(b []byte) (*Identity, error) {
	cert, err := tls.X509KeyPair(b, b)
	if err != nil {
		return nil, fmt.Errorf("parse identity: %w", err)
	}
	return &Identity{Certificate: cert, Thumbprint: Thumbprint(cert.Certificate[0])}, nil
}

// SaveIdentity writes id into dir, replacing the identity there.
func SaveIdentity(dir string, id *Identity) error {
	cert, key, err := id.pemParts()
	if err != nil {
		return err
	}
	// The key first: a certificate is only ever present with its key.
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, KeyFile), key, 0o600); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(dir, CertFile), cert, 0o644)
}
