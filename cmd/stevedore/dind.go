package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"stevedore/internal/dind"
)

// engineStopTimeout bounds dockerd's own stop (it stops the containers of
// running steps, each with its stop timeout) after the server's.
const engineStopTimeout = 25 * time.Second

// runServerWithEngine is `stevedore server --dind`: the engine starts
// first and stops last, and the built-in worker drives it. The server stops
// when the engine ends by itself, with an error, so that a restart policy
// starts both again rather than leaving a worker with no engine.
func runServerWithEngine(ctx context.Context, o *serverOptions, stderr io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if !o.builtinWorker {
		return errors.New("--dind starts an engine for the built-in worker: give --builtin-worker too, or set DISABLE_DIND=Y")
	}
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		return fmt.Errorf("DOCKER_HOST=%s names an engine, and --dind starts one of its own: set DISABLE_DIND=Y to drive that one", h)
	}
	// A TERM while the engine starts ends the wait, and the engine with it.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log, err := o.log.logger(stderr)
	if err != nil {
		return err
	}
	log = log.Named("dind")
	log.Info("starting the container's own Docker Engine (DISABLE_DIND=Y would use the one DOCKER_HOST names)")
	eng, err := dind.Start(ctx, dind.Options{Output: stderr})
	if err != nil {
		return err // it says what Docker in Docker lacks
	}
	log.Info("docker engine ready", "host", eng.Host())
	// The built-in worker connects through the environment (engine.Connect).
	if err := os.Setenv("DOCKER_HOST", eng.Host()); err != nil {
		eng.Stop(engineStopTimeout)
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-eng.Done():
			log.Error("the docker engine exited: stopping the server", "error", eng.Err())
			cancel()
		case <-sctx.Done():
		}
	}()
	serr := runServer(sctx, o, stderr)
	cancel()
	if died := eng.Err(); died != nil {
		return errors.Join(serr, fmt.Errorf("docker in docker: %w", died))
	}
	log.Info("server stopped: stopping the docker engine")
	if err := eng.Stop(engineStopTimeout); err != nil {
		return errors.Join(serr, fmt.Errorf("docker in docker: %w", err))
	}
	log.Info("docker engine stopped")
	return serr
}
