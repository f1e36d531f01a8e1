package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sync"
	"time"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/hashicorp/go-hclog"
)

// More classes of Ensure's errors (see access.go for the others).
var (
	// ErrNotAllowed: the image matches none of allowed_images. Permanent.
	ErrNotAllowed = errors.New("image not allowed on this worker")
	// ErrNotPresent: policy never and the image is not on this worker. Permanent.
	ErrNotPresent = errors.New("image not present and the pull policy is never")
	// ErrStalled: a pull made no progress for the stall timeout. Transient.
	ErrStalled = errors.New("pull stalled")
)

// Engine is the part of the Docker client the coordinator uses.
type Engine interface {
	ImagePull(ctx context.Context, ref string, opts image.PullOptions) (io.ReadCloser, error)
	ImageInspect(ctx context.Context, ref string, opts ...client.ImageInspectOption) (image.InspectResponse, error)
	ImageRemove(ctx context.Context, ref string, opts image.RemoveOptions) ([]image.DeleteResponse, error)
}

// Options configure a Coordinator. Zero durations take the defaults.
type Options struct {
	Engine Engine
	Store  *Store
	// AllowedImages are globs (path.Match) over normalised references; empty allows all.
	AllowedImages []string
	// PullTimeout bounds a pull with its retries (default 30m).
	PullTimeout time.Duration
	// StallTimeout cancels an attempt that shows no progress (default 2m).
	StallTimeout time.Duration
	// Retries after a transient failure (default 3; negative: none).
	Retries int
	// Backoff is the first retry's delay, doubled each time with jitter (default 1s).
	Backoff time.Duration
	// AccessTTL is how long a registry's "yes, these credentials may read
	// this image" is trusted for a cached image (default 1h).
	AccessTTL time.Duration
	GC        GCOptions
	Logger    hclog.Logger
	// OnPull, if set, hears of every pull's end (one call however many
	// steps shared it), for metrics: result is success, failed, timeout
	// or cancelled. It must not block.
	OnPull func(result string, took time.Duration)
}

// Coordinator makes images available to steps: one pull per reference and
// credentials however many steps wait for it, pull policies, progress to
// every waiter, stall detection, retries, the tenant check on cached private
// images, and garbage collection of what it pulled.
type Coordinator struct {
	opt Options
	log hclog.Logger

	mu     sync.Mutex
	pulls  map[string]*pull
	inUse  map[string]int // image ID → leases
	pinned map[string]bool
}

// NewCoordinator returns a coordinator; opt.Engine and opt.Store are required.
func NewCoordinator(opt Options) *Coordinator {
	if opt.PullTimeout <= 0 {
		opt.PullTimeout = 30 * time.Minute
	}
	if opt.StallTimeout <= 0 {
		opt.StallTimeout = 2 * time.Minute
	}
	if opt.Retries == 0 {
		opt.Retries = 3
	}
	if opt.Backoff <= 0 {
		opt.Backoff = time.Second
	}
	if opt.AccessTTL <= 0 {
		opt.AccessTTL = time.Hour
	}
	if opt.Logger == nil {
		opt.Logger = hclog.NewNullLogger()
	}
	return &Coordinator{opt: opt, log: opt.Logger.Named("images"), pulls: map[string]*pull{}, inUse: map[string]int{}, pinned: map[string]bool{}}
}

// Request is one step's (or pre-pull's) need for an image.
type Request struct {
	Image       string
	Credentials Credentials
	// Source says where Credentials came from, for messages; never secret.
	Source   string
	Policy   PullPolicy
	Platform string
	// Progress, if set, hears the pull's progress (unthrottled).
	Progress func(Progress)
}

// Lease keeps an image from garbage collection while a step uses it.
type Lease struct {
	ImageID   string
	Reference string
	c         *Coordinator
	once      sync.Once
}

// Release ends the lease. Idempotent.
func (l *Lease) Release() {
	if l == nil {
		return
	}
	l.once.Do(func() { l.c.unlease(l.ImageID) })
}

func (c *Coordinator) unlease(imageID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inUse[imageID]--; c.inUse[imageID] <= 0 {
		delete(c.inUse, imageID)
	}
}

// Allowed reports whether image may run here, by allowed_images.
func (c *Coordinator) Allowed(image string) error { return CheckAllowed(c.opt.AllowedImages, image) }

