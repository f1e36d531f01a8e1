package registry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/distribution/reference"
)

// Classes of feed errors. Test with errors.Is.
var (
	// ErrUnknownFeed: a step names a feed this worker does not have.
	ErrUnknownFeed = errors.New("unknown feed")
	// ErrFeedMismatch: a step names a feed for another registry than its
	// image's.
	ErrFeedMismatch = errors.New("feed is for another registry")
	// ErrInvalidFeed: a feed's definition is incomplete or contradictory.
	ErrInvalidFeed = errors.New("invalid feed")
	// ErrFeedCredentials: a feed's password source (environment variable or
	// file) could not be read at use time.
	ErrFeedCredentials = errors.New("feed credentials unavailable")
)

// Feed is a registry and the credentials for it. A feed without a username,
// password source or identity token is anonymous.
type Feed struct {
	// Name is how steps and pre-pulls refer to the feed ("acme").
	Name string
	// Registry is the registry's host[:port] as it appears in normalised
	// image references ("registry.acme.example:5000"); the default
	// registry is named as github.com/distribution/reference normalises it.
	Registry string
	Username string
	// At most one of Password, PasswordEnv and PasswordFile.
	Password     string
	PasswordEnv  string // the password is read from this environment variable at use time
	PasswordFile string // the password is read from this file at use time, trailing newlines trimmed
	// IdentityToken is an OAuth refresh token, as `docker login` stores.
	IdentityToken string
}

var (
	feedNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	domainRE   = regexp.MustCompile(`^` + reference.DomainRegexp.String() + `$`)
)

// Validate reports whether f is complete and consistent: a name, a registry
// host, at most one password source, and a username exactly when there is a
// password. Its errors wrap ErrInvalidFeed and never contain a secret.
func (f Feed) Validate() error {
	if !feedNameRE.MatchString(f.Name) {
		return fmt.Errorf("%w %q: want a name of letters, digits, '_', '.' and '-'", ErrInvalidFeed, f.Name)
	}
	if _, err := normaliseHost(f.Registry); err != nil {
		return fmt.Errorf("%w %s: registry: %w", ErrInvalidFeed, f.Name, err)
	}
	var sources []string
	for _, s := range []struct{ name, value string }{
		{"password", f.Password}, {"password_env", f.PasswordEnv}, {"password_file", f.PasswordFile},
	} {
		if s.value != "" {
			sources = append(sources, s.name)
		}
	}
	switch {
	case len(sources) > 1:
		return fmt.Errorf("%w %s: more than one password source (%s); give one", ErrInvalidFeed, f.Name, strings.Join(sources, ", "))
	case len(sources) == 1 && f.Username == "":
		return fmt.Errorf("%w %s: %s without a username", ErrInvalidFeed, f.Name, sources[0])
	case len(sources) == 0 && f.Username != "":
		return fmt.Errorf("%w %s: username without a password, password_env or password_file", ErrInvalidFeed, f.Name)
	}
	return nil
}

// Credentials resolves f's credentials now, reading PasswordEnv or
// PasswordFile at each call so that rotated secrets take effect without a
// restart. Errors wrap ErrFeedCredentials, name the feed and the source, and
// never contain the secret.
func (f Feed) Credentials() (Credentials, error) {
	c := Credentials{Username: f.Username, Password: f.Password, IdentityToken: f.IdentityToken}
	switch {
	case f.PasswordEnv != "":
		v, ok := os.LookupEnv(f.PasswordEnv)
		if !ok || v == "" {
			return Credentials{}, fmt.Errorf("feed %s: %w: environment variable %s is not set or empty", f.Name, ErrFeedCredentials, f.PasswordEnv)
		}
		c.Password = v
	case f.PasswordFile != "":
		b, err := os.ReadFile(f.PasswordFile)
		if err != nil {
			return Credentials{}, fmt.Errorf("feed %s: %w: password_file: %w", f.Name, ErrFeedCredentials, err)
		}
		c.Password = strings.TrimRight(string(b), "\r\n")
		if c.Password == "" {
			return Credentials{}, fmt.Errorf("feed %s: %w: password_file %s is empty", f.Name, ErrFeedCredentials, f.PasswordFile)
		}
	}
	return c, nil
}

// Serves reports whether image (a reference, normalised or familiar) is on
// f's registry. Errors wrap ErrInvalidReference or ErrInvalidFeed.
func (f Feed) Serves(image string) (bool, error) {
	fh, err := normaliseHost(f.Registry)
	if err != nil {
		return false, fmt.Errorf("%w %s: registry: %w", ErrInvalidFeed, f.Name, err)
	}
	ih, err := imageHost(image)
	if err != nil {
		return false, err
	}
	return fh == ih, nil
}

// defaultHost is the default registry's name as github.com/distribution/reference
// normalises it; taken from the package rather than written here.
var defaultHost = func() string {
	n, err := reference.ParseNormalizedNamed("library")
	if err != nil {
		panic(err)
	}
	return reference.Domain(n)
}()

