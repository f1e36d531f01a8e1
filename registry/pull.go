package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/image"
	dockerregistry "github.com/docker/docker/api/types/registry"
)

// Progress of a pull.
type Progress struct {
	Image       string
	LayersDone  int
	LayersTotal int
	BytesDone   int64
	BytesTotal  int64
	Attempt     int
	// ETA estimates the time left from the rate so far; zero when unknown.
	ETA time.Duration
	// Message is a human line for anything that is not byte progress
	// ("retrying in 2s: …").
	Message string
}

// String is how progress reads in a step's log.
func (p Progress) String() string {
	if p.Message != "" {
		return fmt.Sprintf("pulling %s: %s", p.Image, p.Message)
	}
	line := fmt.Sprintf("pulling %s: %d/%d layers, %s of %s", p.Image, p.LayersDone, p.LayersTotal, HumanBytes(p.BytesDone), HumanBytes(p.BytesTotal))
	if p.ETA > 0 {
		line += fmt.Sprintf(", about %s left", p.ETA.Round(time.Second))
	}
	return line
}

// pull is one shared pull of a reference with one set of credentials.
type pull struct {
	key    string
	ctx    context.Context
	cancel context.CancelFunc

	// guarded by Coordinator.mu
	waiters int
	subs    map[int]func(Progress)
	nextSub int
	last    *Progress // the latest progress, for waiters who join late

	// held: the pull ended with imageID leased once for each waiter still
	// there, so that a collection between the pull and the waiters taking
	// their leases cannot remove the image they waited for.
	held bool

	done    chan struct{}
	imageID string
	err     error
}

