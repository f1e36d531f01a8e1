package registry_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"stevedore/internal/testenv"
	"stevedore/registry"
)

// realCoordinator is a coordinator over the real engine with its own store.
func realCoordinator(t *testing.T, mod func(*registry.Options)) *registry.Coordinator {
	t.Helper()
	cli, _ := testenv.Docker(t)
	testenv.RequireRegistry(t)
	store, err := registry.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	opt := registry.Options{Engine: cli, Store: store, Backoff: 100 * time.Millisecond}
	if mod != nil {
		mod(&opt)
	}
	return registry.NewCoordinator(opt)
}

// Refusals are permanent and fast: no retries, a message naming the image
// and where the credentials came from.
func TestEnsureFailsFastAndClearly(t *testing.T) {
	c := realCoordinator(t, func(o *registry.Options) { o.Retries = 5; o.Backoff = 5 * time.Second })
	tests := []struct {
		name    string
		image   string
		creds   registry.Credentials
		source  string
		wantErr error
		want    []string
	}{
		{"wrong password", testenv.Bookworm, registry.Credentials{Username: testenv.RegistryUser, Password: "wrong"}, "feed acme",
			registry.ErrUnauthorized, []string{"fixtures/bookworm", "feed acme"}},
		{"missing image", testenv.Registry + "/fixtures/no-such-image:1", fixtureCreds, "inline credentials",
			registry.ErrNotFound, []string{"no-such-image"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, err := c.Ensure(context.Background(), registry.Request{Image: tt.image, Credentials: tt.creds, Source: tt.source, Policy: registry.PullAlways})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q does not mention %q", err, w)
				}
			}
			if took := time.Since(start); took > 4500*time.Millisecond { // a retry would wait 5 s first
				t.Errorf("took %s: a refusal must not be retried", took)
			}
		})
	}
}

// One tenant pulls a private image; another, whose credentials the
// registry refuses, cannot use the cached copy by naming it.
func TestCachedPrivateImageNeedsTheStepsOwnCredentials(t *testing.T) {
	c := realCoordinator(t, nil)
	ctx := context.Background()
	l, err := c.Ensure(ctx, registry.Request{Image: testenv.Static, Credentials: fixtureCreds, Policy: registry.PullAlways})
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	for _, other := range []registry.Credentials{{}, {Username: "tenant-b", Password: "theirs"}} {
		_, err := c.Ensure(ctx, registry.Request{Image: testenv.Static, Credentials: other, Source: "tenant b", Policy: registry.PullIfNotPresent})
		if !errors.Is(err, registry.ErrUnauthorized) || !strings.Contains(err.Error(), "tenant b") {
			t.Errorf("credentials %q: err %v, want ErrUnauthorized naming them", other.Username, err)
		}
	}
	// The owner still can, without a pull.
	l, err = c.Ensure(ctx, registry.Request{Image: testenv.Static, Credentials: fixtureCreds, Policy: registry.PullIfNotPresent})
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
}
