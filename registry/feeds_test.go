package registry

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFeedValidate(t *testing.T) {
	tests := []struct {
		name    string
		feed    Feed
		wantErr string // "" for valid
	}{
		{"anonymous", Feed{Name: "pub", Registry: "pub.example"}, ""},
		{"password", Feed{Name: "acme", Registry: "registry.acme.example:5000", Username: "u", Password: "s3cr3t-pw"}, ""},
		{"password_env", Feed{Name: "acme", Registry: "localhost:5000", Username: "u", PasswordEnv: "X"}, ""},
		{"password_file", Feed{Name: "acme", Registry: "127.0.0.1:5001", Username: "u", PasswordFile: "/f"}, ""},
		{"identity token", Feed{Name: "acme", Registry: "acme.example", IdentityToken: "t"}, ""},
		{"default registry", Feed{Name: "hub", Registry: defaultHost, Username: "u", Password: "s3cr3t-pw"}, ""},
		{"no name", Feed{Registry: "acme.example"}, "want a name"},
		{"bad name", Feed{Name: "a b", Registry: "acme.example"}, "want a name"},
		{"no registry", Feed{Name: "acme"}, "registry"},
		{"registry with scheme", Feed{Name: "acme", Registry: "https://acme.example"}, "not a registry host"},
		{"registry with path", Feed{Name: "acme", Registry: "acme.example/v2"}, "not a registry host"},
		{"bare word registry", Feed{Name: "acme", Registry: "acme"}, "not read as a registry"},
		{"two sources", Feed{Name: "acme", Registry: "acme.example", Username: "u", Password: "s3cr3t-pw", PasswordEnv: "X"}, "more than one password source (password, password_env)"},
		{"three sources", Feed{Name: "acme", Registry: "acme.example", Username: "u", Password: "s3cr3t-pw", PasswordEnv: "X", PasswordFile: "/f"}, "(password, password_env, password_file); give one"},
		{"password without username", Feed{Name: "acme", Registry: "acme.example", Password: "s3cr3t-pw"}, "password without a username"},
		{"username without password", Feed{Name: "acme", Registry: "acme.example", Username: "u"}, "username without a password"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.feed.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidFeed) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want ErrInvalidFeed saying %q", err, tt.wantErr)
			}
			if tt.feed.Password != "" && strings.Contains(err.Error(), tt.feed.Password) {
				t.Errorf("error %q contains the password", err)
			}
		})
	}
}

