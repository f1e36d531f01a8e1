package transport

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

var thumbprintLine = regexp.MustCompile(`^[0-9a-f]{64}$`)

func TestLoadOrCreateIdentityIsStable(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	first, created, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Error("first call: created = false, want true")
	}
	if !thumbprintLine.MatchString(first.Thumbprint) {
		t.Errorf("thumbprint %q is not 64 lowercase hex characters", first.Thumbprint)
	}
	again, created, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if created || again.Thumbprint != first.Thumbprint {
		t.Errorf("second call: created=%v thumbprint %s, want false and %s", created, again.Thumbprint, first.Thumbprint)
	}
	st, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
}

// The thumbprint is what operators compare by hand, so it must be exactly
// what openssl prints for the certificate.
func TestThumbprintMatchesOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	id, _, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", filepath.Join(dir, CertFile)).Output()
	if err != nil {
		t.Fatal(err)
	}
	// "sha256 Fingerprint=AB:CD:..." (the prefix's case differs between versions)
	_, fp, ok := strings.Cut(strings.TrimSpace(string(out)), "=")
	if !ok {
		t.Fatalf("unexpected openssl output %q", out)
	}
	want := strings.ToLower(strings.ReplaceAll(fp, ":", ""))
	if id.Thumbprint != want {
		t.Errorf("thumbprint %s, openssl says %s", id.Thumbprint, want)
	}
}

func TestLoadOrCreateIdentityConcurrent(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	prints := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			id, _, err := LoadOrCreateIdentity(dir)
			if err != nil {
				t.Error(err)
				return
			}
			prints[i] = id.Thumbprint
		})
	}
	wg.Wait()
	for i := 1; i < n; i++ {
		if prints[i] != prints[0] {
			t.Fatalf("concurrent creators disagree: %v", prints)
		}
	}
}

func TestLoadOrCreateIdentityRefusesHalfAnIdentity(t *testing.T) {
	for _, remove := range []string{CertFile, KeyFile} {
		t.Run("without "+remove, func(t *testing.T) {
			dir := t.TempDir()
			if _, _, err := LoadOrCreateIdentity(dir); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(filepath.Join(dir, remove)); err != nil {
				t.Fatal(err)
			}
			if _, _, err := LoadOrCreateIdentity(dir); err == nil {
				t.Fatal("want an error for half an identity, got a new one")
			}
			if _, err := os.Stat(filepath.Join(dir, remove)); err == nil {
				t.Errorf("%s was recreated; the thumbprint would silently change", remove)
			}
		})
	}
}
