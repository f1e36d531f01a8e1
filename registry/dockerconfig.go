package registry

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker-credential-helpers/client"
	"github.com/docker/docker-credential-helpers/credentials"
)

// Compatibility with Docker's files, and the only registry host names in
// stevedore: `docker login` stores the default registry's credentials under
// its legacy index address, and asks credential helpers for that address;
// config.json files written by hand or by other tools also use the
// registry's API host. Both mean the default registry. (The legacy index
// host alone, "index.docker.io", is normalised by distribution/reference.)
const (
	dockerIndexServer  = "https://index.docker.io/v1/"
	dockerRegistryHost = "registry-1.docker.io"
)

// helperTimeout bounds one credential helper call.
const helperTimeout = 10 * time.Second

// helperTokenUser is the Username with which a helper says Secret is an
// identity token.
const helperTokenUser = "<token>"

// dockerConfig is the part of Docker's config.json stevedore reads.
type dockerConfig struct {
	path        string
	Auths       map[string]dockerAuth `json:"auths"`
	CredsStore  string                `json:"credsStore"`
	CredHelpers map[string]string     `json:"credHelpers"`
}

// dockerAuth is one auths entry: "auth" is base64 of user:password.
type dockerAuth struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
}

// defaultDockerConfigDir is $DOCKER_CONFIG, else ~/.docker, else "" (none).
func defaultDockerConfigDir() string {
	if d := os.Getenv("DOCKER_CONFIG"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".docker")
}

// loadDockerConfig reads dir/config.json; a missing file is an empty config.
func loadDockerConfig(dir string) (*dockerConfig, error) {
	cfg := &dockerConfig{}
	if dir == "" {
		return cfg, nil
	}
	cfg.path = filepath.Join(dir, "config.json")
	b, err := os.ReadFile(cfg.path)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return nil, fmt.Errorf("docker config: %w", err)
	}
	if err := json.Unmarshal(b, cfg); err != nil {
		return nil, fmt.Errorf("docker config %s: %w", cfg.path, err)
	}
	return cfg, nil
}

// configKeyHost turns a config.json key ("https://host:5000/v2/",
// "host:5000", the legacy index address) into a normalised host, as Docker
// compares them; "" when the key names no registry host.
func configKeyHost(key string) string {
	if key == dockerIndexServer {
		return defaultHost
	}
	h := strings.TrimPrefix(strings.TrimPrefix(key, "https://"), "http://")
	h, _, _ = strings.Cut(h, "/")
	if strings.EqualFold(h, dockerRegistryHost) {
		return defaultHost
	}
	n, err := normaliseHost(h)
	if err != nil {
		return ""
	}
	return n
}

// lookup finds host's entry in m: an exact key first, then the first key
// (in sorted order) that names the same host.
func lookup[V any](m map[string]V, host string) (V, bool) {
	if v, ok := m[host]; ok {
		return v, true
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if configKeyHost(k) == host {
			return m[k], true
		}
	}
	var zero V
	return zero, false
}

// helperFor returns the credential helper for host: credHelpers, else
// credsStore, else "".
func (c *dockerConfig) helperFor(host string) string {
	if h, ok := lookup(c.CredHelpers, host); ok && h != "" {
		return h
	}
	return c.CredsStore
}

// credentials decodes an auths entry. Errors never contain the secret.
func (a dockerAuth) credentials() (Credentials, error) {
	c := Credentials{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken}
	if a.Auth != "" {
		b, err := base64.StdEncoding.DecodeString(a.Auth)
		if err != nil {
			return Credentials{}, errors.New(`"auth" is not valid base64`)
		}
		user, pass, ok := strings.Cut(string(b), ":")
		if !ok {
			return Credentials{}, errors.New(`"auth" is not base64 of user:password`)
		}
		c.Username, c.Password = user, pass
	}
	return c, nil
}

// fromDockerConfig resolves host's credentials as Docker would.
func (r *Resolver) fromDockerConfig(ctx context.Context, host string) (Credentials, string, error) {
	cfg, err := loadDockerConfig(r.dockerDir)
	if err != nil {
		return Credentials{}, "", err
	}
	if helper := cfg.helperFor(host); helper != "" {
		c, found, err := r.helperGet(ctx, helper, helperServerURL(host))
		if err != nil {
			return Credentials{}, "", err
		}
		if found {
			return c, "credential helper docker-credential-" + helper, nil
		}
	}
	if a, ok := lookup(cfg.Auths, host); ok {
		c, err := a.credentials()
		if err != nil {
			return Credentials{}, "", fmt.Errorf("docker config %s: auths entry for %s: %w", cfg.path, host, err)
		}
		if !c.Anonymous() {
			return c, SourceDockerConfig, nil
		}
	}
	return Credentials{}, SourceNone, nil
}

// helperServerURL is the server URL Docker gives helpers for host.
func helperServerURL(host string) string {
	if host == defaultHost {
		return dockerIndexServer
	}
	return host
}

// helperGet asks docker-credential-<helper> for serverURL's credentials
// with the credential helper protocol; found is false when the helper has
// none. The helper gets helperTimeout to answer.
func (r *Resolver) helperGet(ctx context.Context, helper, serverURL string) (Credentials, bool, error) {
	program := "docker-credential-" + helper
	if strings.ContainsAny(helper, `/\`) {
		return Credentials{}, false, fmt.Errorf("credential helper %q: not a helper name", program)
	}
	ctx, cancel := context.WithTimeout(ctx, r.helperTimeout)
	defer cancel()
	var run *helperRun
	got, err := client.Get(func(args ...string) client.Program {
		run = newHelperRun(ctx, program, args)
		return run
	}, serverURL)
	switch {
	case err == nil:
	case credentials.IsErrCredentialsNotFound(err):
		return Credentials{}, false, nil
	case ctx.Err() != nil:
		return Credentials{}, false, fmt.Errorf("credential helper %s for %s: no answer in %s: %w", program, serverURL, r.helperTimeout, ctx.Err())
	default:
		return Credentials{}, false, fmt.Errorf("credential helper %s for %s: %w%s", program, serverURL, err, run.stderrNote())
	}
	if got.Username == helperTokenUser {
		return Credentials{IdentityToken: got.Secret}, got.Secret != "", nil
	}
	c := Credentials{Username: got.Username, Password: got.Secret}
	return c, !c.Anonymous(), nil
}

// helperRun is one run of a credential helper, bounded by a context, with
// its stderr kept for error messages rather than passed to the agent's.
type helperRun struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
}

func newHelperRun(ctx context.Context, program string, args []string) *helperRun {
	r := &helperRun{cmd: exec.CommandContext(ctx, program, args...)}
	r.cmd.Stderr = &r.stderr
	r.cmd.WaitDelay = time.Second // a helper's children must not hold us past the timeout
	return r
}

// Input sets the helper's stdin.
func (r *helperRun) Input(in io.Reader) { r.cmd.Stdin = in }

// Output runs the helper and returns its stdout.
func (r *helperRun) Output() ([]byte, error) { return r.cmd.Output() }

// stderrNote is the helper's stderr, trimmed and bounded, for an error message.
func (r *helperRun) stderrNote() string {
	if r == nil {
		return ""
	}
	s := strings.TrimSpace(r.stderr.String())
	if s == "" {
		return ""
	}
	if len(s) > 512 {
		s = s[:512] + "…"
	}
	return " (stderr: " + s + ")"
}
