package executor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"stevedore/registry"
)

// progressEvery throttles pull progress lines in a step's log.
const progressEvery = 2 * time.Second

// ensureImage has the coordinator make the image available by policy,
// logging throttled progress, and keeps the lease until Remove.
func (d *Docker) ensureImage(ctx context.Context, spec *Spec, logf LogFunc) error {
	c := spec.Container
	var mu sync.Mutex
	var last time.Time
	progress := func(p registry.Progress) {
		mu.Lock()
		defer mu.Unlock()
		if p.Message == "" && time.Since(last) < progressEvery {
			return
		}
		last = time.Now()
		logf("%s", p)
	}
	start := time.Now()
	lease, err := d.images.Ensure(ctx, registry.Request{
		Image: c.Image, Credentials: c.Credentials, Source: c.CredentialsSource,
		Policy: c.Policy, Platform: c.Platform, Progress: progress,
	})
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrPullFailed, err)
	}
	if took := time.Since(start); took > time.Second {
		logf("image %s ready in %s", c.Image, took.Round(100*time.Millisecond))
	}
	d.mu.Lock()
	if old := d.leases[spec.Ticket]; old != nil {
		old.Release()
	}
	d.leases[spec.Ticket] = lease
	d.mu.Unlock()
	return nil
}

func (d *Docker) releaseImage(ticket string) {
	d.mu.Lock()
	lease := d.leases[ticket]
	delete(d.leases, ticket)
	d.mu.Unlock()
	lease.Release()
}
