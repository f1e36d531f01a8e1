package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/distribution/reference"
	"github.com/hashicorp/hcl/v2"

	"stevedore/registry"
)

// normalised writes out a short image reference in full, as Load does.
func normalised(t *testing.T, s string) string {
	t.Helper()
	n, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		t.Fatal(err)
	}
	return n.String()
}

func TestLoadExample(t *testing.T) {
	got, err := Load(filepath.Join("testdata", "agent.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	want := Agent{
		StateDir: "/var/lib/stevedore",
		Listen:   ":10933",
		Metrics:  "127.0.0.1:9310",
		Trust: []string{
			"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
			"fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210",
		},
		Bundle:      "/opt/stevedore/bundle",
		MaxSteps:    4,
		CancelGrace: 10 * time.Second,
		MinFreeDisk: 1 << 30,
		MaxLogSize:  2 << 30,
		Retention:   12 * time.Hour,
		Name:        "worker-1",
		Pools:       []string{"linux"},
		Labels:      map[string]string{"zone": "a"},
		Feeds: []registry.Feed{
			{Name: "acme", Registry: "registry.acme.example:5000", Username: "deploy", PasswordEnv: "ACME_REGISTRY_PASSWORD"},
			{Name: "acme-ro", Registry: "registry.acme.example:5000", Username: "reader", PasswordFile: "/run/secrets/acme"},
		},
		Images: Images{
			AllowedImages: []string{"registry.acme.example:5000/*/*", "debian:*"},
			PullTimeout:   30 * time.Minute,
			StallTimeout:  2 * time.Minute,
			Refresh:       time.Hour,
			Retries:       3,
			Prepull: []Prepull{
				{Image: "registry.acme.example:5000/base/deploy-tools:2", Feed: "acme"},
				{Image: normalised(t, "debian:bookworm-slim")},
			},
			GC: GC{MinAge: time.Hour, MaxBytes: 20_000_000_000, Keep: 20, Interval: 10 * time.Minute},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load(example) =\n%+v\nwant\n%+v", got, want)
	}
	if _, err := registry.NewResolver(got.Feeds, t.TempDir()); err != nil {
		t.Errorf("the example's feeds: %v", err)
	}
}

func TestLoadDefaults(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want func(*Agent)
	}{
		{"empty file", "", func(*Agent) {}},
		{"comments only", "# nothing\n", func(*Agent) {}},
		{"empty images block", "images {}\n", func(*Agent) {}},
		{"empty gc block keeps its defaults", "images {\n  gc {}\n}\n", func(*Agent) {}},
		{"one setting", `max_steps = 8`, func(a *Agent) { a.MaxSteps = 8 }},
		{"zeros where zero means none", `
cancel_grace = "0s"
images {
  retries = 0
  refresh = "0"
  gc {
    min_age   = "0s"
    max_bytes = 0
    keep      = 0
    interval  = "0s"
  }
}`, func(a *Agent) {
			a.CancelGrace, a.Images.Retries, a.Images.Refresh = 0, 0, 0
			a.Images.GC = GC{}
		}},
		{"anonymous feed", `
feed "public" { registry = "public.example" }
images {
  prepull "public.example/app:1" { feed = "public" }
}`, func(a *Agent) {
			a.Feeds = []registry.Feed{{Name: "public", Registry: "public.example"}}
			a.Images.Prepull = []Prepull{{Image: "public.example/app:1", Feed: "public"}}
		}},
		{"prepull without a tag gets latest", `images {
  prepull "debian" {}
}`, func(a *Agent) { a.Images.Prepull = []Prepull{{Image: normalised(t, "debian:latest")}} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse("agent.hcl", []byte(tt.src))
			if err != nil {
				t.Fatal(err)
			}
			want := Defaults()
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	d := Defaults()
	if d.Listen != ":10933" || d.MaxSteps != 4 || d.CancelGrace != 10*time.Second || d.MinFreeDisk != 500<<20 {
		t.Errorf("agent defaults: %+v", d)
	}
	want := Images{PullTimeout: 30 * time.Minute, StallTimeout: 2 * time.Minute, Retries: 3, Refresh: time.Hour,
		GC: GC{MinAge: time.Hour, Interval: 10 * time.Minute}}
	if !reflect.DeepEqual(d.Images, want) {
		t.Errorf("images defaults: %+v, want %+v", d.Images, want)
	}
}

func TestSizes(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  bool
	}{
		{`0`, 0, false},
		{`1048576`, 1 << 20, false},
		{`"1024"`, 1024, false},
		{`"20GB"`, 20_000_000_000, false},
		{`"20gb"`, 20_000_000_000, false},
		{`"20G"`, 20_000_000_000, false},
		{`"1.5 GB"`, 1_500_000_000, false},
		{`"512MB"`, 512_000_000, false},
		{`"512MiB"`, 512 << 20, false},
		{`"512Mi"`, 512 << 20, false},
		{`"2GiB"`, 2 << 30, false},
		{`"1TiB"`, 1 << 40, false},
		{`"20 GiB"`, 20 << 30, false},
		{`"20 apples"`, 0, true},
		{`"GB"`, 0, true},
		{`"-1GB"`, 0, true},
		{`-1`, 0, true},
		{`1.5`, 0, true},
		{`"99999999PB"`, 0, true},
		{`true`, 0, true},
	}
	for _, tt := range tests {
		src := fmt.Sprintf("images {\n  gc {\n    max_bytes = %s\n  }\n}\n", tt.in)
		got, err := Parse("agent.hcl", []byte(src))
		if tt.err {
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "agent.hcl:3,") || !strings.Contains(err.Error(), "max_bytes") {
				t.Errorf("max_bytes = %s: err = %v, want one naming agent.hcl:3 and max_bytes", tt.in, err)
			}
			continue
		}
		if err != nil || got.Images.GC.MaxBytes != tt.want {
			t.Errorf("max_bytes = %s: %d, %v; want %d", tt.in, got.Images.GC.MaxBytes, err, tt.want)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	const thumb = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name     string
		src      string
		wantLine int
		want     []string // in the message
	}{
		{"bad duration", "\ncancel_grace = \"10x\"\n", 2, []string{"Invalid duration", `cancel_grace = "10x"`, "unknown unit"}},
		{"duration as a number", "cancel_grace = 10\n", 1, []string{"cancel_grace: want a string, not a number"}},
		{"negative duration", "images {\n  refresh = \"-1h\"\n}\n", 2, []string{`images.refresh = "-1h": want 0 or more`}},
		{"zero pull timeout", "images {\n  pull_timeout = \"0s\"\n}\n", 2, []string{`images.pull_timeout = "0s": want more than 0`}},
		{"bad stall timeout", "images {\n\n  stall_timeout = \"soon\"\n}\n", 3, []string{"images.stall_timeout", "invalid duration"}},
		{"bad gc duration", "images {\n  gc {\n    interval = \"1 hour\"\n  }\n}\n", 3, []string{"images.gc.interval"}},
		{"bad size", "images {\n  gc {\n    min_age = \"1h\"\n    max_bytes = \"20XB\"\n  }\n}\n", 4, []string{"Invalid size", `images.gc.max_bytes = "20XB"`}},
		{"negative keep", "images {\n  gc {\n    keep = -1\n  }\n}\n", 3, []string{"images.gc.keep = -1"}},
		{"negative retries", "images {\n  retries = -2\n}\n", 2, []string{"images.retries = -2"}},
		{"zero max_steps", "max_steps = 0\n", 1, []string{"max_steps = 0: want at least 1"}},
		{"bad thumbprint", "trust = [\n  \"" + thumb + "\",\n  \"abc\",\n]\n", 3, []string{"Invalid trust", `thumbprint "abc"`}},
		{"trust not a list", "trust = \"abc\"\n", 1, []string{"trust: want a list of strings"}},
		{"duplicate feed", `feed "acme" {
  registry = "a.example"
}
feed "acme" {
  registry = "b.example"
}
`, 4, []string{"Duplicate feed", `feed "acme": already defined at agent.hcl:1`}},
		{"two password sources", `feed "acme" {
  registry     = "a.example"
  username     = "u"
  password     = "hunter2-secret"
  password_env = "ACME_PW"
}
`, 1, []string{"Invalid feed", "more than one password source (password, password_env)"}},
		{"password without username", "\nfeed \"acme\" {\n  registry = \"a.example\"\n  password_file = \"/f\"\n}\n", 2, []string{"password_file without a username"}},
		{"feed registry with a scheme", "feed \"acme\" {\n  registry = \"https://a.example\"\n}\n", 1, []string{"Invalid feed", "not a registry host"}},
		{"feed without registry", "feed \"acme\" {\n}\n", 1, []string{`"registry" is required`}},
		{"unknown feed in prepull", `feed "acme" {
  registry = "a.example"
}
images {
  prepull "a.example/app:1" {
    feed = "acne"
  }
}
`, 6, []string{"Unknown feed", `prepull "a.example/app:1": feed = "acne"`}},
		{"prepull feed for another registry", `feed "acme" {
  registry = "a.example"
}
images {
  prepull "b.example/app:1" { feed = "acme" }
}
`, 5, []string{"feed \"acme\" is for a.example, but the image is on b.example"}},
		{"bad glob", "images {\n  allowed_images = [\n    \"a.example/*\",\n    \"a.example/[\",\n  ]\n}\n", 4, []string{"Invalid allowed_images", `"a.example/["`, "syntax error in pattern"}},
		{"bad image reference", "images {\n  prepull \"Not//A:Reference\" {}\n}\n", 2, []string{"Invalid prepull image", `prepull "Not//A:Reference"`}},
		{"unknown attribute", "listen = \":1\"\nlisten_addr = \":2\"\n", 2, []string{"Unsupported argument", `"listen_addr"`}},
		{"unknown attribute in a block", "images {\n  gc {\n    max_size = \"1GB\"\n  }\n}\n", 3, []string{"Unsupported argument", `"max_size"`}},
		{"unknown block", "image {\n}\n", 1, []string{"Unsupported block type", `"image"`}},
		{"two images blocks", "images {}\nimages {}\n", 2, []string{"Duplicate images block"}},
		{"wrong type", "max_steps = \"four\"\n", 1, []string{"max_steps"}},
		{"syntax error", "listen = \n", 1, []string{"agent.hcl:1"}},
		{"metrics without a port", "listen = \":1\"\nmetrics = \"localhost\"\n", 2, []string{"Invalid metrics", `metrics = "localhost"`}},
		{"variables are not allowed", "listen = var.x\n", 1, []string{"Variables not allowed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("agent.hcl", []byte(tt.src))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			msg := err.Error()
			if at := fmt.Sprintf("agent.hcl:%d,", tt.wantLine); !strings.Contains(msg, at) {
				t.Errorf("err = %q, want it at %s", msg, at)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("err = %q, want it to say %q", msg, w)
				}
			}
			if strings.Contains(msg, "hunter2-secret") {
				t.Errorf("err = %q contains the password", msg)
			}
			var diag *hcl.Diagnostic
			if !errors.As(err, &diag) || diag.Subject == nil {
				t.Errorf("err = %v, want *hcl.Diagnostic with a range", err)
			}
		})
	}
}

// Every problem is reported, each with its own line.
func TestLoadReportsAll(t *testing.T) {
	_, err := Parse("agent.hcl", []byte("cancel_grace = \"x\"\nmax_steps = 0\nimages {\n  refresh = \"y\"\n}\n"))
	for _, at := range []string{"agent.hcl:1,", "agent.hcl:2,", "agent.hcl:4,"} {
		if err == nil || !strings.Contains(err.Error(), at) {
			t.Errorf("err = %v, want a problem at %s", err, at)
		}
	}
}

func TestLoadFile(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "missing.hcl")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v", err)
	}
	p := filepath.Join(t.TempDir(), "agent.conf")
	if err := os.WriteFile(p, []byte("max_steps = \"x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), p+":1,") {
		t.Errorf("err = %v, want one naming %s:1", err, p)
	}
}