// CheckAllowed matches image, normalised ("docker.io/library/debian:12")
// and in its familiar form ("debian:12"), against globs (path.Match); an
// empty list allows every image.
func CheckAllowed(globs []string, image string) error {
	if len(globs) == 0 {
		return nil
	}
	ref, err := ParseImage(image)
	if err != nil {
		return err
	}
	for _, g := range globs {
		if ok, _ := path.Match(g, ref.String()); ok {
			return nil
		}
		if ok, _ := path.Match(g, reference.FamiliarString(ref)); ok {
			return nil
		}
	}
	return fmt.Errorf("%w: %s matches none of allowed_images %q", ErrNotAllowed, ref, globs)
}

// SetPinned sets the references that garbage collection keeps (the
// pre-pull list).
func (c *Coordinator) SetPinned(refs []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pinned = map[string]bool{}
	for _, r := range refs {
		if n, err := ParseImage(r); err == nil {
			c.pinned[n.String()] = true
		}
	}
}

// Ensure makes req.Image available by its policy and leases it. Safe to
// call concurrently: callers wanting the same reference with the same
// credentials share one pull; a caller whose ctx ends leaves without
// cancelling the pull for the others, and the pull stops only when every
// waiter has gone.
func (c *Coordinator) Ensure(ctx context.Context, req Request) (*Lease, error) {
	if err := c.Allowed(req.Image); err != nil {
		return nil, err
	}
	ref, err := ParseImage(req.Image)
	if err != nil {
		return nil, err
	}
	policy := req.Policy.Resolve(ref)
	inspect, ierr := c.opt.Engine.ImageInspect(ctx, ref.String())
	present := ierr == nil
	switch {
	case policy == PullNever && !present:
		return nil, fmt.Errorf("%w: %s", ErrNotPresent, ref)
	case present && policy != PullAlways:
		if err := c.mayUse(ctx, ref, inspect.ID, req); err != nil {
			return nil, err
		}
		return c.lease(inspect.ID, ref.String()), nil
	}
	id, err := c.sharedPull(ctx, ref, req)
	if err != nil {
		return nil, err
	}
	return c.leased(id, ref.String()), nil
}

func (c *Coordinator) lease(imageID, ref string) *Lease {
	c.mu.Lock()
	c.inUse[imageID]++
	c.mu.Unlock()
	return c.leased(imageID, ref)
}

// leased wraps a lease already counted in inUse.
func (c *Coordinator) leased(imageID, ref string) *Lease {
	c.opt.Store.Touch(imageID)
	return &Lease{ImageID: imageID, Reference: ref, c: c}
}

// mayUse is the tenant check: a cached image that this agent pulled from a
// private repository is used only with credentials the registry accepts for
// it, so one tenant cannot run another's private image by naming it. Images
// the agent did not pull (put there by the operator) are the worker's own.
func (c *Coordinator) mayUse(ctx context.Context, ref reference.Named, imageID string, req Request) error {
	rec, ok := c.opt.Store.Get(imageID)
	if !ok {
		return nil
	}
	host := reference.Domain(ref)
	key := c.opt.Store.credentialKey(host, req.Credentials)
	if t, ok := rec.Authorized[key]; ok && time.Since(t) < c.opt.AccessTTL {
		return nil
	}
	anon := c.opt.Store.credentialKey(host, Credentials{})
	if t, ok := rec.Authorized[anon]; ok && time.Since(t) < c.opt.AccessTTL {
		return nil // public: anyone may read it
	}
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := Access(actx, ref.String(), req.Credentials)
	switch {
	case err == nil:
		c.opt.Store.Authorize(imageID, key)
		return nil
	case errors.Is(err, ErrUnauthorized), errors.Is(err, ErrNotFound):
		return fmt.Errorf("%w: %s is on this worker, but the registry does not let %s read it", ErrUnauthorized, ref, sourceOr(req.Source))
	}
	return fmt.Errorf("%s is on this worker, but the registry could not confirm that %s may read it: %w", ref, sourceOr(req.Source), err)
}

func sourceOr(s string) string {
	if s == "" {
		return "no credentials"
	}
	return s
}

// InUse reports whether imageID is leased.
func (c *Coordinator) InUse(imageID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inUse[imageID] > 0
}
