package container_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"stevedore/internal/testenv"
)

// serverImageRebuilt builds the server's image a second time, after
// serverImage: the same Dockerfile and context with another label, so it
// is a distinct image, as a new release's is.
func serverImageRebuilt(t *testing.T) string {
	t.Helper()
	return buildImage(t, &rebuilt, "stevedore-server-test", "Dockerfile", "", "--label", "io.stevedore.test.build=second")
}

// upgradeEnv is what both containers of an upgrade are given: the same
// master key, database and admin.
type upgradeEnv struct {
	masterKey, db string
	// volumes are docker run's -v options for the state kept in files.
	volumes []string
}

const upgradeEmail = "ops@example.com"

// startUpgradeServer runs the image on the host's network (PostgreSQL is
// on the host's loopback), without an engine of its own (host steps only),
// its ports on free loopback addresses. The container is removed, with its
// anonymous volumes, when the test ends.
func startUpgradeServer(t *testing.T, tag string, u upgradeEnv) server {
	t.Helper()
	name := "stevedore-upgrade-test-" + randomSuffix()
	httpAddr, pollingAddr := testenv.FreeAddr(t), testenv.FreeAddr(t)
	run := []string{"run", "-d", "--name", name, "--network", "host", "-e", "DISABLE_DIND=Y",
		"-e", "ADMIN_USERNAME=admin", "-e", "ADMIN_PASSWORD=image-test-password", "-e", "ADMIN_EMAIL=" + upgradeEmail,
		"-e", "MASTER_KEY=" + u.masterKey, "-e", "DB_CONNECTION_STRING=" + u.db}
	run = append(append(run, u.volumes...), tag, "--http", httpAddr, "--polling", pollingAddr)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("docker", "logs", name).CombinedOutput()
			t.Logf("server container %s log:\n%s", name, out)
		}
		exec.Command("docker", "rm", "-f", "-v", name).Run()
	})
	docker(t, run...)
	s := server{name: name, base: "http://" + httpAddr}
	s.waitHealthy(t)
	return s
}

// get reads path of the server's API as the admin into v (nil: the body
// is returned as it is).
func (s *server) get(t *testing.T, path string, v any) []byte {
	t.Helper()
	req, _ := http.NewRequest("GET", s.base+path, nil)
	req.SetBasicAuth("admin", "image-test-password")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", path, resp.Status, b)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("GET %s: %v: %s", path, err, b)
		}
	}
	return b
}

// runResult is what `stevedore run --result` writes, as far as read here.
type runResult struct {
	Ticket          string            `json:"ticket"`
	Outcome         string            `json:"outcome"`
	OutputVariables map[string]string `json:"output_variables"`
}

