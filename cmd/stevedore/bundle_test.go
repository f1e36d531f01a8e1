package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"stevedore/executor"
	"stevedore/internal/version"
)

// runBundle executes `stevedore bundle ARGS` in-process.
func runBundle(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := newBundleCommand()
	cmd.SetArgs(args)
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	err := cmd.Execute()
	return stdout.String(), stderr.String(), err
}

// A glibc executable of this machine stands in for the runner.
func copyGlibcExecutable(t *testing.T, dst string) {
	t.Helper()
	data, err := os.ReadFile("/bin/ls")
	if err != nil {
		t.Skipf("no /bin/ls to stand in for the runner: %v", err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestBundleManifestThenShow(t *testing.T) {
	dir := t.TempDir()
	copyGlibcExecutable(t, filepath.Join(dir, "runner"))
	out, stderr, err := runBundle(t, "manifest", dir, "--entrypoint", "runner")
	if err != nil {
		t.Fatal(err)
	}
	var m executor.Manifest
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("stdout is not the manifest: %v\n%s", err, out)
	}
	if m.Name != executor.RunnerName || m.Entrypoint != "runner" || m.Version != version.Version || m.Requires.Libc != executor.LibcGlibc || m.Requires.MinGlibc == "" {
		t.Errorf("manifest %+v", m)
	}
	if stderr == "" {
		t.Error("nothing on stderr about the file written")
	}
	onDisk, err := os.ReadFile(filepath.Join(dir, executor.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	if string(onDisk) != out {
		t.Errorf("printed\n%s\nbut wrote\n%s", out, onDisk)
	}
	shown, _, err := runBundle(t, "show", dir)
	if err != nil {
		t.Fatal(err)
	}
	if shown != out {
		t.Errorf("show printed\n%s\nwant\n%s", shown, out)
	}
}

func TestBundleRefuses(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := runBundle(t, "manifest", dir); !errors.Is(err, executor.ErrInvalidBundle) {
		t.Errorf("manifest without a runner: %v, want ErrInvalidBundle", err)
	}
	if _, _, err := runBundle(t, "show", dir); !errors.Is(err, executor.ErrInvalidBundle) {
		t.Errorf("show without a manifest: %v, want ErrInvalidBundle", err)
	}
	if _, _, err := runBundle(t, "manifest"); err == nil {
		t.Error("manifest without DIR succeeded")
	}
}
