package main

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"stevedore/internal/seal"
)

// show-master-key prints the key the server would use, from wherever the
// server finds it, as the only line on stdout, and never makes one.
func TestShowMasterKey(t *testing.T) {
	noInstalledEnv(t)
	envKey := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	fileKey := base64.StdEncoding.EncodeToString([]byte("fedcba9876543210"))
	installedKey := base64.StdEncoding.EncodeToString([]byte("installed-key-16"))

	withFile := t.TempDir()
	if err := os.WriteFile(filepath.Join(withFile, seal.MasterKeyFile), []byte(fileKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	envFile := filepath.Join(t.TempDir(), "server.env")
	if err := os.WriteFile(envFile, []byte("ADMIN_USERNAME=admin\nMASTER_KEY="+installedKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	absent := filepath.Join(t.TempDir(), "absent.env")

	cases := []struct {
		name, env string
		args      []string
		want      string
		wantErr   error
	}{
		{"MASTER_KEY in the environment wins", envKey, []string{"--data-dir", withFile, "--env-file", envFile}, envKey, nil},
		{"an installed server's environment file", "", []string{"--data-dir", withFile, "--env-file", envFile}, installedKey, nil},
		{"the key file the server generated", "", []string{"--data-dir", withFile}, fileKey, nil},
		{"none yet", "", []string{"--data-dir", t.TempDir()}, "", seal.ErrNoMasterKey},
		{"an environment file asked for and missing", "", []string{"--data-dir", withFile, "--env-file", absent}, "", os.ErrNotExist},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("MASTER_KEY", c.env)
			stdout, stderr, err := run(t, append([]string{"server", "show-master-key"}, c.args...)...)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("err %v; want %v", err, c.wantErr)
				}
				if stdout != "" {
					t.Errorf("stdout %q on an error", stdout)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\nstderr: %s", err, stderr)
			}
			if stdout != c.want+"\n" {
				t.Errorf("stdout %q; want the one line %q", stdout, c.want)
			}
		})
	}
	// Asking never generates one: the server's next start still would.
	dir := t.TempDir()
	t.Setenv("MASTER_KEY", "")
	run(t, "server", "show-master-key", "--data-dir", dir)
	if _, err := os.Stat(filepath.Join(dir, seal.MasterKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("show-master-key made a key file: %v", err)
	}
}

// The key a running server uses: the one it generated on its first start
// is the one show-master-key prints, and it opens what that server sealed.
func TestShowMasterKeyOfAServer(t *testing.T) {
	noInstalledEnv(t)
	dir := t.TempDir()
	t.Setenv("MASTER_KEY", "")
	box, err := seal.LoadMasterKey("", dir) // as server.New does on a first start
	if err != nil {
		t.Fatal(err)
	}
	sealed, _ := box.Seal([]byte("registry password"))
	stdout, _, err := run(t, "server", "show-master-key", "--data-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := seal.LoadMasterKey(strings.TrimSpace(stdout), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if plain, err := again.Open(sealed); err != nil || string(plain) != "registry password" {
		t.Errorf("the printed key does not open the server's sealed value: %q %v", plain, err)
	}
}

// noInstalledEnv points the default --env-file at a file that does not
// exist, so that a test never reads this machine's installed server.env.
func noInstalledEnv(t *testing.T) {
	old := serverEnvFile
	serverEnvFile = filepath.Join(t.TempDir(), "server.env")
	t.Cleanup(func() { serverEnvFile = old })
}
