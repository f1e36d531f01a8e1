package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"stevedore/server"
)

// registerAgent adds the agent's thumbprint to the server's trust through
// its API (POST /api/trust with the registration token), so that a worker
// of a pool of identical cloud machines joins on its first start. It tries
// until it succeeds, the server refuses for good (a bad token), or ctx
// ends; the server being unreachable is waited out with jittered backoff.
// serverThumbprints pin an https API, as they pin the polling port.
func registerAgent(ctx context.Context, apiURL, token string, serverThumbprints []string, thumbprint string, log hclog.Logger) error {
	hc, err := apiHTTPClient(serverThumbprints...)
	if err != nil {
		return err
	}
	c := &apiClient{base: strings.TrimRight(apiURL, "/"), token: token, http: hc}
	backoff := time.Second
	for {
		var out server.TrustBody
		err := c.call(ctx, "POST", "/api/trust", server.TrustBody{Thumbprint: thumbprint}, &out)
		if err == nil {
			log.Info("registered with the server", "api", apiURL, "thumbprint", thumbprint)
			return nil
		}
		if !transientAPIError(err) {
			return fmt.Errorf("register with %s: %w", apiURL, err)
		}
		wait := time.Duration(rand.Int64N(int64(backoff))) + time.Second
		log.Warn("cannot register with the server yet; retrying", "api", apiURL, "error", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		backoff = min(backoff*2, time.Minute)
	}
}
