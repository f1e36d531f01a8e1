package testenv

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"testing"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/client"
)

// PushRandomImage builds an image of one layer holding size random bytes,
// pushes it to the local registry as test/<repo>:<tag> with the fixture
// credentials, and removes it from the engine, so that using it means
// really pulling it. Returns its reference.
func PushRandomImage(t testing.TB, cli *client.Client, repo, tag string, size int) string {
	t.Helper()
	ctx := context.Background()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	data := make([]byte, size)
	rand.Read(data)
	if err := tw.WriteHeader(&tar.Header{Name: "data", Mode: 0o644, Size: int64(size)}); err != nil {
		t.Fatal(err)
	}
	tw.Write(data)
	tw.Close()
	ref := Registry + "/test/" + repo + ":" + tag
	rc, err := cli.ImageImport(ctx, image.ImportSource{Source: &buf, SourceName: "-"}, ref, image.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()
	auth, _ := registry.EncodeAuthConfig(registry.AuthConfig{Username: RegistryUser, Password: RegistryPassword, ServerAddress: Registry})
	rc, err = cli.ImagePush(ctx, ref, image.PushOptions{RegistryAuth: auth})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(rc)
	rc.Close()
	if bytes.Contains(out, []byte(`"error"`)) {
		t.Fatalf("push %s: %s", ref, out)
	}
	RemoveImage(cli, ref)
	return ref
}

// RemoveImage removes ref from the engine, if there.
func RemoveImage(cli *client.Client, ref string) {
	cli.ImageRemove(context.Background(), ref, image.RemoveOptions{Force: true, PruneChildren: true})
}
