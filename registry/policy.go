package registry

import (
	"fmt"

	"github.com/distribution/reference"
)

// PullPolicy says when an image is pulled.
type PullPolicy int

const (
	// PullDefault is PullAlways for ":latest" or no tag, PullIfNotPresent otherwise.
	PullDefault PullPolicy = iota
	PullAlways
	PullIfNotPresent
	PullNever
)

func (p PullPolicy) String() string {
	switch p {
	case PullAlways:
		return "always"
	case PullIfNotPresent:
		return "if-not-present"
	case PullNever:
		return "never"
	}
	return "default"
}

// ParsePullPolicy reads "always", "if-not-present", "never" or "" (default).
func ParsePullPolicy(s string) (PullPolicy, error) {
	switch s {
	case "", "default":
		return PullDefault, nil
	case "always":
		return PullAlways, nil
	case "if-not-present":
		return PullIfNotPresent, nil
	case "never":
		return PullNever, nil
	}
	return 0, fmt.Errorf("pull policy %q: want always, if-not-present or never", s)
}

// Resolve turns PullDefault into the policy for ref, as Kubernetes does: a
// moving tag is pulled every time, a fixed one or a digest once.
func (p PullPolicy) Resolve(ref reference.Named) PullPolicy {
	if p != PullDefault {
		return p
	}
	if _, ok := ref.(reference.Digested); ok {
		return PullIfNotPresent
	}
	if t, ok := ref.(reference.Tagged); ok && t.Tag() != "latest" {
		return PullIfNotPresent
	}
	return PullAlways
}

// ParseImage normalises an image reference as `docker pull` does
// ("debian" → "docker.io/library/debian:latest").
func ParseImage(s string) (reference.Named, error) {
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %w", ErrInvalidReference, s, err)
	}
	return reference.TagNameOnly(named), nil
}
