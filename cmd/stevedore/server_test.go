package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"stevedore/internal/testenv"
	"stevedore/server"
)

const testAdmin, testPassword = "admin", "server-test-password"

// proc is a stevedore process of a test, its output in a file.
type proc struct {
	cmd *exec.Cmd
	out string
}

func start(t *testing.T, logName string, args ...string) *proc {
	t.Helper()
	return startEnv(t, logName, nil, args...)
}

// startEnv is start with more environment variables.
func startEnv(t *testing.T, logName string, env []string, args ...string) *proc {
	t.Helper()
	out := filepath.Join(t.TempDir(), logName)
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(testenv.Binary(t), args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(append(os.Environ(), "ADMIN_USERNAME="+testAdmin, "ADMIN_PASSWORD="+testPassword), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, out: out}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Signal(syscall.SIGTERM)
			p.cmd.Wait()
		}
		if t.Failed() {
			b, _ := os.ReadFile(out)
			t.Logf("%s:\n%s", logName, b)
		}
	})
	return p
}

func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
}

func thumbprint(t *testing.T, dir string) string {
	t.Helper()
	out, err := exec.Command(testenv.Binary(t), "cert", "--state-dir", dir).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// waitHTTP waits until the API at base answers.
func waitHTTP(t *testing.T, base string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	// Only whether it answers: certificates are the tests' business.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for {
		resp, err := hc.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server at %s did not answer: %v", base, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serverSetup is a server's data dir, ports and command line.
type serverSetup struct {
	dataDir, http, polling, thumbprint string
	scheme                             string
	args                               []string
}

func newServerSetup(t *testing.T, extra ...string) *serverSetup {
	root := t.TempDir()
	os.Chmod(root, 0o755)
	s := &serverSetup{dataDir: filepath.Join(root, "server"), http: testenv.FreeAddr(t), polling: testenv.FreeAddr(t), scheme: "http"}
	if slices.Contains(extra, "--http-tls") {
		s.scheme = "https"
	}
	s.thumbprint = thumbprint(t, s.dataDir)
	s.args = append([]string{"server", "--data-dir", s.dataDir, "--http", s.http, "--polling", s.polling, "--log-level", "debug"}, extra...)
	// STEVEDORE_TEST_BACKEND=postgres: every start of this server, a
	// restart too, keeps its state in the same database of the test's own.
	if testenv.Backend(t) == testenv.BackendPostgres {
		s.args = append(s.args, "--db", testenv.Postgres(t))
	}
	return s
}

func (s *serverSetup) url() string { return s.scheme + "://" + s.http }

func (s *serverSetup) start(t *testing.T, env ...string) *proc {
	p := startEnv(t, "server.log", env, s.args...)
	waitHTTP(t, s.url())
	return p
}

// The server is killed with SIGKILL and restarted in the middle of a step
// that prints numbered lines, submitted with `stevedore run --server`: the
// run rides it out, prints every line once, in order, and exits with the
// step's code; the task log holds every line once.
func TestServerKilledMidStepAndRestarted(t *testing.T) {
	agentDir := filepath.Join(t.TempDir(), "agent")
	agentTP := thumbprint(t, agentDir)
	s := newServerSetup(t, "--trust", agentTP)
	srv := s.start(t)
	start(t, "agent.log", "agent", "--state-dir", agentDir, "--server", s.polling, "--server-thumbprint", s.thumbprint,
		"--name", "w1", "--pool", "linux", "--log-level", "debug")

	var stdout, stderr bytes.Buffer
	result := filepath.Join(t.TempDir(), "result.json")
	run := exec.Command(testenv.Binary(t), "run", "--server", s.url(), "--pool", "linux", "--user", testAdmin,
		"--result", result, "--script", "for i in $(seq 1 60); do echo line $i; sleep 0.05; done; echo done >&2; exit 3")
	run.Env = append(os.Environ(), "STEVEDORE_PASSWORD="+testPassword)
	run.Stdout, run.Stderr = &stdout, &stderr
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill the server once the task log holds some lines.
	deadline := time.Now().Add(time.Minute)
	for lines := 0; lines < 15; lines = taskLogLines(t, s.dataDir) {
		if time.Now().After(deadline) {
			t.Fatalf("the step did not start; run's stderr: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	srv.kill()
	time.Sleep(500 * time.Millisecond)
	s.start(t)

	err := run.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("run: %v, want exit code 3\nstderr: %s", err, stderr.String())
	}
	want := make([]string, 60)
	for i := range want {
		want[i] = fmt.Sprintf("line %d", i+1)
	}
	if got := strings.TrimSpace(stdout.String()); got != strings.Join(want, "\n") {
		t.Errorf("run's stdout:\n%s", got)
	}
	if !strings.Contains(stderr.String(), "done") {
		t.Errorf("run's stderr lacks the step's stderr: %s", stderr.String())
	}
	var res runResult
	if b, err := os.ReadFile(result); err != nil || json.Unmarshal(b, &res) != nil || res.Outcome != "FAILED" || res.ExitCode == nil || *res.ExitCode != 3 {
		t.Errorf("result %s: %+v (%v)", result, res, err)
	}
	// The task log: every line once, gapless.
	entries := readTaskLogFile(t, s.dataDir)
	var out []string
	for i, e := range entries {
		if e.Sequence != uint64(i+1) {
			t.Fatalf("task log entry %d has sequence %d", i, e.Sequence)
		}
		if e.Source == "stdout" {
			out = append(out, e.Text)
		}
	}
	if strings.Join(out, "\n") != strings.Join(want, "\n") {
		t.Errorf("task log stdout:\n%s", strings.Join(out, "\n"))
	}
}

// The built-in worker runs inside the server, connected over the polling
// port; `stevedore run --server` reaches it through the pool "builtin".
func TestBuiltinWorker(t *testing.T) {
	s := newServerSetup(t, "--builtin-worker")
	s.start(t)
	cases := []runCase{
		{"succeeds", []string{"--pool", "builtin", "--script", "echo hello from $(hostname)"}, testPassword, 0, "hello from"},
		{"exit code", []string{"--worker", "builtin", "--script", "exit 7"}, testPassword, 7, ""},
		{"wrong password", []string{"--pool", "builtin", "--script", "true"}, "nope", exitCannotRun, ""},
		{"no pool or worker", []string{"--script", "true"}, testPassword, exitCannotRun, ""},
	}
	runCases(t, s, nil, cases)
	// Its metrics beside the server's, with no credentials, as /metrics.
	for path, want := range map[string]string{
		"/metrics/builtin-worker": `stevedore_agent_steps_finished_total{outcome="FAILED"} 1`,
		"/metrics":                `stevedore_server_steps_completed_total{outcome="SUCCEEDED"} 1`,
	} {
		resp, err := http.Get(s.url() + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %d, no %q in:\n%.2000s", path, resp.StatusCode, want, b)
		}
	}
}

// The API over HTTPS with the server's own certificate: a client pinning
// its thumbprint gets through; one pinning another, or trusting the
// system's CAs, is refused at once (125), not retried.
func TestServerAPIOverHTTPS(t *testing.T) {
	s := newServerSetup(t, "--builtin-worker", "--http-tls")
	s.start(t)
	other := thumbprint(t, filepath.Join(t.TempDir(), "other"))
	started := time.Now()
	runCases(t, s, []string{"--server-thumbprint", s.thumbprint}, []runCase{
		{"pinned", []string{"--pool", "builtin", "--script", "echo over https"}, testPassword, 0, "over https"},
	})
	runCases(t, s, []string{"--server-thumbprint", other}, []runCase{
		{"another thumbprint", []string{"--pool", "builtin", "--script", "true"}, testPassword, exitCannotRun, ""},
	})
	runCases(t, s, nil, []runCase{
		{"system CAs", []string{"--pool", "builtin", "--script", "true"}, testPassword, exitCannotRun, ""},
	})
	if took := time.Since(started); took > time.Minute {
		t.Errorf("the refusals took %v: were they retried?", took)
	}
}

// runCase is one `stevedore run --server` and what it must end with.
type runCase struct {
	name     string
	args     []string
	password string
	code     int
	stdout   string
}

// runCases runs `stevedore run --server` against s once per case, with
// common flags added.
func runCases(t *testing.T, s *serverSetup, common []string, cases []runCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"run", "--server", s.url(), "--user", testAdmin, "--password", c.password}, common...)
			code, stdout, stderr := runStevedore(t, nil, append(args, c.args...)...)
			if code != c.code || !strings.Contains(stdout, c.stdout) {
				t.Errorf("exit %d, stdout %q; want %d and %q\nstderr: %s", code, stdout, c.code, c.stdout, stderr)
			}
		})
	}
}

