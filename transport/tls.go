package transport

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// ErrUntrusted is returned by the handshake when the peer's certificate
// thumbprint is not in the trust list.
var ErrUntrusted = errors.New("peer certificate is not trusted")

var thumbprintRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ParseThumbprint normalises a thumbprint given by an operator: case and
// colons (as openssl prints it) do not matter; anything but 32 bytes of hex
// is an error.
func ParseThumbprint(s string) (string, error) {
	t := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
	if !thumbprintRE.MatchString(t) {
		return "", fmt.Errorf("thumbprint %q: want the SHA-256 of a certificate as 64 hex characters (`stevedore cert` prints it)", s)
	}
	return t, nil
}

// TrustList is the set of peer thumbprints a side accepts. Safe for
// concurrent use, so it can change while connections are accepted.
type TrustList struct {
	mu     sync.RWMutex
	prints map[string]bool
}

// NewTrustList parses and returns the thumbprints as a trust list.
func NewTrustList(thumbprints ...string) (*TrustList, error) {
	t := &TrustList{prints: map[string]bool{}}
	for _, s := range thumbprints {
		if err := t.Add(s); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Add trusts one more thumbprint.
func (t *TrustList) Add(thumbprint string) error {
	p, err := ParseThumbprint(thumbprint)
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.prints[p] = true
	t.mu.Unlock()
	return nil
}

// Remove stops trusting a thumbprint; connections already made stay up
// until their owner closes them.
func (t *TrustList) Remove(thumbprint string) {
	t.mu.Lock()
	delete(t.prints, thumbprint)
	t.mu.Unlock()
}

// Trusts reports whether thumbprint is in the list.
func (t *TrustList) Trusts(thumbprint string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.prints[thumbprint]
}

// List returns the trusted thumbprints, sorted.
func (t *TrustList) List() []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]string, 0, len(t.prints))
	for p := range t.prints {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// verifyPinned checks the peer's leaf certificate against the trust list.
// There is no CA chain: the pinned thumbprint is the whole of the trust.
func verifyPinned(trust *TrustList, rawCerts [][]byte) (string, error) {
	if len(rawCerts) == 0 {
		return "", fmt.Errorf("%w: the peer sent no certificate", ErrUntrusted)
	}
	// Parse, so a malformed certificate is refused even if its bytes were pinned.
	if _, err := x509.ParseCertificate(rawCerts[0]); err != nil {
		return "", fmt.Errorf("%w: %w", ErrUntrusted, err)
	}
	tp := Thumbprint(rawCerts[0])
	if !trust.Trusts(tp) {
		return tp, fmt.Errorf("%w: thumbprint %s", ErrUntrusted, tp)
	}
	return tp, nil
}

// ServerTLSConfig is the TLS 1.3 configuration of the side that accepts
// connections: it demands a client certificate and accepts only pinned ones,
// logging each refusal with the peer's address and thumbprint.
func ServerTLSConfig(id *Identity, trust *TrustList, log hclog.Logger) *tls.Config {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	base := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Certificate},
		ClientAuth:   tls.RequireAnyClientCert,
		NextProtos:   []string{"h2"},
	}
	base.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		cfg := base.Clone()
		cfg.GetConfigForClient = nil
		remote := addrString(hello.Conn)
		cfg.VerifyPeerCertificate = func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			tp, err := verifyPinned(trust, rawCerts)
			if err != nil {
				log.Warn("refused an untrusted client", "remote", remote, "thumbprint", tp, "error", err)
			}
			return err
		}
		return cfg, nil
	}
	return base
}

// ClientTLSConfig is the TLS 1.3 configuration of the side that dials: it
// presents id and accepts the server only if its thumbprint is pinned.
func ClientTLSConfig(id *Identity, trust *TrustList) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Certificate},
		// The chain is not verified against any CA; VerifyPeerCertificate
		// pins the exact certificate instead, which is stricter.
		InsecureSkipVerify: true,
		NextProtos:         []string{"h2"},
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			_, err := verifyPinned(trust, rawCerts)
			return err
		},
	}
}

// PinnedTLSConfig is a TLS client configuration, without a client
// certificate, that accepts the server only if its thumbprint is pinned:
// for HTTPS to a stevedore server that presents its own identity.
func PinnedTLSConfig(trust *TrustList) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // pinned below, stricter than a CA chain
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			_, err := verifyPinned(trust, rawCerts)
			return err
		},
	}
}

func addrString(c net.Conn) string {
	if c == nil || c.RemoteAddr() == nil {
		return ""
	}
	return c.RemoteAddr().String()
}
