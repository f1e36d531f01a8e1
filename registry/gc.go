package registry

import (
	"context"
	"sort"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
)

// GCOptions bound the image cache. Only images the agent pulled are ever
// removed; never one a step holds a lease on, nor one on the pre-pull list.
type GCOptions struct {
	// MinAge: an image used more recently than this stays (default 1h).
	MinAge time.Duration
	// MaxBytes: collect while the agent's images exceed this (0: no limit).
	MaxBytes int64
	// Keep: collect while the agent has more images than this (0: no limit).
	Keep int
}

// collectSoon runs a collection after a pull, outside the pull's path.
func (c *Coordinator) collectSoon() {
	if c.opt.GC.MaxBytes <= 0 && c.opt.GC.Keep <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := c.Collect(ctx); err != nil {
		c.log.Warn("image garbage collection failed", "error", err)
	}
}

// Collect removes the least recently used of the agent's images until the
// cache is within MaxBytes and Keep, skipping images in use, pinned, or used
// within MinAge. It returns the image IDs it removed. Safe to call at any time.
func (c *Coordinator) Collect(ctx context.Context) ([]string, error) {
	minAge := c.opt.GC.MinAge
	if minAge <= 0 {
		minAge = time.Hour
	}
	recs := c.opt.Store.All()
	var total int64
	for _, r := range recs {
		total += r.Size
	}
	count := len(recs)
	over := func() bool {
		return (c.opt.GC.MaxBytes > 0 && total > c.opt.GC.MaxBytes) || (c.opt.GC.Keep > 0 && count > c.opt.GC.Keep)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].LastUsed.Before(recs[j].LastUsed) })
	var removed []string
	for _, r := range recs {
		if !over() {
			break
		}
		if time.Since(r.LastUsed) < minAge || c.InUse(r.ImageID) || c.isPinned(r) {
			continue
		}
		if err := c.remove(ctx, r); err != nil {
			c.log.Info("image not collected", "image_id", r.ImageID, "error", err)
			continue
		}
		total -= r.Size
		count--
		removed = append(removed, r.ImageID)
		c.log.Info("collected image", "image_id", r.ImageID, "refs", r.Refs, "size", HumanBytes(r.Size), "last_used", r.LastUsed)
	}
	return removed, nil
}

func (c *Coordinator) isPinned(r ImageRecord) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ref := range r.Refs {
		if c.pinned[ref] {
			return true
		}
	}
	return false
}

// remove untags the agent's references of r; the engine deletes the image
// with its last tag. A container still using it makes the engine refuse,
// which is the last guard against removing an image in use.
func (c *Coordinator) remove(ctx context.Context, r ImageRecord) error {
	for _, ref := range r.Refs {
		inspect, err := c.opt.Engine.ImageInspect(ctx, ref)
		if errdefs.IsNotFound(err) || (err == nil && inspect.ID != r.ImageID) {
			continue // the tag moved on to another image: not ours to remove
		}
		if err != nil {
			return err
		}
		if _, err := c.opt.Engine.ImageRemove(ctx, ref, image.RemoveOptions{PruneChildren: true}); err != nil && !errdefs.IsNotFound(err) {
			return err
		}
	}
	return c.opt.Store.Forget(r.ImageID)
}

// Cached lists the agent's images, most recently used first.
func (c *Coordinator) Cached() []ImageRecord {
	recs := c.opt.Store.All()
	sort.Slice(recs, func(i, j int) bool { return recs[i].LastUsed.After(recs[j].LastUsed) })
	return recs
}

// IsPinned reports whether ref is on the pre-pull list.
func (c *Coordinator) IsPinned(ref string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pinned[ref]
}
