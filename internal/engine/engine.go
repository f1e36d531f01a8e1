// Package engine connects to the Docker Engine that stevedore drives, the one
// DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH name (the local socket
// when unset).
package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/docker/docker/client"
)

// ErrNoEngine is wrapped by Connect's error when no engine answers.
var ErrNoEngine = errors.New("no Docker Engine answers")

// pingTimeout bounds the start-up check; an engine that does not answer a
// ping in this long is treated as absent rather than waited for.
const pingTimeout = 10 * time.Second

// Info describes the engine Connect reached.
type Info struct {
	// Host is where the client talks to, e.g. unix:///var/run/docker.sock.
	Host string
	// Version is the engine's own version, e.g. 20.10.24.
	Version string
	// APIVersion is the API version negotiated with it.
	APIVersion string
}

// Connect creates a client from the environment, negotiates the API version
// and pings the engine. When no engine answers the error wraps ErrNoEngine and
// names the host it tried.
func Connect(ctx context.Context) (*client.Client, Info, error) {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, Info{}, fmt.Errorf("docker client from environment: %w", err)
	}
	info := Info{Host: cli.DaemonHost()}
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	// NegotiateAPIVersion pings and settles the version; the explicit ping
	// then reports whether anything answered at all.
	cli.NegotiateAPIVersion(pctx)
	if _, err := cli.Ping(pctx); err != nil {
		cli.Close()
		return nil, info, fmt.Errorf("%w at %s (is dockerd running? `make setup` starts one): %w", ErrNoEngine, info.Host, err)
	}
	v, err := cli.ServerVersion(pctx)
	if err != nil {
		cli.Close()
		return nil, info, fmt.Errorf("docker engine at %s: version: %w", info.Host, err)
	}
	info.Version = v.Version
	info.APIVersion = cli.ClientVersion()
	return cli, info, nil
}