// runStevedore runs the stevedore binary to its end, with more
// environment variables, and returns its exit code and output.
func runStevedore(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := exec.Command(testenv.Binary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errOut.String()
}

func taskLogLines(t *testing.T, dataDir string) int {
	return len(readTaskLogFile(t, dataDir))
}

// readTaskLogFile reads the one task log in dataDir.
func readTaskLogFile(t *testing.T, dataDir string) []server.LogEntry {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dataDir, server.TaskLogsDir, "*.log"))
	if len(files) != 1 {
		return nil
	}
	f, err := os.Open(files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []server.LogEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var e server.LogEntry
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			break // a line being written
		}
		out = append(out, e)
	}
	return out
}

// An agent of a cloud pool registers its own thumbprint with the server's
// registration token, then polls and runs steps; with a wrong token it
// stops at start-up, saying why.
func TestAgentRegistersWithTheToken(t *testing.T) {
	s := newServerSetup(t) // no --trust
	s.start(t, "STEVEDORE_REGISTRATION_TOKEN=join-token")
	dir := t.TempDir()
	bad := exec.Command(testenv.Binary(t), "agent", "--state-dir", filepath.Join(dir, "bad"), "--server", s.polling,
		"--server-thumbprint", s.thumbprint, "--register", s.url())
	bad.Env = append(os.Environ(), "STEVEDORE_REGISTRATION_TOKEN=wrong")
	out, err := bad.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "bad registration token") {
		t.Errorf("an agent with a wrong token: %v\n%s", err, out)
	}
	startEnv(t, "agent.log", []string{"STEVEDORE_REGISTRATION_TOKEN=join-token"}, "agent", "--state-dir", filepath.Join(dir, "good"),
		"--server", s.polling, "--server-thumbprint", s.thumbprint, "--register", s.url(), "--name", "cloud-1", "--pool", "cloud")
	runCases(t, s, nil, []runCase{
		{"a step on the registered worker", []string{"--pool", "cloud", "--script", "echo joined"}, testPassword, 0, "joined"},
	})
}

