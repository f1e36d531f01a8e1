package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/image"
	dockerregistry "github.com/docker/docker/api/types/registry"

	"stevedore/registry"
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
	return [...]string{"default", "always", "if-not-present", "never"}[p]
}

// ParsePullPolicy reads "always", "if-not-present", "never" or "" (default).
func ParsePullPolicy(s string) (PullPolicy, error) {
	switch s {
	case "", "default":
		return PullDefault, nil
	case "always":
		return PullAlways, nil
	case "if-not-present", "ifnotpresent", "missing":
		return PullIfNotPresent, nil
	case "never":
		return PullNever, nil
	}
	return 0, fmt.Errorf("pull policy %q: want always, if-not-present or never", s)
}

// Resolve turns PullDefault into the policy for ref, as Kubernetes does:
// a moving tag is pulled every time, a fixed one once.
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
		return nil, fmt.Errorf("%w %q: %w", registry.ErrInvalidReference, s, err)
	}
	return reference.TagNameOnly(named), nil
}

// ensureImage makes the image available by policy, pulling with progress.
func (d *Docker) ensureImage(ctx context.Context, c *ContainerSpec, logf LogFunc) error {
	ref, err := ParseImage(c.Image)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPullFailed, err)
	}
	policy := c.Policy.Resolve(ref)
	_, inspectErr := d.api.ImageInspect(ctx, c.Image)
	present := inspectErr == nil
	switch {
	case policy == PullNever && !present:
		return fmt.Errorf("%w: image %s is not on this worker and the pull policy is never", ErrPullFailed, c.Image)
	case policy == PullNever, policy == PullIfNotPresent && present:
		logf("using image %s already on this worker (pull policy %s)", c.Image, policy)
		return nil
	}
	return d.pull(ctx, ref, c, logf)
}

func (d *Docker) pull(ctx context.Context, ref reference.Named, c *ContainerSpec, logf LogFunc) error {
	opts := image.PullOptions{Platform: c.Platform}
	if !c.Credentials.Anonymous() {
		auth, err := dockerregistry.EncodeAuthConfig(dockerregistry.AuthConfig{
			Username: c.Credentials.Username, Password: c.Credentials.Password,
			IdentityToken: c.Credentials.IdentityToken, ServerAddress: reference.Domain(ref),
		})
		if err != nil {
			return fmt.Errorf("%w: encode credentials: %w", ErrPullFailed, err)
		}
		opts.RegistryAuth = auth
	}
	logf("pulling image %s", c.Image)
	start := time.Now()
	rc, err := d.api.ImagePull(ctx, ref.String(), opts)
	if err == nil {
		err = readPullProgress(rc, c.Image, logf)
		rc.Close()
	}
	if err != nil {
		return d.pullError(ctx, ref, c, err)
	}
	logf("pulled image %s in %s", c.Image, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// pullError says why a pull failed. The engine gives no class for a refused
// pull, so the registry is asked directly with the same credentials.
func (d *Docker) pullError(ctx context.Context, ref reference.Named, c *ContainerSpec, err error) error {
	source := c.CredentialsSource
	if source == "" {
		source = "no credentials"
	}
	actx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, aerr := registry.Access(actx, ref.String(), c.Credentials); aerr != nil &&
		(errors.Is(aerr, registry.ErrUnauthorized) || errors.Is(aerr, registry.ErrNotFound)) {
		return fmt.Errorf("%w: image %s (with %s): %w", ErrPullFailed, c.Image, source, aerr)
	}
	return fmt.Errorf("%w: image %s (with %s): %w", ErrPullFailed, c.Image, source, err)
}

// pullMessage is one line of the engine's pull progress stream.
type pullMessage struct {
	ID             string `json:"id"`
	Status         string `json:"status"`
	ProgressDetail struct {
		Current int64 `json:"current"`
		Total   int64 `json:"total"`
	} `json:"progressDetail"`
	Error       string `json:"error"`
	ErrorDetail *struct {
		Message string `json:"message"`
	} `json:"errorDetail"`
}

// progressEvery throttles progress lines in the step log.
const progressEvery = 2 * time.Second

// readPullProgress consumes the pull stream, logging throttled progress, and
// returns the error the engine reports inside the stream, if any.
func readPullProgress(r io.Reader, img string, logf LogFunc) error {
	type layer struct{ current, total int64 }
	layers := map[string]*layer{}
	done := map[string]bool{}
	var last time.Time
	dec := json.NewDecoder(r)
	for {
		var m pullMessage
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read pull progress: %w", err)
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
		if m.ID == "" || strings.HasPrefix(m.Status, "Pulling from") {
			continue
		}
		l := layers[m.ID]
		if l == nil {
			l = &layer{}
			layers[m.ID] = l
		}
		switch m.Status {
		case "Downloading":
			l.current, l.total = m.ProgressDetail.Current, m.ProgressDetail.Total
		case "Pull complete", "Already exists":
			done[m.ID] = true
			if l.total > 0 {
				l.current = l.total
			}
		}
		if time.Since(last) < progressEvery {
			continue
		}
		last = time.Now()
		var cur, tot int64
		for _, l := range layers {
			cur += l.current
			tot += l.total
		}
		logf("pulling %s: %d/%d layers, %s of %s", img, len(done), len(layers), humanBytes(cur), humanBytes(tot))
	}
}

func humanBytes(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}
