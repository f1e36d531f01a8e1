package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

func TestPrepullCommand(t *testing.T) {
	testenv.Docker(t)
	testenv.RequireRegistry(t)
	clientDir := filepath.Join(t.TempDir(), "client")
	addr, tp := listeningAgent(t, clientDir)
	base := []string{"prepull", "--state-dir", clientDir, "--agent", addr, "--agent-thumbprint", tp}

	stdout, stderr, err := run(t, append(base, "--registry-user", testenv.RegistryUser, "--registry-password", testenv.RegistryPassword, testenv.Static)...)
	if err != nil || !strings.HasPrefix(stdout, testenv.Static+" ready sha256:") {
		t.Fatalf("err %v stdout %q stderr %q", err, stdout, stderr)
	}
	stdout, _, err = run(t, append(base, testenv.Registry+"/fixtures/static:no-such-tag")...)
	if err == nil || !strings.Contains(stdout, "failed") {
		t.Fatalf("a missing image: err %v stdout %q", err, stdout)
	}

	// The agent lists what it pulled.
	id, _, _ := transport.LoadOrCreateIdentity(clientDir)
	conn, _ := transport.Dial(addr, id, tp)
	defer conn.Close()
	caps, err := pb.NewAgentClient(conn).GetCapabilities(context.Background(), &pb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, img := range caps.GetCachedImages() {
		if img.GetReference() == testenv.Static && strings.HasPrefix(img.GetDigest(), "sha256:") && img.GetSizeBytes() > 0 {
			found = true
		}
	}
	if !found {
		t.Errorf("cached images %v lack %s", caps.GetCachedImages(), testenv.Static)
	}
}
