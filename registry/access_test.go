package registry_test

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/image"
	dockerregistry "github.com/docker/docker/api/types/registry"

	"stevedore/internal/testenv"
	"stevedore/registry"
)

var fixtureCreds = registry.Credentials{Username: testenv.RegistryUser, Password: testenv.RegistryPassword}

func TestAccess(t *testing.T) {
	testenv.RequireRegistry(t)
	tests := []struct {
		name    string
		ref     string
		creds   registry.Credentials
		wantErr error
	}{
		{"fixture credentials", testenv.Static, fixtureCreds, nil},
		{"no credentials", testenv.Static, registry.Credentials{}, registry.ErrUnauthorized},
		{"wrong password", testenv.Static, registry.Credentials{Username: testenv.RegistryUser, Password: "wrong"}, registry.ErrUnauthorized},
		{"missing tag", testenv.Registry + "/fixtures/static:no-such-tag", fixtureCreds, registry.ErrNotFound},
		{"missing repository", testenv.Registry + "/fixtures/no-such-image:1", fixtureCreds, registry.ErrNotFound},
		{"invalid reference", "Not//A:Reference", fixtureCreds, registry.ErrInvalidReference},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			digest, err := registry.Access(context.Background(), tt.ref, tt.creds)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && !strings.HasPrefix(digest, "sha256:") {
				t.Errorf("digest = %q", digest)
			}
		})
	}
}

// The engine itself pulls the fixture only with the credentials, and ends up
// with the digest the registry reports.
func TestEnginePullNeedsFixtureCredentials(t *testing.T) {
	cli, _ := testenv.Docker(t)
	testenv.RequireRegistry(t)
	ctx := context.Background()
	ref := testenv.Static

	if rc, err := cli.ImagePull(ctx, ref, image.PullOptions{}); err == nil {
		body, _ := io.ReadAll(rc)
		rc.Close()
		t.Fatalf("anonymous pull of %s succeeded: %s", ref, body)
	}

	auth, err := dockerregistry.EncodeAuthConfig(dockerregistry.AuthConfig{
		Username: testenv.RegistryUser, Password: testenv.RegistryPassword, ServerAddress: testenv.Registry,
	})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := cli.ImagePull(ctx, ref, image.PullOptions{RegistryAuth: auth})
	if err != nil {
		t.Fatalf("pull with the fixture credentials: %v", err)
	}
	if _, err := io.Copy(io.Discard, rc); err != nil {
		t.Fatal(err)
	}
	rc.Close()

	digest, err := registry.Access(ctx, ref, fixtureCreds)
	if err != nil {
		t.Fatal(err)
	}
	inspect, err := cli.ImageInspect(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	want := ref[:strings.LastIndex(ref, ":")] + "@" + digest // repository@digest
	if !slices.Contains(inspect.RepoDigests, want) {
		t.Errorf("engine's RepoDigests %v lack %s", inspect.RepoDigests, want)
	}
}
