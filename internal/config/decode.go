package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"path"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/docker/go-units"
	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"

	"stevedore/registry"
	"stevedore/transport"
)

// decoder turns the file's schema into an Agent, collecting a diagnostic
// for every bad setting.
type decoder struct {
	diags    hcl.Diagnostics
	declared map[string]bool // feed names in the file, valid or not
}

func (d *decoder) errorf(rng hcl.Range, summary, format string, args ...any) {
	d.diags = append(d.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError, Summary: summary, Detail: fmt.Sprintf(format, args...), Subject: rng.Ptr(),
	})
}

func (d *decoder) agent(f *fileAgent, a *Agent) {
	a.StateDir, a.Listen, a.Bundle, a.Name = f.StateDir, f.Listen, f.Bundle, f.Name
	a.MaxSteps, a.Pools, a.Labels = f.MaxSteps, f.Pools, f.Labels
	a.Metrics = f.Metrics
	if a.Metrics != "" {
		if _, _, err := net.SplitHostPort(a.Metrics); err != nil {
			d.errorf(f.MetricsRange, "Invalid metrics", "metrics = %q: want HOST:PORT, e.g. \"127.0.0.1:9310\" (%v)", a.Metrics, err)
		}
	}
	if a.MaxSteps < 1 {
		d.errorf(f.MaxStepsRange, "Invalid max_steps", "max_steps = %d: want at least 1", a.MaxSteps)
	}
	for _, p := range a.Pools {
		if strings.TrimSpace(p) == "" {
			d.errorf(f.PoolsRange, "Invalid pools", "pools: an empty pool name")
		}
	}
	for k := range a.Labels {
		if k == "" {
			d.errorf(f.LabelsRange, "Invalid labels", "labels: an empty label name")
		}
	}
	trust, ranges := d.stringList(f.Trust, "trust")
	for i, t := range trust {
		p, err := transport.ParseThumbprint(t)
		if err != nil {
			d.errorf(ranges[i], "Invalid trust", "trust: %v", err)
		}
		a.Trust = append(a.Trust, p)
	}
	d.duration(f.CancelGrace, "cancel_grace", false, &a.CancelGrace)
	d.size(f.MinFreeDisk, "min_free_disk", &a.MinFreeDisk)
	d.size(f.MaxLogSize, "max_log_size", &a.MaxLogSize)
	d.duration(f.Retention, "retention", false, &a.Retention)
	d.feeds(f.Feeds, a)
	if f.Images != nil {
		d.images(f.Images, a)
	}
}

// feeds checks each feed, and that names are unique.
func (d *decoder) feeds(feeds []fileFeed, a *Agent) {
	seen := map[string]hcl.Range{}
	d.declared = map[string]bool{}
	for _, ff := range feeds {
		if first, dup := seen[ff.Name]; dup {
			d.errorf(ff.NameRange, "Duplicate feed", "feed %q: already defined at %s", ff.Name, first)
			continue
		}
		seen[ff.Name] = ff.DefRange
		d.declared[ff.Name] = true
		f := registry.Feed{
			Name: ff.Name, Registry: ff.Registry, Username: ff.Username, Password: ff.Password,
			PasswordEnv: ff.PasswordEnv, PasswordFile: ff.PasswordFile, IdentityToken: ff.IdentityToken,
		}
		if err := f.Validate(); err != nil {
			d.errorf(ff.DefRange, "Invalid feed", "%v", err)
			continue
		}
		a.Feeds = append(a.Feeds, f)
	}
}

func (d *decoder) images(fi *fileImages, a *Agent) {
	im := &a.Images
	globs, ranges := d.stringList(fi.AllowedImages, "images.allowed_images")
	for i, g := range globs {
		if _, err := path.Match(g, ""); err != nil {
			d.errorf(ranges[i], "Invalid allowed_images", "images.allowed_images: %q: %v (the syntax is Go's path.Match)", g, err)
		}
	}
	im.AllowedImages = globs
	d.duration(fi.PullTimeout, "images.pull_timeout", true, &im.PullTimeout)
	d.duration(fi.StallTimeout, "images.stall_timeout", true, &im.StallTimeout)
	d.duration(fi.Refresh, "images.refresh", false, &im.Refresh)
	if fi.Retries != nil {
		if im.Retries = *fi.Retries; im.Retries < 0 {
			d.errorf(fi.RetriesRange, "Invalid retries", "images.retries = %d: want 0 or more", im.Retries)
		}
	}
	for _, p := range fi.Prepull {
		d.prepull(p, a)
	}
	if fi.GC != nil {
		g := &im.GC
		d.duration(fi.GC.MinAge, "images.gc.min_age", false, &g.MinAge)
		d.size(fi.GC.MaxBytes, "images.gc.max_bytes", &g.MaxBytes)
		d.duration(fi.GC.Interval, "images.gc.interval", false, &g.Interval)
		if fi.GC.Keep != nil {
			if g.Keep = *fi.GC.Keep; g.Keep < 0 {
				d.errorf(fi.GC.KeepRange, "Invalid keep", "images.gc.keep = %d: want 0 (no limit) or more", g.Keep)
			}
		}
	}
}

