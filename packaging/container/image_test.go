package container_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"stevedore/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.CleanupBundle()
	os.Exit(code)
}

func docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// The server's image runs, with its built-in worker, on the host's engine
// (the socket mounted, the data dir at the same path inside and out): a
// host step runs in the server's container and a container step in a
// sibling container, both submitted with `stevedore run --server`.
func TestServerImageWithBuiltinWorker(t *testing.T) {
	cli, _ := testenv.Docker(t)
	testenv.Image(t, cli, testenv.Bookworm)
	bin := testenv.Binary(t)

	// The build context: the binary and the bundle, as `make build` lays them out.
	ctxDir := t.TempDir()
	bundle, err := filepath.EvalSymlinks(filepath.Join(filepath.Dir(bin), "bundle"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", bin, ctxDir+"/stevedore").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if out, err := exec.Command("cp", "-a", bundle, ctxDir+"/bundle").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	suffix := make([]byte, 4)
	rand.Read(suffix)
	tag := "stevedore-server-test:" + hex.EncodeToString(suffix)
	docker(t, "build", "-q", "--build-arg", "BASE_IMAGE="+testenv.Bookworm, "-t", tag, "-f", "Dockerfile", ctxDir)
	t.Cleanup(func() { exec.Command("docker", "image", "rm", "-f", tag).Run() })

	data := t.TempDir()
	os.Chmod(data, 0o755)
	name := "stevedore-server-test-" + hex.EncodeToString(suffix)
	docker(t, "run", "-d", "--name", name,
		"-e", "ADMIN_USERNAME=admin", "-e", "ADMIN_PASSWORD=image-test-password", "-e", "STEVEDORE_DATA_DIR="+data,
		"-v", data+":"+data, "-v", "/var/run/docker.sock:/var/run/docker.sock",
		"-p", "127.0.0.1::8080", tag)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("docker", "logs", name).CombinedOutput()
			t.Logf("server container log:\n%s", out)
		}
		exec.Command("docker", "rm", "-f", name).Run()
	})
	addr := docker(t, "port", name, "8080/tcp")
	if i := strings.LastIndex(addr, "\n"); i >= 0 {
		addr = addr[:i] // an IPv6 line may follow
	}
	base := "http://" + addr
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server in the container does not answer on %s", base)
		}
	}

	cases := []struct {
		name   string
		args   []string
		code   int
		stdout string
	}{
		{"host step in the server's container", []string{"--script", `. /etc/os-release; echo "host step on $ID $VERSION_ID"`}, 0, "host step on debian 12"},
		// The engine mounts the workspace and the staged bundle from the
		// data dir: a wrong path and the step could not start.
		{"container step beside it", []string{"--image", testenv.Bookworm, "--pull", "always", "--registry-user", testenv.RegistryUser, "--registry-password", testenv.RegistryPassword,
			"--script", `echo "container step with $(python3 --version)" > out.txt; cat out.txt; exit 4`}, 4, "container step with Python 3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			run := exec.Command(bin, append([]string{"run", "--server", base, "--pool", "builtin", "--user", "admin", "--password", "image-test-password"}, c.args...)...)
			run.Stdout, run.Stderr = &stdout, &stderr
			err := run.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != c.code || !strings.Contains(stdout.String(), c.stdout) {
				t.Errorf("exit %d, stdout %q; want %d and %q\nstderr: %s", code, stdout.String(), c.code, c.stdout, stderr.String())
			}
		})
	}
}
