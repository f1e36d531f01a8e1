package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"stevedore/internal/config"
	"stevedore/internal/pgdb"
	"stevedore/server"
	"stevedore/server/store"
	"stevedore/server/store/pgstore"
	"stevedore/transport"
)

// defaultDataDir holds a server's identity, database, task logs and artifacts.
const defaultDataDir = "/var/lib/stevedore-server"

type serverOptions struct {
	dataDir, httpAddr, pollingAddr, taskLogs, artifacts string
	db                                                  string
	adminEmail                                          string
	log                                                 logOptions
	httpCert, httpKey                                   string
	httpTLS                                             bool
	trust                                               []string
	builtinWorker, dind                                 bool
	builtinSlots                                        int
	retention                                           time.Duration
	maxStorage                                          string
	workerLostAfter, queueTimeout, stepLease            time.Duration
	node                                                string
}

func newServerCommand() *cobra.Command {
	var o serverOptions
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the reference server: a step queue, polling workers and an HTTP API",
		Long: `Runs stevedore's reference server. Polling agents dial --polling (mutual TLS:
the server accepts only the thumbprints given with --trust; agents pin the
server's, which ` + "`stevedore cert --state-dir DATA_DIR`" + ` prints). Steps submitted
through the HTTP API on --http are queued durably, dispatched to a worker or a
pool with a free slot, and followed to their end: every log line is stored in
the task log before the step's cursor moves, so a restarted server resumes
each step with nothing lost and nothing twice.

The API's admin credentials are created on the first start from
ADMIN_USERNAME and ADMIN_PASSWORD; without ADMIN_PASSWORD a password is
generated and written to DATA_DIR/admin-password. ADMIN_EMAIL (or
--admin-email), the admin's address, is stored with them on the first start
and shown with the admin (GET /web/session); a malformed one stops the
server at any start. MASTER_KEY (base64 of 16 bytes) encrypts the stored
steps; without it a key file in DATA_DIR is used.

The server's state (queue, steps, workers, trust, users, API keys) is a
bbolt file in DATA_DIR, or, with --db or DB_CONNECTION_STRING
(postgres://USER:PASSWORD@HOST:PORT/DATABASE), a PostgreSQL database, whose
schema the server migrates at start-up; task logs and artifacts stay in
DATA_DIR either way.

Several server nodes may serve one queue: give each the same --db and
MASTER_KEY, a --node name of its own, and --task-logs and --artifacts on a
directory every node reads and writes (an NFS or cloud file share). A step
submitted through any node goes to whichever node its worker is connected
to; any node answers for any step and follows its live log. A node holds
each step it drives by a lease (--step-lease), renewed while the worker is
connected to it; when a node dies, its workers redial another node (give
agents every node's address) and that node drives their steps on from
their cursors once the leases have run out.

The admin creates API keys (POST /api/keys {"name","role"}) for CI systems
and dashboards, which send them as bearer tokens: role reader reads steps,
logs, artifacts and workers; submitter also submits and cancels steps;
admin may do everything.

STEVEDORE_REGISTRATION_TOKEN lets agents trust themselves: an agent started
with --register URL and the same token adds its own thumbprint (and can do
nothing else with it), so identical cloud workers join without --trust.

--builtin-worker runs an agent inside the server, connected over the polling
port like any other worker, in the pool "builtin".

--dind (the container image's default) starts, before the server, a Docker
Engine of its own (dockerd, data root /var/lib/docker, socket
/var/run/docker.sock) for the built-in worker's container steps, and stops
it after the server. It needs a privileged container with a network of its
own, and refuses at once otherwise. DISABLE_DIND=Y turns it off: the worker
then drives the engine DOCKER_HOST names (by default the local socket).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.dind && os.Getenv("DISABLE_DIND") != "Y" {
				return runServerWithEngine(cmd.Context(), &o, cmd.ErrOrStderr())
			}
			return runServer(cmd.Context(), &o, cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", defaultDataDir, "the server's identity, database, task logs and artifacts (env STEVEDORE_DATA_DIR)")
	f.StringVar(&o.db, "db", "", "keep the server's state in this PostgreSQL database, a postgres:// URL (env DB_CONNECTION_STRING, which keeps its password out of ps; default: bbolt in DATA_DIR)")
	f.StringVar(&o.adminEmail, "admin-email", "", "the admin's email address, stored with the admin's credentials on the first start (env ADMIN_EMAIL)")
	f.StringVar(&o.httpAddr, "http", ":8080", "address of the HTTP API")
	f.BoolVar(&o.httpTLS, "http-tls", false, "serve the API over HTTPS with the server's own certificate (clients pin its thumbprint)")
	f.StringVar(&o.httpCert, "http-cert", "", "serve the API over HTTPS with this certificate (PEM; with --http-key)")
	f.StringVar(&o.httpKey, "http-key", "", "the key of --http-cert (PEM)")
	f.StringVar(&o.pollingAddr, "polling", ":10943", "address polling agents dial")
	f.StringArrayVar(&o.trust, "trust", nil, "thumbprint of an agent allowed to connect (repeatable)")
	f.StringVar(&o.taskLogs, "task-logs", "", "task log directory (default DATA_DIR/taskLogs)")
	f.StringVar(&o.artifacts, "artifacts", "", "artifact directory (default DATA_DIR/artifacts)")
	f.BoolVar(&o.builtinWorker, "builtin-worker", false, "run a worker inside the server")
	f.IntVar(&o.builtinSlots, "builtin-worker-slots", 2, "steps the built-in worker runs at once")
	f.BoolVar(&o.dind, "dind", false, "start a Docker Engine of the server's own for the built-in worker (Docker in Docker; a privileged container); DISABLE_DIND=Y turns it off")
	f.DurationVar(&o.retention, "retention", 0, "remove completed steps, their task logs and artifacts after this long (0: keep them)")
	f.DurationVar(&o.workerLostAfter, "worker-lost-after", 30*time.Minute, "how long a running step waits for its worker to come back before it ends LOST (one never sent is queued again); 0: for ever")
	f.DurationVar(&o.queueTimeout, "queue-timeout", 0, "how long a step waits in the queue for a worker when its submission does not say; then it ends TIMED_OUT (0: for ever)")
	f.StringVar(&o.node, "node", os.Getenv("NODE_NAME"), "this server node's name among the nodes sharing --db (env NODE_NAME; default: the host name)")
	f.DurationVar(&o.stepLease, "step-lease", server.DefaultStepLease, "how long a node's hold on a running step lasts unless renewed: the longest its steps wait for another node after it dies (with --db)")
	f.StringVar(&o.maxStorage, "max-storage", "0", "keep at most this much of completed steps' task logs and artifacts, e.g. 50GiB; the steps that completed first go (0: no bound)")
	o.log.flags(f)
	cmd.AddCommand(newShowMasterKeyCommand())
	return cmd
}

func runServer(ctx context.Context, o *serverOptions, stderr interface{ Write([]byte) (int, error) }) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log, err := o.log.logger(stderr)
	if err != nil {
		return err
	}
	id, created, err := transport.LoadOrCreateIdentity(o.dataDir)
	if err != nil {
		return err
	}
	trust, err := transport.NewTrustList(o.trust...)
	if err != nil {
		return err
	}
	if len(o.trust) == 0 && !o.builtinWorker {
		log.Warn("no --trust thumbprints: no polling agent can connect (listening workers can still be registered)")
	}
	maxStorage, err := config.ParseSize(o.maxStorage)
	if err != nil {
		return fmt.Errorf("--max-storage %q: want a size such as 50GiB or 20GB: %w", o.maxStorage, err)
	}
	adminEmail := o.adminEmail
	if adminEmail == "" {
		adminEmail = os.Getenv("ADMIN_EMAIL")
	}
	openStore, where, err := storeOpener(ctx, o.db)
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{DataDir: o.dataDir, Identity: id, Trust: trust, MasterKey: os.Getenv("MASTER_KEY"),
		AdminUsername: os.Getenv("ADMIN_USERNAME"), AdminPassword: os.Getenv("ADMIN_PASSWORD"), AdminEmail: adminEmail,
		RegistrationToken: os.Getenv("STEVEDORE_REGISTRATION_TOKEN"), OpenStore: openStore,
		TaskLogsDir: o.taskLogs, ArtifactsDir: o.artifacts, Retention: o.retention, MaxStorage: maxStorage, WorkerLostAfter: o.workerLostAfter, QueueTimeout: o.queueTimeout, Node: o.node, StepLease: o.stepLease, Logger: log})
	if err != nil {
		return err
	}
	defer srv.Close()
	if kept := srv.Identity(); kept.Thumbprint != id.Thumbprint {
		// The database's identity, which agents pin. A data dir that had
		// none (a new container) takes it, so that `stevedore cert` on
		// it prints the thumbprint the server presents.
		if created {
			if err := transport.SaveIdentity(o.dataDir, kept); err != nil {
				return fmt.Errorf("identity: %w", err)
			}
		} else {
			log.Warn("the data dir's identity is not the one kept in the database: the database's is presented", "thumbprint", kept.Thumbprint, "data_dir_thumbprint", id.Thumbprint)
		}
		id = kept
	}
	pollLis, err := net.Listen("tcp", o.pollingAddr)
	if err != nil {
		return fmt.Errorf("polling port: %w", err)
	}
	defer pollLis.Close()
	httpLis, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		return fmt.Errorf("http port: %w", err)
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	scheme := "http"
	switch {
	case o.httpCert != "" || o.httpKey != "":
		cert, err := tls.LoadX509KeyPair(o.httpCert, o.httpKey)
		if err != nil {
			return fmt.Errorf("--http-cert/--http-key: %w", err)
		}
		hs.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	case o.httpTLS:
		hs.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{id.Certificate}}
	}
	if hs.TLSConfig != nil {
		scheme = "https"
		httpLis = tls.NewListener(httpLis, hs.TLSConfig)
	}
	errs := make(chan error, 2)
	go func() { errs <- srv.ServePolling(pollLis) }()
	if o.builtinWorker {
		stopWorker, metrics, err := startBuiltinWorker(ctx, o.dataDir, pollLis.Addr().String(), id,
			func(local *transport.Identity) (*transport.Identity, error) {
				return srv.KeepIdentity("builtin-worker", local)
			}, trust, o.builtinSlots, log)
		if err != nil {
			return fmt.Errorf("built-in worker: %w", err)
		}
		defer stopWorker()
		// The built-in worker's own metrics, beside the server's.
		mux := http.NewServeMux()
		mux.Handle("GET /metrics/builtin-worker", metrics)
		mux.Handle("/", hs.Handler)
		hs.Handler = mux
	}
	go func() { errs <- hs.Serve(httpLis) }()
	log.Info("server ready", "thumbprint", id.Thumbprint, "polling", pollLis.Addr().String(), "api", scheme+"://"+httpLis.Addr().String(),
		"data_dir", o.dataDir, "database", where, "builtin_worker", o.builtinWorker)
	select {
	case <-ctx.Done():
		log.Info("stopping: running steps go on on their workers and are resumed at the next start")
	case err := <-errs:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hs.Shutdown(sctx)
	return nil
}

// storeOpener chooses the server's store: PostgreSQL for a --db (or
// DB_CONNECTION_STRING) URL, else nil, the bbolt file in the data dir. It
// says where for the log, never with the password. A URL that is not one
// fails here, before anything starts; an unreachable database fails
// server.New, which opens it.
func storeOpener(ctx context.Context, url string) (open func() (store.Store, error), where string, err error) {
	if url == "" {
		url = os.Getenv("DB_CONNECTION_STRING")
	}
	if url == "" {
		return nil, "bbolt in the data dir", nil
	}
	cfg, err := pgdb.Config(url)
	if err != nil {
		return nil, "", fmt.Errorf("--db (DB_CONNECTION_STRING): %w", err)
	}
	where = "postgres " + pgdb.Describe(cfg)
	return func() (store.Store, error) {
		s, err := pgstore.Open(ctx, url)
		if err != nil {
			return nil, fmt.Errorf("database (--db, DB_CONNECTION_STRING): %w", err)
		}
		return s, nil
	}, where, nil
}
