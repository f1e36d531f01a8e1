package container_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"stevedore/internal/testenv"
)

// agentImage builds the agent's image as `make agent-image` does: the
// repository's Dockerfile, bin/ of the context as `make build` lays it out.
func agentImage(t *testing.T) string {
	t.Helper()
	return buildImage(t, &builtAgent, "stevedore-agent-test", "../../Dockerfile", "bin")
}

// The agent's image runs as a polling worker of a server (started here, on
// the host), driving the host's engine through its socket with its state
// dir at the same path inside and out: it registers with the server's
// registration token, runs a host step in its container and a container
// step beside it, and `stevedore agent drain` in the container (a pod's
// preStop) ends it cleanly.
func TestAgentImage(t *testing.T) {
	testenv.RequireRegistry(t)
	tag := agentImage(t)
	bin := testenv.Binary(t)

	const token = "agent-image-test-registration-token"
	hs := startHostServer(t, bin, token)

	// The host's engine mounts workspaces from the state dir's host path.
	state := t.TempDir()
	os.Chmod(state, 0o755)
	name := "stevedore-agent-test-" + randomSuffix()
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("docker", "logs", name).CombinedOutput()
			t.Logf("agent container log:\n%s", out)
		}
		exec.Command("docker", "rm", "-f", "-v", name).Run()
	})
	// The host's network: the server listens on the host's loopback.
	docker(t, "run", "-d", "--name", name, "--network", "host",
		"-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", state+":"+state, "-e", "STEVEDORE_STATE_DIR="+state,
		"-e", "STEVEDORE_REGISTRATION_TOKEN="+token, tag,
		"--server", hs.polling, "--server-thumbprint", hs.thumbprint,
		"--register", "http://"+hs.http, "--pool", "agent-image", "--name", name)

	s := server{name: name, base: "http://" + hs.http, pool: "agent-image"}
	s.runSteps(t, bin, []stepCase{
		{"host step in the agent's container", []string{"--queue-timeout", "2m", "--script", `. /etc/os-release; echo "host step on $ID $VERSION_ID in $(cat /proc/1/comm)"`}, 0, "host step on debian 12 in tini"},
		// The engine mounts the workspace and the staged bundle from the
		// state dir: at another path the step could not start.
		{"container step on the host's engine", append([]string{"--queue-timeout", "2m"}, containerStep(`echo "container step with $(python3 --version)"; exit 3`)...), 3, "container step with Python 3"},
	})

	t.Run("drain in the container ends the agent", func(t *testing.T) {
		begin := time.Now()
		// As the chart's preStop: the state dir from the environment. The
		// exec ends with the container, often before it can say so.
		out, execErr := exec.Command("docker", "exec", name, "/bin/sh", "-c", `exec /usr/local/bin/stevedore agent drain --state-dir "$STEVEDORE_STATE_DIR"`).CombinedOutput()
		if code := docker(t, "wait", name); code != "0" {
			t.Errorf("the agent exited %s after the drain; want 0 (drain: %v %s)", code, execErr, out)
		}
		if logs, _ := exec.Command("docker", "logs", name).CombinedOutput(); !strings.Contains(string(logs), "drained; exiting") {
			t.Errorf("the agent did not drain (drain: %v %s)", execErr, out)
		}
		t.Logf("drained in %s", time.Since(begin).Round(10*time.Millisecond))
	})
}

// hostServer is a server the test runs on the host's loopback.
type hostServer struct {
	http, polling, thumbprint string
}

// startHostServer runs `stevedore server` on loopback with the image
// tests' admin and the registration token; it ends with the test.
func startHostServer(t *testing.T, bin, token string) hostServer {
	t.Helper()
	data := t.TempDir()
	thumbprint, err := exec.Command(bin, "cert", "--state-dir", data).Output()
	if err != nil {
		t.Fatalf("stevedore cert: %v", err)
	}
	hs := hostServer{http: testenv.FreeAddr(t), polling: testenv.FreeAddr(t), thumbprint: strings.TrimSpace(string(thumbprint))}
	srv := exec.Command(bin, "server", "--data-dir", data, "--http", hs.http, "--polling", hs.polling)
	srv.Env = append(os.Environ(), "ADMIN_USERNAME=admin", "ADMIN_PASSWORD=image-test-password", "STEVEDORE_REGISTRATION_TOKEN="+token, "MASTER_KEY=")
	serverLog := filepath.Join(t.TempDir(), "server.log")
	f, err := os.Create(serverLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	srv.Stdout, srv.Stderr = f, f
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Kill()
		srv.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(serverLog)
			t.Logf("server log:\n%s", b)
		}
	})
	return hs
}