// Ctrl-C on `stevedore run --server` cancels the step through the API.
func TestRunThroughServerInterruptCancels(t *testing.T) {
	s := newServerSetup(t, "--builtin-worker")
	s.start(t)
	interruptRun(t, s.url(), "builtin")
}

// interruptRun runs sixty seconds of lines through `stevedore run --server
// url` in pool, sends it Ctrl-C once "line 3" has come (so while the step
// runs: its log is followed live), and checks that the run ends with the
// exit code of the step's TERM trap, 9.
func interruptRun(t *testing.T, url, pool string) {
	t.Helper()
	run, stdout, stderr := startRunUntil(t, "line 3", "--server", url, "--pool", pool, "--user", testAdmin, "--password", testPassword,
		"--script", "trap 'echo got TERM; exit 9' TERM; for i in $(seq 1 600); do echo line $i; sleep 0.1; done")
	run.Process.Signal(syscall.SIGINT)
	err := run.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 9 || !strings.Contains(stdout.String(), "got TERM") {
		t.Fatalf("run: %v, want the script's exit code 9\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
}

// `stevedore run --server` with an API key, by --token or STEVEDORE_TOKEN,
// instead of the admin's password: a submitter's key runs the step, which
// is recorded as the key's; a reader's key is not allowed to submit and an
// unknown key is refused, each at once with 125 and saying why.
func TestRunThroughServerWithAPIKey(t *testing.T) {
	s := newServerSetup(t, "--builtin-worker")
	s.start(t)
	admin := &apiClient{base: s.url(), user: testAdmin, pass: testPassword, http: http.DefaultClient}
	key := func(name string, role server.Role) string {
		var k server.NewAPIKey
		if err := admin.call(t.Context(), "POST", "/api/keys", server.CreateKeyBody{Name: name, Role: role}, &k); err != nil {
			t.Fatal(err)
		}
		return k.Key
	}
	ci, dashboard := key("ci", server.RoleSubmitter), key("dashboard", server.RoleReader)
	cases := []struct {
		name           string
		env, args      []string
		code           int
		stdout, stderr string
	}{
		{"--token", nil, []string{"--token", ci, "--script", "echo with a key"}, 0, "with a key", ""},
		{"STEVEDORE_TOKEN", []string{"STEVEDORE_TOKEN=" + ci}, []string{"--script", "echo from the environment"}, 0, "from the environment", ""},
		{"the token over a wrong password", nil, []string{"--user", testAdmin, "--password", "wrong", "--token", ci, "--script", "echo token"}, 0, "token", ""},
		{"a reader's key", nil, []string{"--token", dashboard, "--script", "true"}, exitCannotRun, "", "needs the submitter role"},
		{"an unknown key", nil, []string{"--token", server.APIKeyPrefix + "nope", "--script", "true"}, exitCannotRun, "", "refused the credentials"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, stderr := runStevedore(t, c.env, append([]string{"run", "--server", s.url(), "--pool", "builtin"}, c.args...)...)
			if code != c.code || !strings.Contains(stdout, c.stdout) || !strings.Contains(stderr, c.stderr) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, %q and %q", code, stdout, stderr, c.code, c.stdout, c.stderr)
			}
		})
	}
	var steps []server.StepView
	if err := admin.call(t.Context(), "GET", "/api/steps", nil, &steps); err != nil {
		t.Fatal(err)
	}
	if len(steps) != 3 {
		t.Fatalf("%d steps, want the 3 submitted with the key", len(steps))
	}
	for _, v := range steps {
		if v.SubmittedBy != "key:ci" || v.Outcome != "SUCCEEDED" {
			t.Errorf("step %s: submitted by %q, outcome %s; want key:ci, SUCCEEDED", v.ID, v.SubmittedBy, v.Outcome)
		}
	}
}

