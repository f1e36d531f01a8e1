package agent_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	dockerregistry "github.com/docker/docker/api/types/registry"

	"stevedore/agent"
	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/registry"
)

// An image on the agent's pre-pull list is pulled when the agent starts,
// and listed, pinned, among its cached images.
func TestPrepullAtStart(t *testing.T) {
	cli := withImages(t, testenv.Static)
	ctx := context.Background()
	b := make([]byte, 4)
	rand.Read(b)
	ref := testenv.Registry + "/test/prepull-" + hex.EncodeToString(b) + ":1"
	if err := cli.ImageTag(ctx, testenv.Static, ref); err != nil {
		t.Fatal(err)
	}
	auth, _ := dockerregistry.EncodeAuthConfig(dockerregistry.AuthConfig{Username: testenv.RegistryUser, Password: testenv.RegistryPassword, ServerAddress: testenv.Registry})
	rc, err := cli.ImagePush(ctx, ref, image.PushOptions{RegistryAuth: auth})
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()
	cli.ImageRemove(ctx, ref, image.RemoveOptions{})
	t.Cleanup(func() { cli.ImageRemove(ctx, ref, image.RemoveOptions{}) })

	ta := startAgent(t, func(c *agent.Config) {
		c.Images.Prepull = []registry.PrepullImage{{Image: ref, Credentials: registry.Credentials{Username: testenv.RegistryUser, Password: testenv.RegistryPassword}, Source: "test feed"}}
	})
	deadline := time.Now().Add(time.Minute)
	for {
		caps, err := ta.client.GetCapabilities(ctx, &pb.GetCapabilitiesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, img := range caps.GetCachedImages() {
			if img.GetReference() == ref {
				if !img.GetPinned() {
					t.Errorf("%s is cached but not pinned", ref)
				}
				if _, err := cli.ImageInspect(ctx, ref); err != nil {
					t.Errorf("listed but not on the engine: %v", err)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s was not pre-pulled: cached %v", ref, caps.GetCachedImages())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
