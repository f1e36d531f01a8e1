package main

import (
	"bytes"
	"regexp"
	"testing"
)

// run executes the CLI in-process and returns its stdout and stderr.
func run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	root := newRootCommand()
	root.SetArgs(args)
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	err := root.Execute()
	return stdout.String(), stderr.String(), err
}

func TestCertPrintsOnlyTheThumbprint(t *testing.T) {
	dir := t.TempDir()
	line := regexp.MustCompile(`^[0-9a-f]{64}\n$`)
	first, _, err := run(t, "cert", "--state-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	if !line.MatchString(first) {
		t.Fatalf("stdout %q is not one line of 64 lowercase hex characters", first)
	}
	second, stderr, err := run(t, "cert", "--state-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	if second != first {
		t.Errorf("second run printed %q, want %q", second, first)
	}
	if stderr != "" {
		t.Errorf("second run wrote %q to stderr; nothing was created", stderr)
	}
}
