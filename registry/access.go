// Package registry is how stevedore gets images: feeds (registries and their
// credentials), the image coordinator (shared pulls, pull policies, progress,
// pre-pull) and garbage collection. It knows nothing of steps.
package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"

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
	desc, err := remote.Head(r, remote.WithContext(ctx), remote.WithAuth(creds.authenticator()))
	if err != nil {
		return "", classify(r, err)
	}
	return desc.Digest.String(), nil
}

func classify(r name.Reference, err error) error {
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch terr.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w for %s at %s: %w", ErrUnauthorized, r, r.Context().RegistryStr(), err)
		case http.StatusNotFound:
			return fmt.Errorf("%w: %s: %w", ErrNotFound, r, err)
		}
	}
	return fmt.Errorf("registry %s: %s: %w", r.Context().RegistryStr(), r, err)
}