// pullKey: one pull per normalised reference, platform and credentials.
// Different credentials pull separately, so that a waiter never gets an
// image through someone else's credentials.
func (c *Coordinator) pullKey(ref reference.Named, req Request) string {
	h := sha256.New()
	for _, s := range []string{ref.String(), req.Platform, c.opt.Store.credentialKey(reference.Domain(ref), req.Credentials)} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// sharedPull joins the pull of ref or starts it, and waits for it. On success
// the image is already leased for the caller (see pull.held).
func (c *Coordinator) sharedPull(ctx context.Context, ref reference.Named, req Request) (string, error) {
	key := c.pullKey(ref, req)
	c.mu.Lock()
	p := c.pulls[key]
	if p == nil {
		pctx, cancel := context.WithTimeout(context.Background(), c.opt.PullTimeout)
		p = &pull{key: key, ctx: pctx, cancel: cancel, subs: map[int]func(Progress){}, done: make(chan struct{})}
		c.pulls[key] = p
		go c.runPull(p, ref, req)
	}
	p.waiters++
	sub := p.nextSub
	p.nextSub++
	var last *Progress
	if req.Progress != nil {
		p.subs[sub] = req.Progress
		last = p.last
	}
	c.mu.Unlock()
	if last != nil {
		req.Progress(*last)
	}

	select {
	case <-p.done:
		c.leave(p, sub)
		return p.imageID, p.err
	case <-ctx.Done():
		if c.leave(p, sub) {
			c.unlease(p.imageID)
		}
		return "", ctx.Err()
	}
}

// leave drops a waiter; the last one to leave an unfinished pull stops it.
// It reports whether the pull had already leased the image for this waiter.
func (c *Coordinator) leave(p *pull, sub int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(p.subs, sub)
	p.waiters--
	if p.held {
		return true
	}
	if p.waiters == 0 {
		select {
		case <-p.done:
		default:
			c.log.Debug("every waiter left; stopping the pull", "key", p.key[:12])
			p.cancel()
		}
	}
	return false
}

func (c *Coordinator) broadcast(p *pull, pr Progress) {
	c.mu.Lock()
	if pr.Message == "" {
		p.last = &pr
	}
	subs := make([]func(Progress), 0, len(p.subs))
	for _, f := range p.subs {
		subs = append(subs, f)
	}
	c.mu.Unlock()
	for _, f := range subs {
		f(pr)
	}
}

// runPull pulls with retries and records the result.
func (c *Coordinator) runPull(p *pull, ref reference.Named, req Request) {
	log := c.log.With("image_ref", ref.String())
	start := time.Now()
	defer func() {
		if c.opt.OnPull != nil {
			c.opt.OnPull(pullResult(p.ctx, p.err), time.Since(start))
		}
		c.mu.Lock()
		delete(c.pulls, p.key) // no waiter joins after this
		if p.err == nil && p.imageID != "" && p.waiters > 0 {
			c.inUse[p.imageID] += p.waiters
			p.held = true
		}
		c.mu.Unlock()
		p.cancel()
		close(p.done)
		if p.err == nil && p.imageID != "" {
			go c.collectSoon()
		}
	}()
	backoff := c.opt.Backoff
	for attempt := 1; ; attempt++ {
		err := c.attempt(p, ref, req, attempt)
		if err == nil {
			inspect, ierr := c.opt.Engine.ImageInspect(p.ctx, ref.String())
			if ierr != nil {
				p.err = fmt.Errorf("pulled %s but cannot inspect it: %w", ref, ierr)
				return
			}
			p.imageID = inspect.ID
			digest := ""
			for _, d := range inspect.RepoDigests {
				if strings.HasPrefix(d, ref.Name()+"@") {
					digest = strings.TrimPrefix(d, ref.Name()+"@")
				}
			}
			if err := c.opt.Store.Pulled(ref.String(), inspect.ID, digest, inspect.Size, c.opt.Store.credentialKey(reference.Domain(ref), req.Credentials)); err != nil {
				log.Warn("could not record the pulled image", "error", err)
			}
			log.Info("pulled image", "image_id", inspect.ID, "digest", digest, "attempts", attempt, "took", time.Since(start).Round(time.Millisecond))
			return
		}
		if p.ctx.Err() != nil {
			if errors.Is(p.ctx.Err(), context.DeadlineExceeded) {
				p.err = fmt.Errorf("pull of %s did not finish within pull_timeout %s: %w", ref, c.opt.PullTimeout, err)
			} else {
				p.err = fmt.Errorf("pull of %s stopped: every step waiting for it went away: %w", ref, err)
			}
			return
		}
		err = c.classify(p.ctx, ref, req, err)
		if permanent(err) || attempt > c.opt.Retries {
			p.err = err
			log.Info("pull failed", "attempts", attempt, "error", err)
			return
		}
		wait := backoff/2 + rand.N(backoff)
		backoff = min(backoff*2, 30*time.Second)
		var limited *RateLimitedError
		if errors.As(err, &limited) && limited.RetryAfter > wait {
			wait = limited.RetryAfter // the registry said when; sooner is wasted
		}
		log.Info("pull failed; retrying", "attempt", attempt, "in", wait, "error", err)
		c.broadcast(p, Progress{Image: req.Image, Attempt: attempt, Message: fmt.Sprintf("attempt %d failed (%v); retrying in %s", attempt, err, wait.Round(100*time.Millisecond))})
		select {
		case <-time.After(wait):
		case <-p.ctx.Done():
			p.err = fmt.Errorf("pull of %s stopped while waiting to retry: %w", ref, err)
			return
		}
	}
}

// pullResult names how a pull ended, for Options.OnPull; read before
// p.cancel, so a cancelled context means the pull was stopped.
func pullResult(ctx context.Context, err error) string {
	switch {
	case err == nil:
		return "success"
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return "timeout"
	case ctx.Err() != nil:
		return "cancelled"
	}
	return "failed"
}

func permanent(err error) bool {
	return errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalidReference)
}

