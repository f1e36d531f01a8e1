package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"stevedore/executor"
	"stevedore/internal/config"
	"stevedore/internal/fsutil"
	"stevedore/internal/pgdb"
	"stevedore/packaging/systemd"
	"stevedore/transport"
)

// Where `stevedore install agent` puts things, under --root; the unit's
// ExecStart and EnvironmentFile name the same paths.
const (
	installBin    = "/usr/local/bin/stevedore"
	installBundle = "/usr/local/bin/bundle"
	installConfig = "/etc/stevedore/agent.hcl"
	installEnv    = "/etc/stevedore/agent.env"
	installState  = "/var/lib/stevedore"
	installUnit   = "/etc/systemd/system/" + systemd.AgentUnitName

	installServerEnv   = "/etc/stevedore/server.env"
	installServerState = "/var/lib/stevedore-server"
)

type installOptions struct {
	root, register, listen   string
	server, serverThumbprint []string
	trust, pools, labels     []string
	noStart                  bool
}

func newInstallCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "install", Short: "Install stevedore as a service on this machine"}
	var o installOptions
	agentCmd := &cobra.Command{
		Use:   "agent",
		Short: "Install this binary and its bundle as the systemd service stevedore-agent",
		Long: `Installs this stevedore binary and the tool bundle beside it in /usr/local/bin,
a configuration in /etc/stevedore/agent.hcl, the agent's environment (a
generated MASTER_KEY, and for polling mode the server's address, thumbprint
and registration) in /etc/stevedore/agent.env (mode 0600), and the unit
stevedore-agent.service; creates the agent's identity and prints its
thumbprint; then enables and starts the service (not with --no-start).

Run again, it replaces the binary, the bundle and the unit, and keeps the
configuration, the environment and the identity: an upgrade. Running steps
are not touched (the unit stops the agent only, and the next one reattaches).

Polling mode, for a pool of identical cloud workers (with the server's
STEVEDORE_REGISTRATION_TOKEN in this environment, the agent trusts itself at
the server on its first start):
  stevedore install agent --server HOST:10943 --server-thumbprint T \
    --register https://HOST:8080 --pool linux
A server of several nodes: every node's address and certificate thumbprint,
repeated or comma-separated:
  stevedore install agent --server node1:10943,node2:10943 \
    --server-thumbprint T1,T2 --register https://HOST:8080 --pool linux
Listening mode:
  stevedore install agent --listen :10933 --trust SERVER_THUMBPRINT`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return installAgent(&o, cmd.OutOrStdout()) },
	}
	f := agentCmd.Flags()
	f.StringVar(&o.root, "root", "/", "install under this directory instead (for images and tests)")
	f.StringSliceVar(&o.server, "server", nil, "polling mode: the server's polling address (host:10943); several nodes: repeated or comma-separated")
	f.StringSliceVar(&o.serverThumbprint, "server-thumbprint", nil, "polling mode: the server's certificate thumbprint; of several nodes: repeated or comma-separated")
	f.StringVar(&o.register, "register", "", "polling mode: register the agent's thumbprint at this server API URL on first start (needs STEVEDORE_REGISTRATION_TOKEN)")
	f.StringVar(&o.listen, "listen", "", "listening mode: the address to serve on (e.g. :10933)")
	f.StringArrayVar(&o.trust, "trust", nil, "listening mode: a server thumbprint to trust (repeatable)")
	f.StringArrayVar(&o.pools, "pool", nil, "a pool this worker serves (repeatable)")
	f.StringArrayVar(&o.labels, "label", nil, "a label K=V this worker reports (repeatable)")
	f.BoolVar(&o.noStart, "no-start", false, "write the files only; do not run systemctl")
	cmd.AddCommand(agentCmd, newInstallServerCommand())
	return cmd
}

type installServerOptions struct {
	root                        string
	trust                       []string
	registration, builtinWorker bool
	noStart                     bool
	db, node                    string
}