func TestFeedCredentials(t *testing.T) {
	dir := t.TempDir()
	withNewline := filepath.Join(dir, "pw")
	empty := filepath.Join(dir, "empty")
	writeTestFile(t, withNewline, "file-secret\r\n")
	writeTestFile(t, empty, "\n")
	t.Setenv("STEVEDORE_TEST_PW", "env-secret")
	t.Setenv("STEVEDORE_TEST_EMPTY", "")

	tests := []struct {
		name    string
		feed    Feed
		want    Credentials
		wantErr string
	}{
		{"anonymous", Feed{Name: "a"}, Credentials{}, ""},
		{"inline password", Feed{Name: "a", Username: "u", Password: "s3cr3t-pw"}, Credentials{Username: "u", Password: "s3cr3t-pw"}, ""},
		{"env", Feed{Name: "a", Username: "u", PasswordEnv: "STEVEDORE_TEST_PW"}, Credentials{Username: "u", Password: "env-secret"}, ""},
		{"file, newline trimmed", Feed{Name: "a", Username: "u", PasswordFile: withNewline}, Credentials{Username: "u", Password: "file-secret"}, ""},
		{"identity token", Feed{Name: "a", IdentityToken: "tok"}, Credentials{IdentityToken: "tok"}, ""},
		{"env unset", Feed{Name: "a", Username: "u", PasswordEnv: "STEVEDORE_TEST_UNSET"}, Credentials{}, "feed a: feed credentials unavailable: environment variable STEVEDORE_TEST_UNSET is not set"},
		{"env empty", Feed{Name: "a", Username: "u", PasswordEnv: "STEVEDORE_TEST_EMPTY"}, Credentials{}, "STEVEDORE_TEST_EMPTY is not set or empty"},
		{"file missing", Feed{Name: "a", Username: "u", PasswordFile: filepath.Join(dir, "nope")}, Credentials{}, "feed a: feed credentials unavailable: password_file: open"},
		{"file empty", Feed{Name: "a", Username: "u", PasswordFile: empty}, Credentials{}, "is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.feed.Credentials()
			if tt.wantErr != "" {
				if !errors.Is(err, ErrFeedCredentials) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Credentials() error = %v, want ErrFeedCredentials saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Credentials() = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestFeedServes(t *testing.T) {
	acme := Feed{Name: "acme", Registry: "Registry.Acme.Example:5000"}
	hub := Feed{Name: "hub", Registry: legacyIndexHost()}
	tests := []struct {
		feed  Feed
		image string
		want  bool
		is    error
	}{
		{acme, "registry.acme.example:5000/base/tools:2", true, nil},
		{acme, "registry.acme.example/base/tools:2", false, nil},
		{acme, "debian", false, nil},
		{hub, "debian", true, nil},
		{hub, defaultHost + "/library/debian:12", true, nil},
		{hub, "Not//A:Reference", false, ErrInvalidReference},
		{Feed{Name: "bad", Registry: "bad"}, "debian", false, ErrInvalidFeed},
	}
	for _, tt := range tests {
		got, err := tt.feed.Serves(tt.image)
		if got != tt.want || !errors.Is(err, tt.is) {
			t.Errorf("%s.Serves(%q) = %v, %v; want %v, %v", tt.feed.Name, tt.image, got, err, tt.want, tt.is)
		}
	}
}

func TestNewResolver(t *testing.T) {
	good := Feed{Name: "acme", Registry: "acme.example"}
	if _, err := NewResolver([]Feed{good, good}, t.TempDir()); !errors.Is(err, ErrInvalidFeed) || !strings.Contains(err.Error(), "acme: defined twice") {
		t.Errorf("duplicate names: err = %v", err)
	}
	if _, err := NewResolver([]Feed{{Name: "acme", Registry: "acme.example", Password: "s3cr3t-pw"}}, t.TempDir()); !errors.Is(err, ErrInvalidFeed) {
		t.Errorf("invalid feed: err = %v", err)
	}
	r, err := NewResolver([]Feed{good}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if f, ok := r.Feed("acme"); !ok || f != good {
		t.Errorf("Feed(acme) = %+v, %v", f, ok)
	}
	if _, ok := r.Feed("nope"); ok {
		t.Error("Feed(nope) found")
	}
}

func TestNewResolverDefaultDockerDir(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", "/from/env")
	r, err := NewResolver(nil, "")
	if err != nil || r.dockerDir != "/from/env" {
		t.Fatalf("dockerDir = %q, %v; want $DOCKER_CONFIG", r.dockerDir, err)
	}
	t.Setenv("DOCKER_CONFIG", "")
	t.Setenv("HOME", "/home/someone")
	if r, _ := NewResolver(nil, ""); r.dockerDir != "/home/someone/.docker" {
		t.Fatalf("dockerDir = %q; want ~/.docker", r.dockerDir)
	}
}

// TestResolveOrder walks the resolution order: inline, the named feed, the
// first feed for the registry, Docker's configuration, anonymous.
func TestResolveOrder(t *testing.T) {
	d := newDockerFixture(t)
	pwFile := filepath.Join(t.TempDir(), "pw")
	writeTestFile(t, pwFile, "file-secret\n")
	t.Setenv("STEVEDORE_TEST_ACME_PW", "env-secret")
	feeds := []Feed{
		{Name: "acme", Registry: "registry.acme.example:5000", Username: "deploy", PasswordEnv: "STEVEDORE_TEST_ACME_PW"},
		{Name: "acme-ro", Registry: "Registry.Acme.Example:5000", Username: "reader", PasswordFile: pwFile},
		{Name: "helped", Registry: "helped.example", Username: "feeduser", Password: "feed-secret"},
		{Name: "public", Registry: "public.example"},
		{Name: "unset", Registry: "unset.example", Username: "u", PasswordEnv: "STEVEDORE_TEST_UNSET"},
		{Name: "hub", Registry: legacyIndexHost(), IdentityToken: "hub-token"},
	}
	r, err := NewResolver(feeds, d.helpers)
	if err != nil {
		t.Fatal(err)
	}
	inline := &Credentials{Username: "stepuser", Password: "step-secret"}
	acmeImage := "registry.acme.example:5000/base/deploy-tools:2"
	tests := []struct {
		name       string
		image      string
		feed       string
		inline     *Credentials
		want       Credentials
		wantSource string
		wantIs     error
		wantErr    string
	}{
		{"inline wins over a named feed", acmeImage, "acme", inline, *inline, "inline credentials", nil, ""},
		{"inline wins over docker config", "helped.example/app:1", "", inline, *inline, "inline credentials", nil, ""},
		{"anonymous inline is no inline", acmeImage, "acme-ro", &Credentials{}, Credentials{Username: "reader", Password: "file-secret"}, "feed acme-ro", nil, ""},
		{"named feed, password_env", acmeImage, "acme", nil, Credentials{Username: "deploy", Password: "env-secret"}, "feed acme", nil, ""},
		{"named feed, password_file, host case ignored", acmeImage, "acme-ro", nil, Credentials{Username: "reader", Password: "file-secret"}, "feed acme-ro", nil, ""},
		{"first feed for the registry", acmeImage, "", nil, Credentials{Username: "deploy", Password: "env-secret"}, "feed acme", nil, ""},
		{"feed wins over docker config", "helped.example/app:1", "", nil, Credentials{Username: "feeduser", Password: "feed-secret"}, "feed helped", nil, ""},
		{"anonymous feed", "public.example/app:1", "", nil, Credentials{}, "feed public", nil, ""},
		{"feed for the default registry by its legacy name", "debian:12", "", nil, Credentials{IdentityToken: "hub-token"}, "feed hub", nil, ""},
		{"named feed for the default registry", defaultHost + "/library/debian:latest", "hub", nil, Credentials{IdentityToken: "hub-token"}, "feed hub", nil, ""},
		{"docker config", "auth.example:5000/app:1", "", nil, Credentials{Username: "cfguser", Password: d.authCfgPW}, "docker config.json", nil, ""},
		{"credential helper", "tokened.example/app:1", "", nil, Credentials{IdentityToken: d.helperTok}, "credential helper docker-credential-fake", nil, ""},
		{"anonymous", "elsewhere.example/app:1", "", nil, Credentials{}, "no credentials", nil, ""},
		{"unknown feed", acmeImage, "nope", nil, Credentials{}, "", ErrUnknownFeed, `unknown feed "nope" for ` + acmeImage},
		{"feed for another registry", "other.example/app:1", "acme", nil, Credentials{}, "", ErrFeedMismatch,
			"feed acme is for registry.acme.example:5000, but image other.example/app:1 is on other.example"},
		{"feed password unavailable", "unset.example/app:1", "", nil, Credentials{}, "", ErrFeedCredentials, "feed unset: feed credentials unavailable"},
		{"invalid image", "Not//A:Reference", "", nil, Credentials{}, "", ErrInvalidReference, "Not//A:Reference"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, source, err := r.Resolve(context.Background(), tt.image, tt.feed, tt.inline)
			if tt.wantIs != nil {
				if !errors.Is(err, tt.wantIs) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %v saying %q", err, tt.wantIs, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if got != tt.want || source != tt.wantSource {
				t.Errorf("Resolve = %+v, %q; want %+v, %q", got, source, tt.want, tt.wantSource)
			}
			for _, secret := range []string{got.Password, got.IdentityToken} {
				if secret != "" && strings.Contains(source, secret) {
					t.Errorf("source %q contains a secret", source)
				}
			}
		})
	}
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