// `stevedore run --server` passes --label and --queue-timeout on: a step
// asking for a label no worker has says, while it waits, which labels it
// waits for, then ends TIMED_OUT in the queue (125, as a step that never ran).
func TestRunThroughServerLabelsAndQueueTimeout(t *testing.T) {
	s := newServerSetup(t, "--builtin-worker")
	s.start(t)
	common := []string{"run", "--server", s.url(), "--user", testAdmin, "--password", testPassword, "--pool", "builtin", "--queue-timeout", "5s"}
	tests := []struct {
		name       string
		args       []string
		code       int
		stdout     string
		stderrWant []string
	}{
		{"no worker has the label", []string{"--label", "zone=a", "--script", "echo ran"}, exitCannotRun, "",
			[]string{"waits: no worker of pool builtin has the labels zone=a", "timed_out", "within 5s"}},
		{"no label asked", []string{"--script", "echo ran"}, 0, "ran", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runStevedore(t, nil, append(common, tt.args...)...)
			if code != tt.code || !strings.Contains(stdout, tt.stdout) {
				t.Fatalf("exit %d stdout %q, want %d and %q\nstderr: %s", code, stdout, tt.code, tt.stdout, stderr)
			}
			for _, w := range tt.stderrWant {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not say %q:\n%s", w, stderr)
				}
			}
		})
	}
}

