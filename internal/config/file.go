package config

import (
	"github.com/hashicorp/hcl/v2"
)

// fileAgent is the file's schema for gohcl. Plain fields are pre-filled
// with the defaults, which gohcl leaves when the file omits them; settings
// that need parsing or per-element checks are kept as expressions, so that
// errors point at them.
type fileAgent struct {
	StateDir    string            `hcl:"state_dir,optional"`
	Listen      string            `hcl:"listen,optional"`
	Metrics     string            `hcl:"metrics,optional"`
	Trust       hcl.Expression    `hcl:"trust,optional"`
	Bundle      string            `hcl:"bundle,optional"`
	MaxSteps    int               `hcl:"max_steps,optional"`
	CancelGrace hcl.Expression    `hcl:"cancel_grace,optional"`
	MinFreeDisk hcl.Expression    `hcl:"min_free_disk,optional"`
	MaxLogSize  hcl.Expression    `hcl:"max_log_size,optional"`
	Retention   hcl.Expression    `hcl:"retention,optional"`
	Name        string            `hcl:"name,optional"`
	Pools       []string          `hcl:"pools,optional"`
	Labels      map[string]string `hcl:"labels,optional"`
	Feeds       []fileFeed        `hcl:"feed,block"`
	Images      *fileImages       `hcl:"images,block"`

	MaxStepsRange hcl.Range `hcl:"max_steps,attr_range"`
	MetricsRange  hcl.Range `hcl:"metrics,attr_range"`
	PoolsRange    hcl.Range `hcl:"pools,attr_range"`
	LabelsRange   hcl.Range `hcl:"labels,attr_range"`
}

type fileFeed struct {
	Name          string `hcl:"name,label"`
	Registry      string `hcl:"registry"`
	Username      string `hcl:"username,optional"`
	Password      string `hcl:"password,optional"`
	PasswordEnv   string `hcl:"password_env,optional"`
	PasswordFile  string `hcl:"password_file,optional"`
	IdentityToken string `hcl:"identity_token,optional"`

	DefRange      hcl.Range `hcl:",def_range"`
	NameRange     hcl.Range `hcl:"name,label_range"`
	RegistryRange hcl.Range `hcl:"registry,attr_range"`
}

type fileImages struct {
	AllowedImages hcl.Expression `hcl:"allowed_images,optional"`
	PullTimeout   hcl.Expression `hcl:"pull_timeout,optional"`
	StallTimeout  hcl.Expression `hcl:"stall_timeout,optional"`
	Retries       *int           `hcl:"retries,optional"`
	Refresh       hcl.Expression `hcl:"refresh,optional"`
	Prepull       []filePrepull  `hcl:"prepull,block"`
	GC            *fileGC        `hcl:"gc,block"`

	RetriesRange hcl.Range `hcl:"retries,attr_range"`
}

type filePrepull struct {
	Image string `hcl:"image,label"`
	Feed  string `hcl:"feed,optional"`

	ImageRange hcl.Range `hcl:"image,label_range"`
	FeedRange  hcl.Range `hcl:"feed,attr_range"`
}

type fileGC struct {
	MinAge   hcl.Expression `hcl:"min_age,optional"`
	MaxBytes hcl.Expression `hcl:"max_bytes,optional"`
	Keep     *int           `hcl:"keep,optional"`
	Interval hcl.Expression `hcl:"interval,optional"`

	KeepRange hcl.Range `hcl:"keep,attr_range"`
}

// newFileAgent returns the schema pre-filled with def's plain settings.
func newFileAgent(def Agent) *fileAgent {
	return &fileAgent{
		StateDir: def.StateDir, Listen: def.Listen, Bundle: def.Bundle,
		MaxSteps: def.MaxSteps, Name: def.Name, Pools: def.Pools, Labels: def.Labels,
	}
}
