// Package testenv gives tests the real ground that `make setup` builds: the
// Docker Engine, the local registry and the fixture images, whose names live
// in fixtures.env beside this file.
//
// Outside CI a test whose ground is missing skips with a message saying how to
// make it; in CI (CI=true) it fails, so a broken set-up is never a green run.
package testenv

import (
	"bufio"
	"context"
	_ "embed"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"

	"stevedore/internal/engine"
)

//go:embed fixtures.env
var fixturesEnv string

// Values from fixtures.env.
var (
	Registry         = env("STEVEDORE_REGISTRY")
	RegistryUser     = env("STEVEDORE_REGISTRY_USER")
	RegistryPassword = env("STEVEDORE_REGISTRY_PASSWORD")

	Bookworm = env("STEVEDORE_FIXTURE_BOOKWORM") // glibc 2.36, python3
	Bullseye = env("STEVEDORE_FIXTURE_BULLSEYE") // glibc 2.31
	Musl     = env("STEVEDORE_FIXTURE_MUSL")     // musl loader: rejected
	Static   = env("STEVEDORE_FIXTURE_STATIC")   // no loader: rejected
	NonRoot  = env("STEVEDORE_FIXTURE_NONROOT")  // USER app (1000), failing ENTRYPOINT
)

var parsed = sync.OnceValue(func() map[string]string {
	vals := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(fixturesEnv))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			panic("testenv: fixtures.env: not KEY=VALUE: " + line)
		}
		vals[k] = os.Expand(v, func(name string) string { return vals[name] })
	}
	return vals
})

func env(key string) string {
	v, ok := parsed()[key]
	if !ok {
		panic("testenv: fixtures.env has no " + key)
	}
	return v
}

// InCI reports whether missing ground must fail tests rather than skip them.
func InCI() bool { return os.Getenv("CI") == "true" }

// Unavailable fails the test in CI and skips it elsewhere.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("%s (CI=true: tests that need it fail; run `make setup`)", msg)
	}
	t.Skipf("%s; run `make setup` to provide it", msg)
}

// Docker returns a client for the engine, or fails/skips the test.
func Docker(t testing.TB) (*client.Client, engine.Info) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli, info, err := engine.Connect(ctx)
	if err != nil {
		Unavailable(t, "docker engine: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli, info
}

// RequireRegistry fails/skips the test unless the local registry answers and
// demands credentials.
func RequireRegistry(t testing.TB) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + Registry + "/v2/")
	if err != nil {
		Unavailable(t, "local registry at %s: %v", Registry, err)
		return
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		Unavailable(t, "local registry at %s answers %s to an anonymous request, want 401", Registry, resp.Status)
	}
}

// Image makes sure the engine has the fixture ref, pulling it from the local
// registry with the fixture credentials when it does not.
func Image(t testing.TB, cli *client.Client, ref string) {
	t.Helper()
	ctx := context.Background()
	if _, err := cli.ImageInspect(ctx, ref); err == nil {
		return
	}
	RequireRegistry(t)
	auth, err := registry.EncodeAuthConfig(registry.AuthConfig{Username: RegistryUser, Password: RegistryPassword, ServerAddress: Registry})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := cli.ImagePull(ctx, ref, image.PullOptions{RegistryAuth: auth})
	if err != nil {
		Unavailable(t, "fixture %s: %v", ref, err)
		return
	}
	defer rc.Close()
	if err := jsonmessage.DisplayJSONMessagesStream(rc, io.Discard, 0, false, nil); err != nil {
		Unavailable(t, "fixture %s: %v", ref, err)
	}
}