func newInstallServerCommand() *cobra.Command {
	var o installServerOptions
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Install this binary as the systemd service stevedore-server",
		Long: `Installs this stevedore binary (and the bundle, for the built-in worker) in
/usr/local/bin, the server's environment in /etc/stevedore/server.env (mode
0600: a generated MASTER_KEY and admin password, and with --registration-token
a generated STEVEDORE_REGISTRATION_TOKEN for pools of cloud workers; with --db
its DB_CONNECTION_STRING and with --node its NODE_NAME) and the
unit stevedore-server.service; creates the server's identity in
/var/lib/stevedore-server and prints its thumbprint, which agents pin; then
enables and starts the service (not with --no-start). Run again, it upgrades
the binary and the unit and keeps the environment and the identity.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return installServer(&o, cmd.OutOrStdout()) },
	}
	f := cmd.Flags()
	f.StringVar(&o.root, "root", "/", "install under this directory instead (for images and tests)")
	f.StringArrayVar(&o.trust, "trust", nil, "the thumbprint of an agent allowed to connect (repeatable)")
	f.BoolVar(&o.registration, "registration-token", false, "generate a registration token, with which agents started with --register trust themselves")
	f.BoolVar(&o.builtinWorker, "builtin-worker", false, "run a worker inside the server")
	f.StringVar(&o.db, "db", "", "keep the server's state in this PostgreSQL database (postgres:// URL), written to the environment file as DB_CONNECTION_STRING")
	f.StringVar(&o.node, "node", "", "this server node's name among those sharing --db (NODE_NAME; default: the host name)")
	f.BoolVar(&o.noStart, "no-start", false, "write the files only; do not run systemctl")
	return cmd
}

func installServer(o *installServerOptions, out io.Writer) error {
	for _, t := range o.trust {
		if _, err := transport.ParseThumbprint(t); err != nil {
			return err
		}
	}
	env := []string{"MASTER_KEY=" + randomSecret(16), "ADMIN_USERNAME=admin", "ADMIN_PASSWORD=" + randomToken(18)}
	if o.registration {
		env = append(env, "STEVEDORE_REGISTRATION_TOKEN="+randomToken(24))
	}
	if len(o.trust) > 0 {
		env = append(env, "STEVEDORE_TRUST="+strings.Join(o.trust, ","))
	}
	if o.builtinWorker {
		env = append(env, "STEVEDORE_BUILTIN_WORKER=true")
	}
	if o.db != "" {
		if _, err := pgdb.Config(o.db); err != nil {
			return err
		}
		env = append(env, "DB_CONNECTION_STRING="+o.db)
	}
	if o.node != "" {
		env = append(env, "NODE_NAME="+o.node)
	}
	err := service{
		root: o.root, noStart: o.noStart, who: "server", unitName: systemd.ServerUnitName, unit: systemd.ServerUnit, state: installServerState,
		own: []ownFile{{installServerEnv, []byte(strings.Join(env, "\n") + "\n"), 0o600}},
	}.install(out)
	if err == nil {
		fmt.Fprintf(out, "the admin password, and any registration token, are in %s\n", filepath.Join(o.root, installServerEnv))
	}
	return err
}

func installAgent(o *installOptions, out io.Writer) error {
	polling, listening := len(o.server) > 0, o.listen != ""
	switch {
	case polling == listening:
		return errors.New("give --server and --server-thumbprint (polling mode) or --listen and --trust (listening mode)")
	case polling && len(o.serverThumbprint) == 0:
		return errors.New("--server needs --server-thumbprint")
	case listening && len(o.trust) == 0:
		return errors.New("--listen needs at least one --trust thumbprint: no server could connect")
	case o.register != "" && os.Getenv("STEVEDORE_REGISTRATION_TOKEN") == "":
		return errors.New("--register needs the server's STEVEDORE_REGISTRATION_TOKEN in the environment")
	}
	poll, err := newPolling(o.server, o.serverThumbprint, o.register)
	if err != nil {
		return err
	}
	for _, t := range o.trust {
		if _, err := transport.ParseThumbprint(t); err != nil {
			return err
		}
	}
	labels, err := parseLabels(o.labels)
	if err != nil {
		return err
	}
	hcl, err := agentHCL(o, labels, listening)
	if err != nil {
		return err
	}
	env := []string{"MASTER_KEY=" + randomSecret(16)}
	if polling {
		// Lists as the agent reads them from its environment: comma-separated.
		env = append(env, "STEVEDORE_SERVER="+strings.Join(poll.addrs, ","), "STEVEDORE_SERVER_THUMBPRINT="+strings.Join(poll.thumbprints, ","))
		if o.register != "" {
			env = append(env, "STEVEDORE_REGISTER="+o.register, "STEVEDORE_REGISTRATION_TOKEN="+os.Getenv("STEVEDORE_REGISTRATION_TOKEN"))
		}
	}
	return service{
		root: o.root, noStart: o.noStart, who: "agent", unitName: systemd.AgentUnitName, unit: systemd.AgentUnit, state: installState,
		own: []ownFile{{installConfig, hcl, 0o644}, {installEnv, []byte(strings.Join(env, "\n") + "\n"), 0o600}},
	}.install(out)
}

// service is what `stevedore install` lays out for one of stevedore's
// services.
type service struct {
	root, who, unitName, state string
	noStart                    bool
	unit                       []byte
	// own are the operator's files once written: written only when absent.
	own []ownFile
}

type ownFile struct {
	path string
	data []byte
	mode os.FileMode
}

// install lays the service out under its root: this binary and its bundle
// (replaced: an upgrade), its own files (kept when present), the unit, the
// state directory and the identity there, whose thumbprint it prints; then
// enables and (re)starts the unit, unless told not to or installing
// under another root, where systemctl would act on this machine instead.
func (sv service) install(out io.Writer) error {
	under := func(p string) string { return filepath.Join(sv.root, p) }
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("this binary: %w", err)
	}
	bundle, err := executor.DefaultBundleDir()
	if err != nil {
		return err
	}
	if _, err := executor.LoadBundle(bundle); err != nil {
		return err
	}
	if err := installFile(self, under(installBin), 0o755); err != nil {
		return err
	}
	if err := installTree(bundle, under(installBundle)); err != nil {
		return err
	}
	fmt.Fprintf(out, "installed %s and its bundle in %s\n", under(installBin), under(installBundle))
	for _, f := range sv.own {
		kept, err := writeIfAbsent(under(f.path), f.data, f.mode)
		if err != nil {
			return err
		}
		if kept {
			fmt.Fprintf(out, "kept %s as it was\n", under(f.path))
		} else {
			fmt.Fprintf(out, "wrote %s\n", under(f.path))
		}
	}
	unitPath := under("/etc/systemd/system/" + sv.unitName)
	if err := installBytes(sv.unit, unitPath, 0o644); err != nil {
		return fmt.Errorf("unit: %w", err)
	}
	if err := os.MkdirAll(under(sv.state), 0o700); err != nil {
		return err
	}
	id, _, err := transport.LoadOrCreateIdentity(under(sv.state))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %s\n%s thumbprint: %s\n", unitPath, sv.who, id.Thumbprint)
	if sv.noStart || filepath.Clean(sv.root) != "/" {
		fmt.Fprintln(out, "not started: systemctl daemon-reload && systemctl enable --now "+sv.unitName)
		return nil
	}
	// restart starts the service, or replaces a running one with the new
	// binary: an agent's steps go on and are reattached, a server's resumed.
	for _, args := range [][]string{{"daemon-reload"}, {"enable", sv.unitName}, {"restart", sv.unitName}} {
		if b, err := exec.Command("systemctl", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, b)
		}
	}
	fmt.Fprintln(out, "started "+sv.unitName)
	return nil
}

// randomSecret is n random bytes in standard base64 (MASTER_KEY's form).
func randomSecret(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand)
	return base64.StdEncoding.EncodeToString(b)
}

// randomToken is n random bytes in URL-safe base64: a password or token
// that goes in a header or a URL as it is.
func randomToken(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// agentHCL writes the agent's configuration file for o, and reads it back
// as the agent will, so that a value HCL would read otherwise (a "${",
// a control character) is refused now rather than at the agent's start.
func agentHCL(o *installOptions, labels map[string]string, listening bool) ([]byte, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by `stevedore install agent`; see the README for every setting.\nstate_dir = %s\n", hclString(installState))
	if listening {
		fmt.Fprintf(&b, "listen = %s\ntrust = [%s]\n", hclString(o.listen), hclList(o.trust))
	}
	if len(o.pools) > 0 {
		fmt.Fprintf(&b, "pools = [%s]\n", hclList(o.pools))
	}
	if len(labels) > 0 {
		keys := make([]string, 0, len(labels))
		for k := range labels {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var kvs []string
		for _, k := range keys {
			kvs = append(kvs, hclString(k)+" = "+hclString(labels[k]))
		}
		fmt.Fprintf(&b, "labels = { %s }\n", strings.Join(kvs, ", "))
	}
	tmp, err := os.CreateTemp("", "stevedore-agent-*.hcl")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := tmp.WriteString(b.String()); err != nil {
		return nil, err
	}
	cfg, err := config.Load(tmp.Name())
	if err != nil {
		return nil, fmt.Errorf("the configuration for these settings does not read back: %w", err)
	}
	if !slices.Equal(cfg.Pools, o.pools) && len(o.pools) > 0 || len(labels) > 0 && !maps.Equal(cfg.Labels, labels) {
		return nil, fmt.Errorf("a pool or label does not survive the configuration file: pools %q labels %q read back as %q %q", o.pools, labels, cfg.Pools, cfg.Labels)
	}
	return []byte(b.String()), nil
}

// hclString quotes v for HCL: Go's quoting, with HCL's template
// introducers escaped so "${" stays text.
func hclString(v string) string {
	return strings.NewReplacer("${", "$${", "%{", "%%{").Replace(strconv.Quote(v))
}

func hclList(vs []string) string {
	q := make([]string, len(vs))
	for i, v := range vs {
		q[i] = hclString(v)
	}
	return strings.Join(q, ", ")
}

// writeIfAbsent writes path unless it exists, and reports whether it did.
func writeIfAbsent(path string, data []byte, mode os.FileMode) (kept bool, err error) {
	if _, err := os.Stat(path); err == nil {
		return true, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	return false, installBytes(data, path, mode)
}

// installFile copies src to dst through a temporary file and a rename, so
// a running agent's binary is replaced, never written over.
func installFile(src, dst string, mode os.FileMode) error {
	if same, _ := sameFile(src, dst); same {
		return nil
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return installBytes(b, dst, mode)
}

// installBytes writes dst, and its directory if missing, through a
// temporary file and a rename.
func installBytes(b []byte, dst string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(dst, b, mode)
}

// installTree copies the bundle directory src to dst, file by file; a
// link to a file is copied as the file, a link to a directory is not
// followed (it could lead back into the tree).
func installTree(src, dst string) error {
	if same, _ := sameFile(src, dst); same {
		return nil
	}
	src, err := filepath.EvalSymlinks(src) // WalkDir does not enter a linked root
	if err != nil {
		return err
	}
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		info, err := os.Stat(path) // through a symlink, as the agent reads it
		if err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		return installFile(path, target, info.Mode().Perm())
	})
}

func sameFile(a, b string) (bool, error) {
	ai, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	bi, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(ai, bi), nil
}
