// Package registry is how stevedore gets images: feeds (registries and their
// credentials), the image coordinator (shared pulls, pull policies, progress,
// pre-pull) and garbage collection. It knows nothing of steps.
package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Classes of registry errors. Test with errors.Is.
var (
	// ErrUnauthorized: the credentials are missing or wrong, or do not grant
	// read access to the repository. Permanent: retrying will not help.
	ErrUnauthorized = errors.New("registry refused the credentials")
	// ErrNotFound: no such repository or tag. Permanent.
	ErrNotFound = errors.New("image not found in registry")
	// ErrInvalidReference: the reference cannot be parsed. Permanent.
	ErrInvalidReference = errors.New("invalid image reference")
)

// Credentials for one registry. The zero value is anonymous.
type Credentials struct {
	Username      string
	Password      string
	IdentityToken string
}

// Anonymous reports whether c carries no credentials.
func (c Credentials) Anonymous() bool { return c == Credentials{} }

func (c Credentials) authenticator() authn.Authenticator {
	if c.Anonymous() {
		return authn.Anonymous
	}
	return authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken})
}

// Access asks the registry, with a single manifest HEAD, whether creds may
// read ref, and returns the manifest digest it resolves to. Errors wrap
// ErrUnauthorized, ErrNotFound or ErrInvalidReference where they are that;
// anything else (network, 5xx) may be transient.
//
// The engine reports a refused pull without a class (Engine 20.10 answers 500
// with the registry's words), so this is how stevedore tells an
// authentication failure from an outage without reading error text.
func Access(ctx context.Context, ref string, creds Credentials) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("%w %q: %w", ErrInvalidReference, ref, err)
	}
	rt := &retryAfterTransport{base: remote.DefaultTransport}
	// One try: the coordinator owns retries and their backoff.
	desc, err := remote.Head(r, remote.WithContext(ctx), remote.WithAuth(creds.authenticator()), remote.WithTransport(rt),
		remote.WithRetryBackoff(remote.Backoff{Steps: 1}))
	if err != nil {
		return "", classify(r, err, rt.after())
	}
	return desc.Digest.String(), nil
}

// RateLimitedError is a registry's 429: transient, to be retried no sooner
// than RetryAfter (zero when the registry did not say).
type RateLimitedError struct {
	Registry   string
	RetryAfter time.Duration
	Err        error
}

func (e *RateLimitedError) Error() string {
	if e.RetryAfter > 0 {
		return fmt.Sprintf("registry %s is rate limiting (retry after %s): %v", e.Registry, e.RetryAfter, e.Err)
	}
	return fmt.Sprintf("registry %s is rate limiting: %v", e.Registry, e.Err)
}

func (e *RateLimitedError) Unwrap() error { return e.Err }

// retryAfterTransport remembers the Retry-After of a 429 answer, which the
// registry client's errors do not carry.
type retryAfterTransport struct {
	base http.RoundTripper
	mu   sync.Mutex
	wait time.Duration
}

func (t *retryAfterTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusTooManyRequests {
		if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			t.mu.Lock()
			t.wait = d
			t.mu.Unlock()
		}
	}
	return resp, err
}

func (t *retryAfterTransport) after() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.wait
}

// parseRetryAfter reads delay-seconds or an HTTP date (RFC 9110).
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.Atoi(v); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second, true
	}
	if at, err := http.ParseTime(v); err == nil {
		return max(at.Sub(now), 0), true
	}
	return 0, false
}

func classify(r name.Reference, err error, retryAfter time.Duration) error {
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch terr.StatusCode {
		case http.StatusTooManyRequests:
			return &RateLimitedError{Registry: r.Context().RegistryStr(), RetryAfter: retryAfter, Err: err}
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w for %s at %s: %w", ErrUnauthorized, r, r.Context().RegistryStr(), err)
		case http.StatusNotFound:
			return fmt.Errorf("%w: %s: %w", ErrNotFound, r, err)
		}
	}
	return fmt.Errorf("registry %s: %s: %w", r.Context().RegistryStr(), r, err)
}