// prepull checks the image reference and its feed, which must exist and be
// for the image's registry.
func (d *decoder) prepull(p filePrepull, a *Agent) {
	named, err := reference.ParseNormalizedNamed(p.Image)
	if err != nil {
		d.errorf(p.ImageRange, "Invalid prepull image", "prepull %q: %v", p.Image, err)
		return
	}
	img := reference.TagNameOnly(named).String()
	if p.Feed != "" {
		i := feedIndex(a.Feeds, p.Feed)
		if i < 0 && d.declared[p.Feed] {
			return // the feed's own error says what is wrong
		}
		if i < 0 {
			d.errorf(p.FeedRange, "Unknown feed", "prepull %q: feed = %q: no feed block has that name", p.Image, p.Feed)
			return
		}
		if ok, _ := a.Feeds[i].Serves(img); !ok {
			d.errorf(p.FeedRange, "Feed for another registry", "prepull %q: feed %q is for %s, but the image is on %s",
				p.Image, p.Feed, a.Feeds[i].Registry, reference.Domain(named))
			return
		}
	}
	a.Images.Prepull = append(a.Images.Prepull, Prepull{Image: img, Feed: p.Feed})
}

func feedIndex(feeds []registry.Feed, name string) int {
	for i, f := range feeds {
		if f.Name == name {
			return i
		}
	}
	return -1
}

// stringList reads a list of strings, with each element's range; a missing
// attribute is an empty list.
func (d *decoder) stringList(expr hcl.Expression, field string) ([]string, []hcl.Range) {
	if isMissing(expr) {
		return nil, nil
	}
	elems, diags := hcl.ExprList(expr)
	if diags.HasErrors() {
		d.errorf(expr.Range(), "Invalid "+leaf(field), "%s: want a list of strings", field)
		return nil, nil
	}
	var out []string
	var ranges []hcl.Range
	for _, e := range elems {
		if s, ok := d.str(e, field); ok {
			out = append(out, s)
			ranges = append(ranges, e.Range())
		}
	}
	return out, ranges
}

// duration parses a Go duration string into *dst: more than 0 if positive,
// else 0 or more; a missing attribute keeps *dst.
func (d *decoder) duration(expr hcl.Expression, field string, positive bool, dst *time.Duration) {
	if isMissing(expr) {
		return
	}
	s, ok := d.str(expr, field)
	if !ok {
		return
	}
	v, err := time.ParseDuration(s)
	switch {
	case err != nil:
		d.errorf(expr.Range(), "Invalid duration", `%s = %q: %v; write it like "90s", "10m" or "1h30m"`, field, s, err)
	case positive && v <= 0:
		d.errorf(expr.Range(), "Invalid duration", "%s = %q: want more than 0", field, s)
	case v < 0:
		d.errorf(expr.Range(), "Invalid duration", "%s = %q: want 0 or more", field, s)
	default:
		*dst = v
	}
}

// size parses bytes into *dst, from a number or a string with a unit (see
// the package documentation); a missing attribute keeps *dst.
func (d *decoder) size(expr hcl.Expression, field string, dst *int64) {
	if isMissing(expr) {
		return
	}
	v, diags := expr.Value(nil)
	if diags.HasErrors() {
		d.diags = append(d.diags, diags...)
		return
	}
	if v.Type() == cty.Number && v.IsKnown() && !v.IsNull() {
		f, _ := v.AsBigFloat().Float64()
		if f < 0 || f > math.MaxInt64 || f != math.Trunc(f) {
			d.errorf(expr.Range(), "Invalid size", "%s = %v: want a whole number of bytes, 0 or more", field, f)
			return
		}
		*dst = int64(f)
		return
	}
	s, ok := d.str(expr, field)
	if !ok {
		return
	}
	n, err := parseSize(s)
	if err != nil {
		d.errorf(expr.Range(), "Invalid size", `%s = %q: %v; write it like "20GB" (10^9 bytes) or "512MiB" (2^20 bytes)`, field, s, err)
		return
	}
	*dst = n
}

// ParseSize reads a size as the file writes it ("500MB", "1GiB"), for flags.
func ParseSize(s string) (int64, error) { return parseSize(s) }

// parseSize reads "20GB" as decimal (go-units' FromHumanSize) and "512MiB"
// or "512Mi" as binary (go-units' RAMInBytes): go-units itself ignores the
// "i", so the choice is made here.
func parseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	parse := units.FromHumanSize
	switch {
	case strings.HasSuffix(t, "ib"):
		parse = units.RAMInBytes
	case strings.HasSuffix(t, "i"):
		parse, t = units.RAMInBytes, t+"b" // go-units wants "mib", not "mi"
	}
	n, err := parse(t)
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, errors.New("too large")
	}
	return n, nil
}

// str evaluates a string setting.
func (d *decoder) str(expr hcl.Expression, field string) (string, bool) {
	v, diags := expr.Value(nil)
	if diags.HasErrors() {
		d.diags = append(d.diags, diags...)
		return "", false
	}
	if v.IsNull() || !v.IsKnown() {
		d.errorf(expr.Range(), "Invalid "+leaf(field), "%s: want a string", field)
		return "", false
	}
	if v.Type() != cty.String {
		d.errorf(expr.Range(), "Invalid "+leaf(field), "%s: want a string, not a %s", field, v.Type().FriendlyName())
		return "", false
	}
	return v.AsString(), true
}

// isMissing reports whether expr stands for an attribute the file omits:
// gohcl gives those a static null.
func isMissing(expr hcl.Expression) bool {
	if expr == nil {
		return true
	}
	v, diags := expr.Value(nil)
	return !diags.HasErrors() && v.IsNull()
}

// leaf is the last part of a dotted field name.
func leaf(field string) string {
	return field[strings.LastIndex(field, ".")+1:]
}
