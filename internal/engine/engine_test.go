package engine_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/versions"

	"stevedore/internal/engine"
	"stevedore/internal/testenv"
)

func TestConnectRealEngine(t *testing.T) {
	cli, info := testenv.Docker(t)
	v, err := cli.ServerVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != v.Version || info.Version == "" {
		t.Errorf("info.Version = %q, engine says %q", info.Version, v.Version)
	}
	// Negotiation settles on the engine's version when it is older than the client's.
	if info.APIVersion != cli.ClientVersion() || info.APIVersion == "" {
		t.Errorf("info.APIVersion = %q, client uses %q", info.APIVersion, cli.ClientVersion())
	}
	if versions.GreaterThan(info.APIVersion, v.APIVersion) {
		t.Errorf("negotiated API %s is newer than the engine's %s", info.APIVersion, v.APIVersion)
	}
}

func TestConnectNoEngine(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nothing.sock")
	t.Setenv("DOCKER_HOST", "unix://"+sock)
	t.Setenv("DOCKER_TLS_VERIFY", "")
	_, info, err := engine.Connect(context.Background())
	if !errors.Is(err, engine.ErrNoEngine) {
		t.Fatalf("err = %v, want ErrNoEngine", err)
	}
	if !strings.Contains(err.Error(), sock) || info.Host != "unix://"+sock {
		t.Errorf("the error should name the host it tried: %v (info.Host %q)", err, info.Host)
	}
}
