package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"stevedore/internal/config"
	"stevedore/internal/testenv"
	"stevedore/packaging/systemd"
)

// `stevedore install agent --root DIR --no-start` lays out the binary, its
// bundle, a configuration, the environment (0600, with a master key and
// the polling settings), the unit and an identity; a second run upgrades
// the binary and keeps what is the operator's.
func TestInstallAgent(t *testing.T) {
	root := t.TempDir()
	server := strings.Repeat("ab", 32)
	// No --no-start: under --root, systemctl is never run (this machine's
	// services are not the tree's).
	args := []string{"install", "agent", "--root", root, "--server", "srv.internal:10943", "--server-thumbprint", server,
		"--register", "https://srv.internal:8080", "--pool", "linux", "--pool", "gpu", "--label", "zone=a", "--label", "note=${not-a-template}"}
	env := []string{"STEVEDORE_REGISTRATION_TOKEN=join-token"}
	code, stdout, stderr := runStevedore(t, env, args...)
	if code != 0 {
		t.Fatalf("install: exit %d\n%s%s", code, stdout, stderr)
	}
	at := func(p string) string { return filepath.Join(root, p) }

	bin, _ := os.ReadFile(testenv.Binary(t))
	if got, err := os.ReadFile(at(installBin)); err != nil || !bytes.Equal(got, bin) {
		t.Errorf("the installed binary is not this one (%v)", err)
	}
	if fi, err := os.Stat(at(installBin)); err != nil || fi.Mode().Perm()&0o111 == 0 {
		t.Errorf("the installed binary is not executable: %v %v", fi.Mode(), err)
	}
	if _, err := os.Stat(at(installBundle + "/bundle.json")); err != nil {
		t.Errorf("no bundle: %v", err)
	}
	cfg, err := config.Load(at(installConfig))
	if err != nil {
		t.Fatalf("the written configuration does not load: %v", err)
	}
	if !strings.Contains(stdout, "not started") {
		t.Errorf("an install under --root says nothing of not starting:\n%s", stdout)
	}
	if cfg.StateDir != installState || strings.Join(cfg.Pools, ",") != "linux,gpu" || cfg.Labels["zone"] != "a" || cfg.Labels["note"] != "${not-a-template}" {
		t.Errorf("configuration %+v", cfg)
	}
	envFile, err := os.ReadFile(at(installEnv))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(at(installEnv)); fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600: it holds the master key", installEnv, fi.Mode().Perm())
	}
	vars := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(envFile)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		vars[k] = v
	}
	if key, err := base64.StdEncoding.DecodeString(vars["MASTER_KEY"]); err != nil || len(key) != 16 {
		t.Errorf("MASTER_KEY %q: want base64 of 16 bytes", vars["MASTER_KEY"])
	}
	for k, want := range map[string]string{"STEVEDORE_SERVER": "srv.internal:10943", "STEVEDORE_SERVER_THUMBPRINT": server,
		"STEVEDORE_REGISTER": "https://srv.internal:8080", "STEVEDORE_REGISTRATION_TOKEN": "join-token"} {
		if vars[k] != want {
			t.Errorf("%s=%q, want %q", k, vars[k], want)
		}
	}
	if unit, err := os.ReadFile(at(installUnit)); err != nil || !bytes.Equal(unit, systemd.AgentUnit) {
		t.Errorf("the unit is not the packaged one (%v)", err)
	}
	_, certOut, _ := runStevedore(t, nil, "cert", "--state-dir", at(installState))
	if tp := strings.TrimSpace(certOut); tp == "" || !strings.Contains(stdout, "agent thumbprint: "+tp) {
		t.Errorf("install printed %q; the identity's thumbprint is %q", stdout, tp)
	}

	// Again: an upgrade keeps the configuration, environment and identity.
	os.WriteFile(at(installConfig), []byte("# the operator's own\nstate_dir = \"/var/lib/stevedore\"\n"), 0o644)
	code, again, stderr := runStevedore(t, env, args...)
	if code != 0 || !strings.Contains(again, "kept "+at(installConfig)) || !strings.Contains(again, "kept "+at(installEnv)) {
		t.Fatalf("second install: exit %d\n%s%s", code, again, stderr)
	}
	if b, _ := os.ReadFile(at(installConfig)); !strings.HasPrefix(string(b), "# the operator's own") {
		t.Error("the operator's configuration was replaced")
	}
	if b, _ := os.ReadFile(at(installEnv)); !bytes.Equal(b, envFile) {
		t.Error("the environment (and its master key) was replaced")
	}
	if !strings.Contains(again, strings.TrimSpace(certOut)) {
		t.Error("the identity changed")
	}
}

