package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"stevedore/agent"
	"stevedore/executor"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

func newAgentCommand() *cobra.Command {
	var (
		stateDir, listen, bundleDir, name, logLevel string
		trust, labels                               []string
		maxSteps                                    int
		grace                                       time.Duration
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the agent: accept steps from trusted servers and run them",
		Long: `Runs the stevedore agent in listening mode: it serves the Agent gRPC service
on --listen with mutual TLS, accepting only clients whose certificate
thumbprint is given with --trust.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := hclog.New(&hclog.LoggerOptions{Name: "stevedore", Level: hclog.LevelFromString(logLevel), Output: cmd.ErrOrStderr()})
			id, _, err := transport.LoadOrCreateIdentity(stateDir)
			if err != nil {
				return err
			}
			trustList, err := transport.NewTrustList(trust...)
			if err != nil {
				return err
			}
			if len(trust) == 0 {
				return errors.New("no --trust thumbprint: nobody could connect; give the server's (`stevedore cert` prints it)")
			}
			if bundleDir == "" {
				if bundleDir, err = executor.DefaultBundleDir(); err != nil {
					return err
				}
			}
			bundle, err := executor.LoadBundle(bundleDir)
			if err != nil {
				return fmt.Errorf("tool bundle: %w (run `make build`, or give --bundle)", err)
			}
			lbl, err := parseLabels(labels)
			if err != nil {
				return err
			}
			if name == "" {
				name, _ = os.Hostname()
			}
			a, err := agent.New(agent.Config{
				StateDir: stateDir, Bundle: bundle, MaxSteps: maxSteps, DefaultGrace: grace,
				MasterKey: os.Getenv("MASTER_KEY"), Name: name, Labels: lbl, Identity: id, Logger: log,
			})
			if err != nil {
				return err
			}
			defer a.Close()
			lis, err := transport.Listen(listen)
			if err != nil {
				return err
			}
			srv := grpc.NewServer(transport.ServerOptions(id, trustList, log.Named("transport"))...)
			pb.RegisterAgentServer(srv, a)
			log.Info("agent listening", "address", lis.Addr().String(), "thumbprint", id.Thumbprint,
				"bundle", bundle.Dir, "max_steps", maxSteps, "trusted", len(trustList.List()))

			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			errc := make(chan error, 1)
			go func() { errc <- srv.Serve(lis) }()
			select {
			case err := <-errc:
				return err
			case <-ctx.Done():
			}
			// Running steps keep running (their runners are detached); a
			// restarted agent follows them again.
			log.Info("shutting down; running steps go on and are picked up on restart")
			done := make(chan struct{})
			go func() { srv.GracefulStop(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				srv.Stop()
			}
			return nil
		},
	}
	stateDirFlag(cmd, &stateDir)
	f := cmd.Flags()
	f.StringVar(&listen, "listen", ":10933", "address to serve the Agent service on")
	f.StringArrayVar(&trust, "trust", nil, "thumbprint of a server allowed to connect (repeatable)")
	f.StringVar(&bundleDir, "bundle", "", "tool bundle directory (default: bundle/ beside this binary)")
	f.IntVar(&maxSteps, "max-steps", 4, "steps that run at once; more wait in order")
	f.DurationVar(&grace, "cancel-grace", 10*time.Second, "default time between TERM and KILL on cancel")
	f.StringVar(&name, "name", "", "this worker's name (default: the host name)")
	f.StringArrayVar(&labels, "label", nil, "a label K=V reported to the server (repeatable)")
	f.StringVar(&logLevel, "log-level", envOr("STEVEDORE_LOG_LEVEL", "info"), "trace, debug, info, warn or error")
	return cmd
}

func parseLabels(kvs []string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want K=V", kv)
		}
		out[k] = v
	}
	return out, nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
