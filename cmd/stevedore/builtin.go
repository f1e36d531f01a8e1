package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"

	"stevedore/agent"
	"stevedore/executor"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

// builtinWorkerDir is the built-in worker's state dir inside the server's.
const builtinWorkerDir = "builtin-worker"

// startBuiltinWorker runs an agent inside the server process, connected to
// the server's own polling address by the same protocol as any polling
// worker (so it is dispatched to, followed and resumed the same way). Its
// identity lives in the server's data dir and is added to trust. stop ends
// it; metrics serves its Prometheus metrics.
//
// keep returns the worker's identity as the server's database keeps it, so
// that a new container's built-in worker is the worker the server knows.
func startBuiltinWorker(ctx context.Context, dataDir, pollingAddr string, serverID *transport.Identity, keep func(*transport.Identity) (*transport.Identity, error),
	trust *transport.TrustList, maxSteps int, log hclog.Logger) (stop func(), metrics http.Handler, err error) {
	stateDir := filepath.Join(dataDir, builtinWorkerDir)
	id, created, err := transport.LoadOrCreateIdentity(stateDir)
	if err != nil {
		return nil, nil, err
	}
	kept, err := keep(id)
	if err != nil {
		return nil, nil, fmt.Errorf("built-in worker: %w", err)
	}
	if kept.Thumbprint != id.Thumbprint {
		if !created {
			log.Warn("the built-in worker's state dir holds another identity than the database's: the database's is used", "thumbprint", kept.Thumbprint, "state_dir_thumbprint", id.Thumbprint)
		}
		if err := transport.SaveIdentity(stateDir, kept); err != nil {
			return nil, nil, fmt.Errorf("built-in worker: %w", err)
		}
		id = kept
	}
	if err := trust.Add(id.Thumbprint); err != nil {
		return nil, nil, err
	}
	dir, err := executor.DefaultBundleDir()
	if err != nil {
		return nil, nil, err
	}
	bundle, err := executor.LoadBundle(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("built-in worker: tool bundle: %w", err)
	}
	a, err := agent.New(agent.Config{StateDir: stateDir, Bundle: bundle, Identity: id, Name: "builtin", Pools: []string{"builtin"},
		MaxSteps: maxSteps, MasterKey: os.Getenv("MASTER_KEY"), Logger: log.Named("builtin-worker")})
	if err != nil {
		return nil, nil, err
	}
	srv := grpc.NewServer(transport.PollingServerOptions()...)
	pb.RegisterAgentServer(srv, a)
	pin, err := transport.NewTrustList(serverID.Thumbprint)
	if err != nil {
		return nil, nil, err
	}
	// ":10943" listens everywhere; the worker dials it on loopback.
	host, port, err := net.SplitHostPort(pollingAddr)
	if err != nil {
		return nil, nil, err
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	p := &transport.Poller{Addr: net.JoinHostPort(host, port), Identity: id, Server: pin, Log: log.Named("builtin-worker")}
	go func() { p.Run(ctx, srv); close(done) }()
	return func() { cancel(); <-done; srv.Stop(); a.Close() }, a.MetricsHandler(), nil
}
