// Package config reads the agent's configuration file, in HCL:
//
//	state_dir    = "/var/lib/stevedore"
//	listen       = ":10933"
//	metrics      = "127.0.0.1:9310"
//	trust        = ["<64 hex>"]
//	max_steps    = 4
//	cancel_grace = "10s"
//	min_free_disk = "500MiB"
//	retention    = "24h"
//	labels       = { zone = "a" }
//
//	feed "acme" {
//	  registry     = "registry.acme.example:5000"
//	  username     = "deploy"
//	  password_env = "ACME_REGISTRY_PASSWORD" # or password, or password_file
//	}
//
//	images {
//	  allowed_images = ["registry.acme.example:5000/*"]
//	  prepull "registry.acme.example:5000/base/deploy-tools:2" { feed = "acme" }
//	  gc { max_bytes = "20GB" }
//	}
//
// testdata/agent.hcl has every setting. Durations are Go's ("90s", "10m",
// "1h30m"). Sizes are bytes, as a number or a string with a unit: kB, MB,
// GB, TB, PB are powers of 1000 (as `docker system df` and stevedore's
// progress lines count), KiB, MiB, GiB, TiB, PiB (or Ki, Mi, …) powers of
// 1024; case is ignored and "B" is optional ("20GB", "512MiB", "1.5g").
// Paths are used as written.
package config

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"stevedore/registry"
)

// ErrInvalid is wrapped by every error about a configuration file's
// content; the errors it joins are *hcl.Diagnostic, each naming the file,
// line and setting.
var ErrInvalid = errors.New("invalid agent configuration")

// Agent is the agent's configuration.
type Agent struct {
	StateDir    string
	Listen      string
	Metrics     string   // where GET /metrics is served (plain HTTP); "" is off
	Trust       []string // thumbprints, normalised to 64 lower-case hex characters
	Bundle      string   // "" means bundle/ beside the binary
	MaxSteps    int
	CancelGrace time.Duration
	// MinFreeDisk is the free space StateDir must keep for a new step to
	// be accepted; 0 turns the check off.
	MinFreeDisk int64
	// MaxLogSize bounds the bytes of a step's output kept in its log; 0:
	// no bound.
	MaxLogSize int64
	// Retention is how long a completed step no client collected keeps its
	// container and workspace, and a collected one its journal tombstone.
	Retention time.Duration
	Name      string // "" means the host name
	Pools     []string
	Labels    map[string]string
	Feeds     []registry.Feed
	Images    Images
}

// Images configures the image cache.
type Images struct {
	// AllowedImages are path.Match globs over image references; empty
	// allows every image.
	AllowedImages []string
	// PullTimeout bounds a pull with its retries; StallTimeout an attempt
	// without progress.
	PullTimeout, StallTimeout time.Duration
	// Refresh is how often pre-pulled images are checked for a new digest
	// (0: only at start).
	Refresh time.Duration
	// Retries after a transient pull failure (0: none).
	Retries int
	Prepull []Prepull
	GC      GC
}

// Prepull is an image kept on the worker.
type Prepull struct {
	Image string // normalised: "debian:12" is written out in full, with its registry
	Feed  string // "" means resolved like a step's image without a feed
}

// GC bounds the image cache.
type GC struct {
	MinAge   time.Duration // images used more recently stay
	MaxBytes int64         // 0: no byte limit
	Keep     int           // 0: no count limit
	Interval time.Duration // 0: collect only after pulls
}

// Defaults returns the configuration of an agent without a file.
func Defaults() Agent {
	return Agent{
		Listen:      ":10933",
		MaxSteps:    4,
		CancelGrace: 10 * time.Second,
		MinFreeDisk: 500 << 20,
		Retention:   24 * time.Hour,
		Images: Images{
			PullTimeout:  30 * time.Minute,
			StallTimeout: 2 * time.Minute,
			Retries:      3,
			Refresh:      time.Hour,
			GC:           GC{MinAge: time.Hour, Interval: 10 * time.Minute},
		},
	}
}

// Load reads the file at path over Defaults(). Errors about the content
// wrap ErrInvalid and list every problem found, each with its line.
func Load(path string) (Agent, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return Agent{}, fmt.Errorf("agent configuration: %w", err)
	}
	return Parse(path, src)
}

// Parse is Load of src, read from filename.
func Parse(filename string, src []byte) (Agent, error) {
	file, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if diags.HasErrors() {
		return Agent{}, asError(diags)
	}
	a := Defaults()
	raw := newFileAgent(a)
	if diags := gohcl.DecodeBody(file.Body, nil, raw); diags.HasErrors() {
		nameSettings(file.Body.(*hclsyntax.Body), "", diags)
		return Agent{}, asError(diags)
	}
	d := &decoder{}
	d.agent(raw, &a)
	if d.diags.HasErrors() {
		return Agent{}, asError(d.diags)
	}
	return a, nil
}

// nameSettings prefixes with its setting's name ("images.retries: ") the
// detail of each diagnostic inside an attribute's value, since HCL's type
// errors say only what was wrong.
func nameSettings(body *hclsyntax.Body, prefix string, diags hcl.Diagnostics) {
	for name, attr := range body.Attributes {
		for _, d := range diags {
			if d.Subject != nil && attr.Expr.Range().ContainsPos(d.Subject.Start) && d.Subject.Filename == attr.SrcRange.Filename {
				d.Detail = prefix + name + ": " + d.Detail
			}
		}
	}
	for _, b := range body.Blocks {
		nameSettings(b.Body, prefix+b.Type+".", diags)
	}
}

// asError joins the error diagnostics under ErrInvalid.
func asError(diags hcl.Diagnostics) error {
	var errs []error
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			errs = append(errs, d)
		}
	}
	return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
}
