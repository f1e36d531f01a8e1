package agent

import (
	"context"
	"errors"
	"fmt"

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

// checkFeed refuses a step naming a feed the agent does not have, or one
// that does not serve the step's image's registry.
func (a *Agent) checkFeed(c *pb.ContainerExecution) error {
	name := c.GetFeed()
	if name == "" {
		return nil
	}
	if a.cfg.Credentials == nil {
		return fmt.Errorf("execution.container.feed %q: %w: this agent has no feeds configured", name, registry.ErrUnknownFeed)
	}
	f, ok := a.cfg.Credentials.Feed(name)
	if !ok {
		return fmt.Errorf("execution.container.feed %q: %w", name, registry.ErrUnknownFeed)
	}
	if serves, err := f.Serves(c.GetImage()); err != nil || !serves {
		return fmt.Errorf("execution.container.feed %q serves %s, not the registry of %s: %w", name, f.Registry, c.GetImage(), registry.ErrFeedMismatch)
	}
	return nil
}