func TestInstallAgentRefusesIncompleteSettings(t *testing.T) {
	tp := strings.Repeat("cd", 32)
	tests := []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"no mode", nil, nil, "give --server"},
		{"both modes", []string{"--server", "h:1", "--server-thumbprint", tp, "--listen", ":10933", "--trust", tp}, nil, "give --server"},
		{"server without thumbprint", []string{"--server", "h:1"}, nil, "--server-thumbprint"},
		{"listen without trust", []string{"--listen", ":10933"}, nil, "--trust"},
		{"a server address without a port", []string{"--server", "h:1,h", "--server-thumbprint", tp}, nil, "HOST:PORT"},
		{"register without token", []string{"--server", "h:1", "--server-thumbprint", tp, "--register", "http://h:8080"}, []string{"STEVEDORE_REGISTRATION_TOKEN="}, "STEVEDORE_REGISTRATION_TOKEN"},
		{"bad thumbprint", []string{"--listen", ":10933", "--trust", "nope"}, nil, "thumbprint"},
		{"bad label", []string{"--listen", ":10933", "--trust", tp, "--label", "zone"}, nil, "K=V"},
		{"a label HCL cannot hold", []string{"--listen", ":10933", "--trust", tp, "--label", "zone=a\x01b"}, nil, "does not read back"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			code, _, stderr := runStevedore(t, tt.env, append([]string{"install", "agent", "--root", root, "--no-start"}, tt.args...)...)
			if code == 0 || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want a failure saying %q", code, stderr, tt.want)
			}
			if entries, _ := os.ReadDir(root); len(entries) != 0 {
				t.Errorf("a refused install wrote %d entries", len(entries))
			}
		})
	}
}

// `stevedore install agent` writes several nodes' addresses and
// thumbprints into the agent's environment so that the agent, started by
// the unit with that environment, reads them back as given.
func TestInstallAgentSeveralServerNodes(t *testing.T) {
	tests := []struct {
		name          string
		args          []string
		addrs, prints []string
	}{
		{"comma-separated", []string{"--server", "n1:10943,n2:10943", "--server-thumbprint", nodeTP1 + "," + nodeTP2},
			[]string{"n1:10943", "n2:10943"}, []string{nodeTP1, nodeTP2}},
		{"repeated", []string{"--server", "n1:10943", "--server", "n2:10943", "--server", "n3:10943", "--server-thumbprint", strings.ToUpper(nodeTP1)},
			[]string{"n1:10943", "n2:10943", "n3:10943"}, []string{nodeTP1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			code, stdout, stderr := runStevedore(t, nil, append([]string{"install", "agent", "--root", root, "--no-start"}, tt.args...)...)
			if code != 0 {
				t.Fatalf("install: exit %d\n%s%s", code, stdout, stderr)
			}
			b, err := os.ReadFile(filepath.Join(root, installEnv))
			if err != nil {
				t.Fatal(err)
			}
			env := map[string]string{}
			for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				k, v, _ := strings.Cut(line, "=")
				env[k] = v
			}
			p, err := readPolling(t, nil, env)
			if err != nil {
				t.Fatalf("the agent does not read its environment %q: %v", b, err)
			}
			if !slices.Equal(p.addrs, tt.addrs) || !slices.Equal(p.thumbprints, tt.prints) {
				t.Errorf("the agent reads addrs %q thumbprints %q from %q, want %q %q", p.addrs, p.thumbprints, b, tt.addrs, tt.prints)
			}
		})
	}
}

