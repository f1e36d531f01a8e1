package agent

import (
	"context"
	"errors"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/registry"
)

// credentials resolves the registry credentials of a container execution:
// inline ones win; otherwise the named feed or the first one for the
// image's registry, then the worker's Docker config, else none.
func (a *Agent) credentials(ctx context.Context, c *pb.ContainerExecution) (registry.Credentials, string, error) {
	var inline *registry.Credentials
	if cr := c.GetCredentials(); cr != nil {
		inline = &registry.Credentials{Username: cr.GetUsername(), Password: cr.GetPassword(), IdentityToken: cr.GetIdentityToken()}
	}
	if a.cfg.Credentials == nil {
		if c.GetFeed() != "" {
			return registry.Credentials{}, "", errors.New("feed " + c.GetFeed() + ": this agent has no feeds configured")
		}
		if inline != nil && !inline.Anonymous() {
			return *inline, "inline credentials", nil
		}
		return registry.Credentials{}, "no credentials", nil
	}
	return a.cfg.Credentials.Resolve(ctx, c.GetImage(), c.GetFeed(), inline)
}
