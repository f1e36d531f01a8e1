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
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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
	Bullseye = env("STEVEDORE_FIXTURE_BULLSEYE") // glibc 2.31, python3
	Musl     = env("STEVEDORE_FIXTURE_MUSL")     // musl loader: rejected
	Static   = env("STEVEDORE_FIXTURE_STATIC")   // no loader: rejected
	NonRoot  = env("STEVEDORE_FIXTURE_NONROOT")  // USER app (1000), failing ENTRYPOINT
	// bash, python3, curl, openssl, jq, git: what deployment steps run in.
	WorkerTools = env("STEVEDORE_FIXTURE_WORKER_TOOLS")
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

var (
	bundleOnce sync.Once
	bundleDir  string
	bundleErr  error

	hostBundleOnce sync.Once
	hostBundleDir  string
	hostBundleErr  error
)

// BundleDir builds the tool bundle once per test process, as `make build`
// does (the runner by the same script, linked against the glibc sysroot, and
// its bundle.json), and returns its directory. The directory is removed when
// the process ends only if the caller's TestMain calls CleanupBundle.
func BundleDir(t testing.TB) string {
	t.Helper()
	bundleOnce.Do(func() { bundleDir, bundleErr = buildBundle() })
	return bundleOrSkip(t, bundleDir, bundleErr)
}

// HostGlibcBundleDir builds, once per test process, a second tool bundle
// whose runner is linked against the build host's own glibc rather than the
// sysroot, as the runner was built before it had a glibc floor: it needs the
// host's glibc (2.34 on Debian 12), so older images must be rejected with it.
// CleanupBundle removes it too.
func HostGlibcBundleDir(t testing.TB) string {
	t.Helper()
	hostBundleOnce.Do(func() { hostBundleDir, hostBundleErr = buildBundle("--host-glibc") })
	return bundleOrSkip(t, hostBundleDir, hostBundleErr)
}

func bundleOrSkip(t testing.TB, dir string, err error) string {
	t.Helper()
	if err != nil {
		if InCI() {
			t.Fatalf("build the tool bundle: %v", err)
		}
		t.Skipf("build the tool bundle (needs gcc, and root or the sysroot; run `make setup`): %v", err)
	}
	return dir
}

// CleanupBundle removes the bundles BundleDir and HostGlibcBundleDir built, if any.
func CleanupBundle() {
	for _, dir := range []string{bundleDir, hostBundleDir} {
		if dir != "" {
			os.RemoveAll(dir)
		}
	}
}

// BuildRunnerScript is scripts/build-runner.sh, the one recipe for the
// runner, which `make build` runs too.
func BuildRunnerScript() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		panic("testenv: no caller information to locate the repository")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "scripts", "build-runner.sh")
}

// BuildRunner builds the step runner to out with scripts/build-runner.sh,
// given args before the output path (e.g. --host-glibc).
func BuildRunner(out string, args ...string) error {
	cmd := exec.Command("bash", append(append([]string{BuildRunnerScript()}, args...), out)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, out)
	}
	return nil
}

// buildBundle builds a bundle with scripts/build-runner.sh, given args
// before the output path (e.g. --host-glibc).
func buildBundle(args ...string) (string, error) {
	dir, err := os.MkdirTemp("", "stevedore-bundle-")
	if err != nil {
		return "", err
	}
	// Mounted into containers whose user may not be root.
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	if err := BuildRunner(filepath.Join(dir, "stevedore-step"), args...); err != nil {
		return "", err
	}
	// Written by the same code as `stevedore bundle manifest`, through the
	// command so that testenv does not import the executor it tests.
	cmd := exec.Command("go", "run", "stevedore/cmd/stevedore", "bundle", "manifest", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("bundle manifest: %w: %s", err, out)
	}
	return dir, nil
}

var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

// Binary builds the stevedore command once per test process, with the
// tool bundle beside it (bundle/, where the agent looks by default), for
// tests that run, signal and kill real processes. The directory goes with
// CleanupBundle.
func Binary(t testing.TB) string {
	t.Helper()
	bundle := BundleDir(t)
	binaryOnce.Do(func() {
		dir := filepath.Join(bundle, "bin")
		if binaryErr = os.MkdirAll(dir, 0o755); binaryErr != nil {
			return
		}
		binaryPath = filepath.Join(dir, "stevedore")
		cmd := exec.Command("go", "build", "-o", binaryPath, "stevedore/cmd/stevedore")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binaryErr = fmt.Errorf("%w: %s", err, out)
			return
		}
		binaryErr = os.Symlink(bundle, filepath.Join(dir, "bundle"))
	})
	if binaryErr != nil {
		t.Fatalf("build stevedore: %v", binaryErr)
	}
	return binaryPath
}

// FreeAddr returns a loopback address nothing listens on now, for a
// process a test starts to listen on.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
