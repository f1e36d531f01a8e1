package main

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"

	"stevedore/agent"
	"stevedore/executor"
	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

// listeningAgent starts an agent on loopback trusting the identity in
// clientDir, and returns its address and thumbprint.
func listeningAgent(t *testing.T, clientDir string) (addr, thumbprint string) {
	t.Helper()
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	id, _, err := transport.LoadOrCreateIdentity(filepath.Join(root, "agent"))
	if err != nil {
		t.Fatal(err)
	}
	client, _, err := transport.LoadOrCreateIdentity(clientDir)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := executor.LoadBundle(testenv.BundleDir(t))
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{StateDir: filepath.Join(root, "agent"), Bundle: bundle, Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	trust, _ := transport.NewTrustList(client.Thumbprint)
	srv := grpc.NewServer(transport.ServerOptions(id, trust, nil)...)
	pb.RegisterAgentServer(srv, a)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Stop(); a.Close() })
	return lis.Addr().String(), id.Thumbprint
}

func TestRunCommand(t *testing.T) {
	cli, _ := testenv.Docker(t)
	testenv.Image(t, cli, testenv.Bookworm)
	testenv.Image(t, cli, testenv.Musl)
	clientDir := filepath.Join(t.TempDir(), "client")
	addr, tp := listeningAgent(t, clientDir)
	base := []string{"run", "--state-dir", clientDir, "--agent", addr, "--agent-thumbprint", tp}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string // a substring
		wantResult map[string]any
	}{
		{"container exit 42", []string{"--image", testenv.Bookworm, "--var", "Who=world", "--script", "echo hello $Who; echo err >&2; set_variable Out v1; exit 42"},
			42, "hello world\n", "err\n", map[string]any{"outcome": "FAILED", "exit_code": 42.0}},
		{"host success", []string{"--syntax", "sh", "--script", "echo ok"}, 0, "ok\n", "", map[string]any{"outcome": "SUCCEEDED", "exit_code": 0.0}},
		{"musl rejected", []string{"--image", testenv.Musl, "--script", "echo never"}, exitCannotRun, "", "musl", map[string]any{"outcome": "IMAGE_REJECTED", "exit_code": nil}},
		{"pull with wrong credentials", []string{"--image", testenv.Registry + "/fixtures/bookworm:nope", "--registry-user", "x", "--registry-password", "y", "--script", "true"},
			exitCannotRun, "", "refused the credentials", map[string]any{"outcome": "PULL_FAILED"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			result := filepath.Join(t.TempDir(), "result.json")
			stdout, stderr, err := run(t, append(append(append([]string{}, base...), tt.args...), "--result", result)...)
			code := 0
			var ec exitCodeError
			if errors.As(err, &ec) {
				code = ec.code
			} else if err != nil {
				t.Fatalf("run: %v", err)
			}
			if code != tt.wantCode || stdout != tt.wantStdout || !strings.Contains(stderr, tt.wantStderr) {
				t.Fatalf("exit %d stdout %q stderr %q; want %d %q and stderr containing %q", code, stdout, stderr, tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
			b, err := os.ReadFile(result)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.wantResult {
				if got[k] != v {
					t.Errorf("result %s = %v, want %v (%s)", k, got[k], v, b)
				}
			}
		})
	}
}

func TestRunUnreachableAgentIs125(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	_, _, err = run(t, "run", "--state-dir", t.TempDir(), "--agent", addr, "--agent-thumbprint", strings.Repeat("ab", 32), "--script", "true")
	var ec exitCodeError
	if !errors.As(err, &ec) || ec.code != exitCannotRun {
		t.Fatalf("err %v, want exit code %d", err, exitCannotRun)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.CleanupBundle()
	os.Exit(code)
}
