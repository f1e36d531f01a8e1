package transport

import "testing"

// An identity survives PEM and a save over another one.
func TestIdentityPEMRoundTrip(t *testing.T) {
	a, _, err := LoadOrCreateIdentity(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b, err := a.PEM()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseIdentity(b)
	if err != nil || back.Thumbprint != a.Thumbprint {
		t.Fatalf("parsed %v, %v; want thumbprint %s", back, err, a.Thumbprint)
	}
	dir := t.TempDir()
	if _, _, err := LoadOrCreateIdentity(dir); err != nil {
		t.Fatal(err)
	}
	if err := SaveIdentity(dir, a); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadIdentity(dir); err != nil || got.Thumbprint != a.Thumbprint {
		t.Errorf("saved over another: %v, %v", got, err)
	}
	if _, err := ParseIdentity([]byte("not PEM")); err == nil {
		t.Error("garbage parsed as an identity")
	}
}