// `stevedore run --server --result` writes the result file direct mode
// does, sensitive output variables' values too: the step views mask them,
// so it reads them from .../outputs with the submitter's own key.
func TestRunThroughServerResultHasSensitiveOutputs(t *testing.T) {
	s := newServerSetup(t, "--builtin-worker")
	s.start(t)
	admin := &apiClient{base: s.url(), user: testAdmin, pass: testPassword, http: http.DefaultClient}
	var key server.NewAPIKey
	if err := admin.call(t.Context(), "POST", "/api/keys", server.CreateKeyBody{Name: "ci", Role: server.RoleSubmitter}, &key); err != nil {
		t.Fatal(err)
	}
	// The values are made at run time: in no request, only in the outputs.
	script := `set_variable Version 1.2.3
set_octopusvariable "Password" "s3cret-$((7000+234))" -sensitive
set_variable Token "tok-$((40000+2))" sensitive`
	want := map[string]string{"Version": "1.2.3", "Password": "s3cret-7234", "Token": "tok-40002"}

	clientDir := filepath.Join(t.TempDir(), "client")
	addr, tp := listeningAgent(t, clientDir)
	direct := filepath.Join(t.TempDir(), "direct.json")
	if _, stderr, err := run(t, "run", "--state-dir", clientDir, "--agent", addr, "--agent-thumbprint", tp, "--script", script, "--result", direct); err != nil {
		t.Fatalf("direct run: %v\nstderr: %s", err, stderr)
	}
	viaServer := filepath.Join(t.TempDir(), "server.json")
	if code, _, stderr := runStevedore(t, nil, "run", "--server", s.url(), "--pool", "builtin", "--token", key.Key, "--script", script, "--result", viaServer); code != 0 {
		t.Fatalf("run --server: exit %d\nstderr: %s", code, stderr)
	}
	for _, file := range []string{direct, viaServer} {
		var res runResult
		if b, err := os.ReadFile(file); err != nil || json.Unmarshal(b, &res) != nil {
			t.Fatalf("result %s: %s (%v)", file, b, err)
		}
		if res.Outcome != "SUCCEEDED" || !maps.Equal(res.OutputVariables, want) {
			t.Errorf("result %s: outcome %s, output variables %v; want SUCCEEDED, %v", filepath.Base(file), res.Outcome, res.OutputVariables, want)
		}
	}
	// Without the route's answer the result would have held the masks.
	var steps []server.StepView
	if err := admin.call(t.Context(), "GET", "/api/steps", nil, &steps); err != nil {
		t.Fatal(err)
	}
	if len(steps) != 1 || steps[0].OutputVariables["Password"] != server.SensitiveMask || steps[0].OutputVariables["Token"] != server.SensitiveMask {
		t.Errorf("the steps the server shows: %+v", steps)
	}
}

// ADMIN_EMAIL and --admin-email: the flag before the variable; the admin's
// email is shown by GET /web/session; a malformed one stops the server
// before it serves, saying which setting is wrong.
func TestServerAdminEmail(t *testing.T) {
	for _, tt := range []struct {
		name  string
		flags []string
		env   []string
		want  string // the email shown; "" with fail
		fail  bool
	}{
		{"from ADMIN_EMAIL", nil, []string{"ADMIN_EMAIL=env@example.com"}, "env@example.com", false},
		{"the flag before ADMIN_EMAIL", []string{"--admin-email", "flag@example.com"}, []string{"ADMIN_EMAIL=env@example.com"}, "flag@example.com", false},
		{"a malformed ADMIN_EMAIL", nil, []string{"ADMIN_EMAIL=not-an-address"}, "", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newServerSetup(t, tt.flags...)
			if tt.fail {
				cmd := exec.Command(testenv.Binary(t), s.args...)
				cmd.Env = append(append(os.Environ(), "ADMIN_USERNAME="+testAdmin, "ADMIN_PASSWORD="+testPassword), tt.env...)
				out, err := cmd.CombinedOutput()
				if _, ok := errors.AsType[*exec.ExitError](err); !ok || !strings.Contains(string(out), "ADMIN_EMAIL") {
					t.Fatalf("the server with %v: %v; want it to fail naming ADMIN_EMAIL:\n%s", tt.env, err, out)
				}
				return
			}
			s.start(t, tt.env...)
			req, _ := http.NewRequest("GET", s.url()+"/web/session", nil)
			req.SetBasicAuth(testAdmin, testPassword)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var info struct{ Name, Email string }
			if err := json.NewDecoder(resp.Body).Decode(&info); err != nil || resp.StatusCode != http.StatusOK || info.Email != tt.want {
				t.Errorf("GET /web/session: %d %+v %v; want email %q", resp.StatusCode, info, err, tt.want)
			}
		})
	}
}
