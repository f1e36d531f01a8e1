package testenv_test

import (
	"context"
	"runtime"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"

	"stevedore/internal/testenv"
)

// The loaders as each libc names them on this architecture.
var loaders = map[string]struct{ glibc, musl string }{
	"amd64": {"/lib64/ld-linux-x86-64.so.2", "/lib/ld-musl-x86_64.so.1"},
	"arm64": {"/lib/ld-linux-aarch64.so.1", "/lib/ld-musl-aarch64.so.1"},
}

// Each fixture is what its name says: inspected through a created, never
// started container, as the agent's probe will see it.
func TestFixturesAreWhatTheySay(t *testing.T) {
	cli, _ := testenv.Docker(t)
	ld, ok := loaders[runtime.GOARCH]
	if !ok {
		t.Skipf("no loader names known for %s", runtime.GOARCH)
	}
	tests := []struct {
		ref                 string
		glibc, musl, python bool
		user                string
	}{
		{testenv.Bookworm, true, false, true, ""},
		{testenv.Bullseye, true, false, true, ""},
		{testenv.Musl, false, true, false, ""},
		{testenv.Static, false, false, false, ""},
		{testenv.NonRoot, true, false, true, "app"},
		{testenv.WorkerTools, true, false, true, ""},
	}
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			testenv.Image(t, cli, tt.ref)
			inspect, err := cli.ImageInspect(ctx, tt.ref)
			if err != nil {
				t.Fatal(err)
			}
			if inspect.Config.User != tt.user {
				t.Errorf("USER %q, want %q", inspect.Config.User, tt.user)
			}
			if tt.user != "" && len(inspect.Config.Entrypoint) == 0 {
				t.Error("the non-root fixture should have an ENTRYPOINT to override")
			}
			c, err := cli.ContainerCreate(ctx, &container.Config{Image: tt.ref, Entrypoint: []string{"/nonexistent"}}, nil, nil, nil, "")
			if err != nil {
				t.Fatal(err)
			}
			defer cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
			for path, want := range map[string]bool{ld.glibc: tt.glibc, ld.musl: tt.musl, "/usr/bin/python3": tt.python} {
				_, err := cli.ContainerStatPath(ctx, c.ID, path)
				switch {
				case err != nil && !errdefs.IsNotFound(err):
					t.Fatalf("stat %s: %v", path, err)
				case (err == nil) != want:
					t.Errorf("%s present = %v, want %v", path, err == nil, want)
				}
			}
		})
	}
}
