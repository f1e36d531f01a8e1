package registry

import (
	"context"
	"time"

	"github.com/hashicorp/go-hclog"
)

// PrepullImage is an image to keep on the worker, with its credentials.
type PrepullImage struct {
	Image       string
	Credentials Credentials
	Source      string
}

// Refresh pulls each image that is missing or whose tag now names another
// digest in its registry (one manifest HEAD per image when nothing moved).
// It returns after one pass; the error of each image goes to log.
func (c *Coordinator) Refresh(ctx context.Context, images []PrepullImage, log hclog.Logger) {
	for _, img := range images {
		ref, err := ParseImage(img.Image)
		if err != nil {
			log.Warn("pre-pull image invalid", "image_ref", img.Image, "error", err)
			continue
		}
		policy := PullIfNotPresent
		if inspect, err := c.opt.Engine.ImageInspect(ctx, ref.String()); err == nil {
			digest, aerr := Access(ctx, ref.String(), img.Credentials)
			if aerr != nil {
				log.Warn("pre-pull: cannot check the registry for a newer image", "image_ref", ref.String(), "error", aerr)
				continue
			}
			if hasDigest(inspect.RepoDigests, ref.Name(), digest) {
				continue
			}
			log.Info("pre-pull: the tag moved; pulling", "image_ref", ref.String(), "digest", digest)
			policy = PullAlways
		}
		lease, err := c.Ensure(ctx, Request{Image: img.Image, Credentials: img.Credentials, Source: img.Source, Policy: policy})
		if err != nil {
			log.Warn("pre-pull failed", "image_ref", ref.String(), "error", err)
			continue
		}
		lease.Release()
	}
}

func hasDigest(repoDigests []string, name, digest string) bool {
	for _, d := range repoDigests {
		if d == name+"@"+digest {
			return true
		}
	}
	return false
}

// RunPrepull pins images, refreshes them now and then every interval, and
// collects garbage every gcInterval, until ctx ends.
func (c *Coordinator) RunPrepull(ctx context.Context, images []PrepullImage, interval, gcInterval time.Duration) {
	refs := make([]string, len(images))
	for i, img := range images {
		refs[i] = img.Image
	}
	c.SetPinned(refs)
	log := c.log.Named("prepull")
	c.Refresh(ctx, images, log)
	var refresh, gc <-chan time.Time
	if interval > 0 && len(images) > 0 {
		t := time.NewTicker(interval)
		defer t.Stop()
		refresh = t.C
	}
	if gcInterval > 0 {
		t := time.NewTicker(gcInterval)
		defer t.Stop()
		gc = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-refresh:
			c.Refresh(ctx, images, log)
		case <-gc:
			if _, err := c.Collect(ctx); err != nil {
				log.Warn("image garbage collection failed", "error", err)
			}
		}
	}
}