// runStep runs script on the server's built-in worker with
// `stevedore run --server` and returns its result; it must succeed.
func (s *server) runStep(t *testing.T, bin, script string) runResult {
	t.Helper()
	file := filepath.Join(t.TempDir(), "result.json")
	var stdout, stderr bytes.Buffer
	run := s.step(bin, "--queue-timeout", "2m", "--script", script, "--result", file)
	run.Stdout, run.Stderr = &stdout, &stderr
	if err := run.Run(); err != nil {
		t.Fatalf("stevedore run: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	var res runResult
	if b, err := os.ReadFile(file); err != nil || json.Unmarshal(b, &res) != nil || res.Outcome != "SUCCEEDED" {
		t.Fatalf("result %+v (%v)\nstdout: %s\nstderr: %s", res, err, stdout.String(), stderr.String())
	}
	return res
}

// An upgrade is a new container with the same master key and database:
// two image builds in a row against one PostgreSQL. The first container
// runs a step with a sensitive output and is removed; the second, of the
// second build, with a data dir of its own, presents the same identity,
// shows that step, its log and its outputs (the sealed one opened with the
// same key), lets the admin sign in, runs a new step with its built-in
// worker, and prints the same master key.
func TestServerImageUpgrade(t *testing.T) {
	db := testenv.Postgres(t)
	first := serverImage(t)
	bin := testenv.Binary(t)
	key := make([]byte, 16)
	rand.Read(key)
	u := upgradeEnv{masterKey: base64.StdEncoding.EncodeToString(key), db: db}
	// What the database does not hold is in files, kept on volumes of
	// their own as a deployment keeps them (the chart: its data claim): the
	// task logs and artifacts, the image's volumes. The data dir is not
	// kept: the identities in it, the server's that agents pin and the
	// built-in worker's that the database knows it by, are the database's.
	for _, dir := range []string{"/taskLogs", "/artifacts"} {
		vol := "stevedore-upgrade-test-" + randomSuffix()
		docker(t, "volume", "create", vol)
		t.Cleanup(func() { exec.Command("docker", "volume", "rm", "-f", vol).Run() })
		u.volumes = append(u.volumes, "-v", vol+":"+dir)
	}
	thumbprint := func(name string) string {
		t.Helper()
		out, err := exec.Command("docker", "exec", name, "stevedore", "cert", "--state-dir", "/var/lib/stevedore-server").Output()
		if err != nil {
			t.Fatalf("stevedore cert in %s: %v", name, err)
		}
		return strings.TrimSpace(string(out))
	}

	s1 := startUpgradeServer(t, first, u)
	old := s1.runStep(t, bin, `echo "before the upgrade: $((6*7))"
set_variable Version 1.2.3
set_variable Token "tok-$((40000+2))" sensitive`)
	if old.OutputVariables["Token"] != "tok-40002" {
		t.Fatalf("the first step's outputs %v", old.OutputVariables)
	}
	firstThumbprint := thumbprint(s1.name)
	docker(t, "stop", "-t", "30", s1.name)
	// 0: the server's own end on SIGTERM, not the kill at the timeout.
	if code := docker(t, "inspect", "-f", "{{.State.ExitCode}}", s1.name); code != "0" {
		t.Errorf("the first container exited %s on docker stop, want 0", code)
	}
	docker(t, "rm", "-v", s1.name)

	second := serverImageRebuilt(t)
	firstID, secondID := docker(t, "image", "inspect", "-f", "{{.Id}}", first), docker(t, "image", "inspect", "-f", "{{.Id}}", second)
	if firstID == secondID {
		t.Fatalf("the second build is the first image, %s", firstID)
	}
	s2 := startUpgradeServer(t, second, u)
	if id := docker(t, "inspect", "-f", "{{.Image}}", s2.name); id != secondID {
		t.Fatalf("the second container runs %s, want the second build %s", id, secondID)
	}

	t.Run("the old step", func(t *testing.T) {
		var step struct {
			State, Outcome  string
			OutputVariables map[string]string `json:"output_variables"`
		}
		s2.get(t, "/api/steps/"+old.Ticket, &step)
		if step.State != "complete" || step.Outcome != "SUCCEEDED" || step.OutputVariables["Version"] != "1.2.3" || step.OutputVariables["Token"] == "tok-40002" {
			t.Errorf("the step after the upgrade: %+v; want complete, SUCCEEDED, Version 1.2.3 and Token masked", step)
		}
	})
	t.Run("its log", func(t *testing.T) {
		if log := s2.get(t, "/api/steps/"+old.Ticket+"/log?format=text", nil); !bytes.Contains(log, []byte("before the upgrade: 42")) {
			t.Errorf("the step's log after the upgrade:\n%s", log)
		}
	})
	t.Run("its sealed outputs open with the same key", func(t *testing.T) {
		var outs struct {
			OutputVariables map[string]string `json:"output_variables"`
		}
		s2.get(t, "/api/steps/"+old.Ticket+"/outputs", &outs)
		if outs.OutputVariables["Token"] != "tok-40002" || outs.OutputVariables["Version"] != "1.2.3" {
			t.Errorf("the step's outputs after the upgrade: %v", outs.OutputVariables)
		}
	})
	t.Run("the admin signs in", func(t *testing.T) {
		body, _ := json.Marshal(map[string]string{"username": "admin", "password": "image-test-password"})
		resp, err := http.Post(s2.base+"/web/login", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var info struct{ Name, Role, Email string }
		if err := json.NewDecoder(resp.Body).Decode(&info); err != nil || resp.StatusCode != http.StatusOK || info.Name != "admin" || info.Email != upgradeEmail {
			t.Errorf("sign-in: %s %+v (%v); want the admin, email %s", resp.Status, info, err, upgradeEmail)
		}
	})
	t.Run("a new step runs", func(t *testing.T) {
		res := s2.runStep(t, bin, `set_variable After "$((1+1))"`)
		if res.Ticket == old.Ticket || res.OutputVariables["After"] != "2" {
			t.Errorf("the new step: %+v", res)
		}
	})
	t.Run("the same identity, which agents pin", func(t *testing.T) {
		if got := thumbprint(s2.name); got != firstThumbprint {
			t.Errorf("the second container's thumbprint %s, the first's %s", got, firstThumbprint)
		}
	})
	t.Run("show-master-key prints the same key", func(t *testing.T) {
		out, err := exec.Command("docker", "exec", s2.name, "stevedore", "server", "show-master-key").Output()
		if got := strings.TrimSpace(string(out)); err != nil || got != u.masterKey {
			t.Errorf("show-master-key in the second container: %q (%v); want %q", got, err, u.masterKey)
		}
	})
}