// normaliseHost turns a registry host[:port] into the form normalised image
// references carry (the legacy index name becomes the default registry's),
// lower-cased for comparison.
func normaliseHost(host string) (string, error) {
	if !domainRE.MatchString(host) {
		return "", fmt.Errorf("%q is not a registry host[:port]", host)
	}
	// Parsing host/a/b tells whether references would read host as a
	// registry at all: "myhost/a/b" is a repository on the default one.
	n, err := reference.ParseNormalizedNamed(host + "/a/b")
	if err != nil || reference.Path(n) != "a/b" {
		return "", fmt.Errorf("%q is not read as a registry in image references: a registry host has a dot or a port, or is localhost", host)
	}
	return strings.ToLower(reference.Domain(n)), nil
}

// imageHost returns the normalised registry host of an image reference.
func imageHost(image string) (string, error) {
	n, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return "", fmt.Errorf("%w %q: %w", ErrInvalidReference, image, err)
	}
	return strings.ToLower(reference.Domain(n)), nil
}

// Resolver finds the credentials for pulling an image: from the step, from a
// feed, or from Docker's own configuration. Safe for concurrent use.
type Resolver struct {
	feeds     []Feed
	hosts     []string // feeds[i]'s normalised registry host
	byName    map[string]int
	dockerDir string
	// helperTimeout bounds one credential helper call.
	helperTimeout time.Duration
}

// NewResolver checks feeds (each valid, names unique) and returns a resolver
// over them. dockerConfigDir is where Docker's config.json lives; "" means
// $DOCKER_CONFIG, else ~/.docker. config.json is read at each resolution, so
// a later `docker login` takes effect.
func NewResolver(feeds []Feed, dockerConfigDir string) (*Resolver, error) {
	r := &Resolver{byName: map[string]int{}, dockerDir: dockerConfigDir, helperTimeout: helperTimeout}
	if r.dockerDir == "" {
		r.dockerDir = defaultDockerConfigDir()
	}
	for _, f := range feeds {
		if err := f.Validate(); err != nil {
			return nil, err
		}
		if _, dup := r.byName[f.Name]; dup {
			return nil, fmt.Errorf("%w %s: defined twice", ErrInvalidFeed, f.Name)
		}
		host, _ := normaliseHost(f.Registry) // Validate checked it
		r.byName[f.Name] = len(r.feeds)
		r.feeds = append(r.feeds, f)
		r.hosts = append(r.hosts, host)
	}
	return r, nil
}

// Feed returns the feed called name.
func (r *Resolver) Feed(name string) (Feed, bool) {
	i, ok := r.byName[name]
	if !ok {
		return Feed{}, false
	}
	return r.feeds[i], true
}

// Sources of credentials, as Resolve describes them.
const (
	SourceInline       = "inline credentials"
	SourceDockerConfig = "docker config.json"
	SourceNone         = "no credentials"
)

// Resolve returns the credentials for pulling image (a reference, normalised
// or familiar) and where they came from, for messages ("inline
// credentials", "feed acme", "docker config.json", "credential helper
// docker-credential-pass", "no credentials"); neither the description nor
// an error ever contains a secret.
//
// The order:
//  1. inline, when not nil and not anonymous;
//  2. the feed called feedName, when given: ErrUnknownFeed if there is none,
//     ErrFeedMismatch if it is for another registry than image's;
//  3. the first feed for image's registry;
//  4. Docker's config.json, read now: the helper of credHelpers[host], else
//     of credsStore (docker-credential-<name> get, at most 10 s; a helper
//     that fails or does not answer is an error, one that has nothing for
//     host goes on); then auths[host] ("auth", username and password,
//     identitytoken). Keys are compared by host[:port], Docker's legacy
//     index address standing for the default registry;
//  5. anonymous.
func (r *Resolver) Resolve(ctx context.Context, image string, feedName string, inline *Credentials) (Credentials, string, error) {
	if inline != nil && !inline.Anonymous() {
		return *inline, SourceInline, nil
	}
	host, err := imageHost(image)
	if err != nil {
		return Credentials{}, "", err
	}
	if feedName != "" {
		i, ok := r.byName[feedName]
		if !ok {
			return Credentials{}, "", fmt.Errorf("%w %q for %s", ErrUnknownFeed, feedName, image)
		}
		if r.hosts[i] != host {
			return Credentials{}, "", fmt.Errorf("%w: feed %s is for %s, but image %s is on %s", ErrFeedMismatch, feedName, r.feeds[i].Registry, image, host)
		}
		return r.fromFeed(i)
	}
	for i, h := range r.hosts {
		if h == host {
			return r.fromFeed(i)
		}
	}
	return r.fromDockerConfig(ctx, host)
}

func (r *Resolver) fromFeed(i int) (Credentials, string, error) {
	f := r.feeds[i]
	c, err := f.Credentials()
	if err != nil {
		return Credentials{}, "", err
	}
	return c, "feed " + f.Name, nil
}