// `stevedore install server --root DIR` writes an environment a server
// really starts with: the generated admin password opens the API, the
// generated registration token admits an agent's thumbprint, and the
// built-in worker runs; the printed thumbprint is the server's.
func TestInstallServer(t *testing.T) {
	root := t.TempDir()
	os.Chmod(root, 0o755)
	agentTP := strings.Repeat("ef", 32)
	args := []string{"install", "server", "--root", root, "--registration-token", "--builtin-worker", "--trust", agentTP}
	code, stdout, stderr := runStevedore(t, nil, args...)
	if code != 0 {
		t.Fatalf("install: exit %d\n%s%s", code, stdout, stderr)
	}
	at := func(p string) string { return filepath.Join(root, p) }
	if unit, err := os.ReadFile(at("/etc/systemd/system/" + systemd.ServerUnitName)); err != nil || !bytes.Equal(unit, systemd.ServerUnit) {
		t.Errorf("the unit is not the packaged one (%v)", err)
	}
	envFile, err := os.ReadFile(at(installServerEnv))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(at(installServerEnv)); fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", installServerEnv, fi.Mode().Perm())
	}
	env := strings.Split(strings.TrimSpace(string(envFile)), "\n")
	vars := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	for _, k := range []string{"MASTER_KEY", "ADMIN_PASSWORD", "STEVEDORE_REGISTRATION_TOKEN"} {
		if vars[k] == "" {
			t.Fatalf("%s is not in the environment file:\n%s", k, envFile)
		}
	}
	if vars["STEVEDORE_TRUST"] != agentTP || vars["STEVEDORE_BUILTIN_WORKER"] != "true" {
		t.Errorf("environment %v", vars)
	}
	_, certOut, _ := runStevedore(t, nil, "cert", "--state-dir", at(installServerState))
	tp := strings.TrimSpace(certOut)
	if !strings.Contains(stdout, "server thumbprint: "+tp) {
		t.Errorf("install printed %q; the identity's thumbprint is %q", stdout, tp)
	}

	// The server as the unit would start it, with that environment.
	s := &serverSetup{dataDir: at(installServerState), http: testenv.FreeAddr(t), polling: testenv.FreeAddr(t), scheme: "http", thumbprint: tp}
	s.args = []string{"server", "--data-dir", s.dataDir, "--http", s.http, "--polling", s.polling}
	s.start(t, env...)
	call := func(method, path, body string, auth func(*http.Request)) int {
		req, _ := http.NewRequest(method, s.url()+path, strings.NewReader(body))
		auth(req)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	admin := func(r *http.Request) { r.SetBasicAuth("admin", vars["ADMIN_PASSWORD"]) }
	if code := call("GET", "/api/steps", "", admin); code != http.StatusOK {
		t.Errorf("the generated admin password: %d", code)
	}
	token := func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+vars["STEVEDORE_REGISTRATION_TOKEN"]) }
	if code := call("POST", "/api/trust", `{"thumbprint":"`+strings.Repeat("12", 32)+`"}`, token); code != http.StatusCreated {
		t.Errorf("the generated registration token: %d", code)
	}
	code, again, stderr := runStevedore(t, nil, args...)
	if code != 0 || !strings.Contains(again, "kept "+at(installServerEnv)) || !strings.Contains(again, tp) {
		t.Fatalf("second install: exit %d\n%s%s", code, again, stderr)
	}
}

// `install server --db URL --node NAME` writes them to the environment the
// unit starts the server with, and the server keeps its state there; a URL
// that is not one is refused at install.
func TestInstallServerOnPostgreSQL(t *testing.T) {
	db := testenv.Postgres(t)
	if code, _, stderr := runStevedore(t, nil, "install", "server", "--root", t.TempDir(), "--no-start", "--db", "mysql://nope"); code == 0 {
		t.Errorf("a URL that is not postgres:// was taken (%s)", stderr)
	}
	root := t.TempDir()
	os.Chmod(root, 0o755)
	code, stdout, stderr := runStevedore(t, nil, "install", "server", "--root", root, "--no-start", "--db", db, "--node", "n1")
	if code != 0 {
		t.Fatalf("install: exit %d\n%s%s", code, stdout, stderr)
	}
	envFile, err := os.ReadFile(filepath.Join(root, installServerEnv))
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Split(strings.TrimSpace(string(envFile)), "\n")
	if !slices.Contains(env, "DB_CONNECTION_STRING="+db) || !slices.Contains(env, "NODE_NAME=n1") {
		t.Fatalf("environment file:\n%s", envFile)
	}
	s := &serverSetup{dataDir: filepath.Join(root, installServerState), http: testenv.FreeAddr(t), polling: testenv.FreeAddr(t), scheme: "http"}
	s.args = []string{"server", "--data-dir", s.dataDir, "--http", s.http, "--polling", s.polling}
	s.start(t, env...)
	if _, err := os.Stat(filepath.Join(s.dataDir, "server.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the server made a bbolt file with --db in its environment (%v)", err)
	}
}