// classify tells a refused pull from an outage by asking the registry
// itself with the same credentials: the engine reports both without a class.
func (c *Coordinator) classify(ctx context.Context, ref reference.Named, req Request, err error) error {
	if errors.Is(err, ErrStalled) {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	_, aerr := Access(actx, ref.String(), req.Credentials)
	var limited *RateLimitedError
	if permanent(aerr) || errors.As(aerr, &limited) {
		return fmt.Errorf("%s (with %s): %w", ref, sourceOr(req.Source), aerr)
	}
	return fmt.Errorf("%s (with %s): %w", ref, sourceOr(req.Source), err)
}

// attempt is one pull, cancelled if no progress arrives for StallTimeout.
func (c *Coordinator) attempt(p *pull, ref reference.Named, req Request, n int) error {
	opts := image.PullOptions{Platform: req.Platform}
	if !req.Credentials.Anonymous() {
		auth, err := dockerregistry.EncodeAuthConfig(dockerregistry.AuthConfig{
			Username: req.Credentials.Username, Password: req.Credentials.Password,
			IdentityToken: req.Credentials.IdentityToken, ServerAddress: reference.Domain(ref),
		})
		if err != nil {
			return fmt.Errorf("%w: encode credentials: %w", ErrInvalidReference, err)
		}
		opts.RegistryAuth = auth
	}
	ctx, cancel := context.WithCancelCause(p.ctx)
	defer cancel(nil)
	stall := time.AfterFunc(c.opt.StallTimeout, func() {
		cancel(fmt.Errorf("%w: no progress for %s", ErrStalled, c.opt.StallTimeout))
	})
	defer stall.Stop()
	rc, err := c.opt.Engine.ImagePull(ctx, ref.String(), opts)
	if err != nil {
		return stallCause(ctx, err)
	}
	defer rc.Close()
	tracker := newProgressTracker(req.Image, n)
	var logged time.Time
	err = readPullStream(rc, func(m pullMessage) {
		stall.Reset(c.opt.StallTimeout)
		if pr, ok := tracker.update(m); ok {
			c.broadcast(p, pr)
			if time.Since(logged) > 5*time.Second {
				logged = time.Now()
				c.log.Debug("pull progress", "image_ref", ref.String(), "layers_done", pr.LayersDone, "layers", pr.LayersTotal,
					"bytes_done", pr.BytesDone, "bytes", pr.BytesTotal, "attempt", n)
			}
		}
	})
	return stallCause(ctx, err)
}

// stallCause prefers the stall as the reason when the watchdog fired.
func stallCause(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if cause := context.Cause(ctx); errors.Is(cause, ErrStalled) {
		return cause
	}
	return err
}

// pullMessage is one line of the engine's pull progress stream.
type pullMessage struct {
	ID             string `json:"id"`
	Status         string `json:"status"`
	ProgressDetail struct {
		Current int64 `json:"current"`
		Total   int64 `json:"total"`
	} `json:"progressDetail"`
	Error string `json:"error"`
}

// readPullStream decodes the stream, returning the error the engine
// reports inside it (a pull can fail after it has started answering).
func readPullStream(r io.Reader, each func(pullMessage)) error {
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
		each(m)
	}
}

// progressTracker sums per-layer progress into Progress.
type progressTracker struct {
	mu      sync.Mutex
	image   string
	attempt int
	start   time.Time
	layers  map[string]*[2]int64
	done    map[string]bool
}

func newProgressTracker(img string, attempt int) *progressTracker {
	return &progressTracker{image: img, attempt: attempt, start: time.Now(), layers: map[string]*[2]int64{}, done: map[string]bool{}}
}

func (t *progressTracker) update(m pullMessage) (Progress, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if m.ID == "" || strings.HasPrefix(m.Status, "Pulling from") || strings.HasPrefix(m.Status, "Digest:") || strings.HasPrefix(m.Status, "Status:") {
		return Progress{}, false
	}
	l := t.layers[m.ID]
	if l == nil {
		l = &[2]int64{}
		t.layers[m.ID] = l
	}
	switch m.Status {
	case "Downloading":
		l[0], l[1] = m.ProgressDetail.Current, m.ProgressDetail.Total
	case "Download complete", "Pull complete", "Already exists":
		if l[1] > 0 {
			l[0] = l[1]
		}
		if m.Status != "Download complete" {
			t.done[m.ID] = true
		}
	}
	pr := Progress{Image: t.image, Attempt: t.attempt, LayersDone: len(t.done), LayersTotal: len(t.layers)}
	for _, l := range t.layers {
		pr.BytesDone += l[0]
		pr.BytesTotal += l[1]
	}
	if elapsed := time.Since(t.start); pr.BytesDone > 0 && pr.BytesTotal > pr.BytesDone && elapsed > time.Second {
		pr.ETA = time.Duration(float64(elapsed) * float64(pr.BytesTotal-pr.BytesDone) / float64(pr.BytesDone))
	}
	return pr, true
}

// HumanBytes formats n in decimal units ("41.2 MB").
func HumanBytes(n int64) string {
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
