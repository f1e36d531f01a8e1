package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"

	"stevedore/agent"
	"stevedore/executor"
	"stevedore/internal/config"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/registry"
	"stevedore/transport"
)

func newAgentCommand() *cobra.Command {
	var (
		configFile, stateDir, listen, bundleDir, name string
		logOpts                                       logOptions
		metricsAddr                                   string
		trust, labels, pools                          []string
		maxSteps                                      int
		grace, retention                              time.Duration
		minFreeDisk, maxLogSize                       string
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the agent: accept steps from trusted servers and run them",
		Long: `Runs the stevedore agent. In listening mode it serves the Agent gRPC service
on --listen with mutual TLS, accepting only clients whose certificate
thumbprint is trusted (--trust, or trust in the --config file). In polling
mode (--server ADDR --server-thumbprint T) it dials the server instead, for
workers behind NAT or firewalls, and serves the same service over the
connection it dialed, redialing with jittered backoff (1 s to 60 s).

A server of several nodes: give each node's polling address, and the
thumbprint of each node's certificate (one, if they share it), repeated or
comma-separated (--server a:10943,b:10943). The agent keeps to the node it
last connected to and moves on to the next at once when that one fails;
it waits the backoff only when every node failed.

--config FILE is an HCL file with the same settings and more: feeds
(registries and their credentials), allowed_images, pre-pulled images and
the image cache's garbage collection. Flags given on the command line win
over the file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logOpts.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			cfg := config.Defaults()
			if configFile != "" {
				var err error
				if cfg, err = config.Load(configFile); err != nil {
					return err
				}
			}
			flags := cmd.Flags()
			if flags.Changed("state-dir") || cfg.StateDir == "" {
				cfg.StateDir = stateDir
			}
			if flags.Changed("listen") {
				cfg.Listen = listen
			}
			if flags.Changed("metrics") {
				cfg.Metrics = metricsAddr
			}
			if flags.Changed("bundle") {
				cfg.Bundle = bundleDir
			}
			if flags.Changed("max-steps") {
				cfg.MaxSteps = maxSteps
			}
			if flags.Changed("cancel-grace") {
				cfg.CancelGrace = grace
			}
			for flag, dst := range map[string]*int64{"min-free-disk": &cfg.MinFreeDisk, "max-log-size": &cfg.MaxLogSize} {
				if !flags.Changed(flag) {
					continue
				}
				v, _ := flags.GetString(flag)
				n, err := config.ParseSize(v)
				if err != nil {
					return fmt.Errorf("--%s %q: %w", flag, v, err)
				}
				*dst = n
			}
			if flags.Changed("name") {
				cfg.Name = name
			}
			cfg.Trust = append(cfg.Trust, trust...)
			cfg.Pools = append(cfg.Pools, pools...)
			lbl, err := parseLabels(labels)
			if err != nil {
				return err
			}
			if cfg.Labels == nil {
				cfg.Labels = map[string]string{}
			}
			for k, v := range lbl {
				cfg.Labels[k] = v
			}
			if flags.Changed("retention") {
				cfg.Retention = retention
			}
			poll, err := pollingFlags(flags)
			if err != nil {
				return err
			}
			return serveAgent(cmd.Context(), cfg, poll, log)
		},
	}
	stateDirFlag(cmd, &stateDir)
	f := cmd.Flags()
	f.StringVar(&configFile, "config", envOr("STEVEDORE_CONFIG", ""), "HCL configuration file (env STEVEDORE_CONFIG)")
	f.StringVar(&listen, "listen", ":10933", "address to serve the Agent service on")
	f.StringVar(&metricsAddr, "metrics", "", "address to serve Prometheus metrics on, GET /metrics over plain HTTP (e.g. 127.0.0.1:9310; default: off)")
	f.StringArrayVar(&trust, "trust", nil, "thumbprint of a server allowed to connect (repeatable; adds to the file's)")
	f.StringVar(&bundleDir, "bundle", "", "tool bundle directory (default: bundle/ beside this binary)")
	f.IntVar(&maxSteps, "max-steps", 4, "steps that run at once; more wait in order")
	f.DurationVar(&grace, "cancel-grace", 10*time.Second, "default time between TERM and KILL on cancel")
	f.StringVar(&minFreeDisk, "min-free-disk", "500MiB", "free space the state dir must keep for a new step to be accepted (0: no check)")
	f.StringVar(&maxLogSize, "max-log-size", "0", "bytes of a step's own output kept in its log, e.g. 1GiB; past it the output is counted, not kept, and the log says so (0: no bound)")
	f.StringVar(&name, "name", "", "this worker's name (default: the host name)")
	f.StringArrayVar(&labels, "label", nil, "a label K=V reported to the server (repeatable)")
	f.StringSlice("server", nil, "polling mode: the server's polling address (host:10943); several nodes: repeated or comma-separated")
	f.StringSlice("server-thumbprint", nil, "polling mode: the server's certificate thumbprint; of several nodes: repeated or comma-separated")
	f.String("register", "", "polling mode: first register this agent's thumbprint at the server's API (http(s)://host:8080) with STEVEDORE_REGISTRATION_TOKEN")
	f.StringArrayVar(&pools, "pool", nil, "a pool this worker belongs to (repeatable)")
	logOpts.flags(f)
	f.DurationVar(&retention, "retention", 24*time.Hour, "how long an uncollected completed step keeps its container and workspace, and a collected one its tombstone")
	cmd.AddCommand(newAgentDrainCommand())
	return cmd
}

// polling is the server a polling agent dials; no addrs: listening mode.
// addrs are its nodes' polling addresses, thumbprints their certificates'
// (a set: any node may present any of them). registerURL, when set, is the
// server's API, where the agent registers its thumbprint with
// STEVEDORE_REGISTRATION_TOKEN before it dials.
type polling struct {
	addrs, thumbprints []string
	registerURL        string
}

// pollingFlags reads --server, --server-thumbprint and --register.
func pollingFlags(f *pflag.FlagSet) (polling, error) {
	addrs, _ := f.GetStringSlice("server")
	prints, _ := f.GetStringSlice("server-thumbprint")
	register, _ := f.GetString("register")
	return newPolling(addrs, prints, register)
}

// newPolling checks and normalises a polling agent's settings, dropping
// repeats. Addresses must be HOST:PORT and thumbprints thumbprints now, so
// that a typo stops the agent at start rather than making it redial for
// ever.
func newPolling(addrs, thumbprints []string, registerURL string) (polling, error) {
	p := polling{registerURL: registerURL}
	for _, a := range addrs {
		a = strings.TrimSpace(a)
		if _, _, err := net.SplitHostPort(a); err != nil {
			return polling{}, fmt.Errorf("--server %q: want HOST:PORT, e.g. server.example:10943: %w", a, err)
		}
		if !slices.Contains(p.addrs, a) {
			p.addrs = append(p.addrs, a)
		}
	}
	for _, t := range thumbprints {
		tp, err := transport.ParseThumbprint(t)
		if err != nil {
			return polling{}, fmt.Errorf("--server-thumbprint: %w", err)
		}
		if !slices.Contains(p.thumbprints, tp) {
			p.thumbprints = append(p.thumbprints, tp)
		}
	}
	return p, nil
}

// agentPIDFile, in the state dir, names the running agent's process for
// `stevedore agent drain`.
const agentPIDFile = "agent.pid"

func newAgentDrainCommand() *cobra.Command {
	var (
		stateDir string
		wait     bool
		timeout  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "drain",
		Short: "Drain the running agent: it takes no new steps, finishes the running ones, then exits",
		Long: `Signals the agent running on --state-dir (SIGQUIT, as its pid file names
it). The agent refuses new steps (Unavailable) at once, keeps serving the
running ones until they have ended, then exits. With --wait (the default)
this command returns when the agent has exited.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := os.ReadFile(filepath.Join(stateDir, agentPIDFile))
			if err != nil {
				return fmt.Errorf("no running agent on %s: %w", stateDir, err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil || pid <= 0 {
				return fmt.Errorf("%s: not a pid: %q", agentPIDFile, b)
			}
			if err := syscall.Kill(pid, syscall.SIGQUIT); err != nil {
				return fmt.Errorf("signal the agent (pid %d): %w", pid, err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "agent %d draining: no new steps; it exits when the running ones have ended\n", pid)
			if !wait {
				return nil
			}
			var deadline <-chan time.Time
			if timeout > 0 {
				deadline = time.After(timeout)
			}
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for syscall.Kill(pid, 0) == nil {
				select {
				case <-deadline:
					return fmt.Errorf("agent %d still running after %s", pid, timeout)
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-t.C:
				}
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "agent %d drained and exited\n", pid)
			return nil
		},
	}
	stateDirFlag(cmd, &stateDir)
	cmd.Flags().BoolVar(&wait, "wait", true, "wait until the agent has exited")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "with --wait, give up after this long (0: no limit)")
	return cmd
}

// serveAgent runs the agent described by cfg until SIGTERM or SIGINT.
func serveAgent(ctx context.Context, cfg config.Agent, poll polling, log hclog.Logger) error {
	if ctx == nil {
		ctx = context.Background()
	}
	id, _, err := transport.LoadOrCreateIdentity(cfg.StateDir)
	if err != nil {
		return err
	}
	polls := len(poll.addrs) > 0
	if polls {
		cfg.Trust = poll.thumbprints
	}
	if len(cfg.Trust) == 0 {
		return errors.New("no trusted thumbprint: nobody could connect; give the server's with --trust, or --server-thumbprint in polling mode (`stevedore cert` prints it)")
	}
	trustList, err := transport.NewTrustList(cfg.Trust...)
	if err != nil {
		return err
	}
	if cfg.Bundle == "" {
		if cfg.Bundle, err = executor.DefaultBundleDir(); err != nil {
			return err
		}
	}
	bundle, err := executor.LoadBundle(cfg.Bundle)
	if err != nil {
		return fmt.Errorf("tool bundle: %w (run `make build`, or give --bundle)", err)
	}
	resolver, err := registry.NewResolver(cfg.Feeds, "")
	if err != nil {
		return err
	}
	images, err := agentImages(ctx, cfg.Images, resolver)
	if err != nil {
		return err
	}
	if cfg.Name == "" {
		cfg.Name, _ = os.Hostname()
	}
	minFree := cfg.MinFreeDisk
	if minFree == 0 {
		minFree = -1 // 0 in the file or the flag turns the check off
	}
	a, err := agent.New(agent.Config{
		StateDir: cfg.StateDir, Bundle: bundle, MaxSteps: cfg.MaxSteps, DefaultGrace: cfg.CancelGrace,
		MasterKey: os.Getenv("MASTER_KEY"), Name: cfg.Name, Pools: cfg.Pools, Labels: cfg.Labels, Identity: id, Logger: log,
		Images: images, Credentials: resolver, Retention: cfg.Retention, MinFreeDisk: minFree, MaxLogSize: cfg.MaxLogSize,
	})
	if err != nil {
		return err
	}
	defer a.Close()
	pidFile := filepath.Join(cfg.StateDir, agentPIDFile)
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	defer os.Remove(pidFile)
	if cfg.Metrics != "" {
		stopMetrics, err := serveAgentMetrics(cfg.Metrics, a, log.Named("metrics"))
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	// TERM and INT: stop at once, leaving running steps to the next agent.
	// QUIT (`stevedore agent drain`): refuse new steps, finish the running ones.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	quit := make(chan os.Signal, 1)
	signal.Notify(quit, syscall.SIGQUIT)
	defer signal.Stop(quit)
	drained := make(chan error, 1)
	go func() {
		select {
		case <-quit:
			log.Info("drain requested: refusing new steps, waiting for the running ones")
			drained <- a.Drain(ctx)
		case <-ctx.Done():
		}
	}()
	errc := make(chan error, 1)
	var srv *grpc.Server
	if polls {
		// The same service, served over the connection the agent dials.
		srv = grpc.NewServer(transport.PollingServerOptions()...)
		pb.RegisterAgentServer(srv, a)
		if poll.registerURL != "" {
			token := os.Getenv("STEVEDORE_REGISTRATION_TOKEN")
			if token == "" {
				return errors.New("--register needs STEVEDORE_REGISTRATION_TOKEN, the server's registration token")
			}
			if err := registerAgent(ctx, poll.registerURL, token, poll.thumbprints, id.Thumbprint, log.Named("register")); err != nil {
				return err
			}
		}
		p := &transport.Poller{Addrs: poll.addrs, Identity: id, Server: trustList, Log: log.Named("polling")}
		log.Info("agent polling", "servers", poll.addrs, "thumbprint", id.Thumbprint, "bundle", bundle.Dir, "max_steps", cfg.MaxSteps, "pools", cfg.Pools)
		go func() { errc <- p.Run(ctx, srv) }()
	} else {
		lis, err := transport.Listen(cfg.Listen)
		if err != nil {
			return err
		}
		srv = grpc.NewServer(transport.ServerOptions(id, trustList, log.Named("transport"))...)
		pb.RegisterAgentServer(srv, a)
		log.Info("agent listening", "address", lis.Addr().String(), "thumbprint", id.Thumbprint,
			"bundle", bundle.Dir, "max_steps", cfg.MaxSteps, "trusted", len(trustList.List()), "feeds", len(cfg.Feeds))
		go func() { errc <- srv.Serve(lis) }()
	}
	select {
	case err := <-errc:
		if ctx.Err() == nil {
			return err
		}
	case err := <-drained:
		if err == nil {
			log.Info("drained; exiting")
		}
	case <-ctx.Done():
	}
	// Running steps keep running (their runners are detached); a restarted
	// agent follows them again.
	a.StopAccepting("this agent is shutting down; it takes no new steps")
	log.Info("shutting down; running steps go on and are picked up on restart")
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		// Long-polls would hold a graceful stop for up to a minute; callers
		// simply ask the next agent process again.
		srv.Stop()
	}
	return nil
}

// serveAgentMetrics serves GET /metrics, /steps and /healthz on addr over plain
// HTTP, apart from the mutual-TLS gRPC service, as Prometheus scrapes it;
// the returned func shuts it down.
func serveAgentMetrics(addr string, a *agent.Agent, log hclog.Logger) (func(), error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", a.MetricsHandler())
	mux.Handle("GET /steps", a.StepsHandler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server failed", "error", err)
		}
	}()
	log.Info("serving metrics", "address", lis.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}

// agentImages turns the file's image settings into the agent's, resolving
// the pre-pull images' credentials.
func agentImages(ctx context.Context, im config.Images, resolver *registry.Resolver) (agent.ImagesConfig, error) {
	out := agent.ImagesConfig{
		AllowedImages: im.AllowedImages, PullTimeout: im.PullTimeout, StallTimeout: im.StallTimeout,
		Retries: im.Retries, Refresh: im.Refresh, GCInterval: im.GC.Interval,
		GC: registry.GCOptions{MinAge: im.GC.MinAge, MaxBytes: im.GC.MaxBytes, Keep: im.GC.Keep},
	}
	if im.Retries == 0 {
		out.Retries = -1 // the file's 0 means none; the coordinator's 0 means its default
	}
	for _, p := range im.Prepull {
		if err := registry.CheckAllowed(im.AllowedImages, p.Image); err != nil {
			return out, fmt.Errorf("prepull %s: %w", p.Image, err)
		}
		creds, source, err := resolver.Resolve(ctx, p.Image, p.Feed, nil)
		if err != nil {
			return out, fmt.Errorf("prepull %s: %w", p.Image, err)
		}
		out.Prepull = append(out.Prepull, registry.PrepullImage{Image: p.Image, Credentials: creds, Source: source})
	}
	return out, nil
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
