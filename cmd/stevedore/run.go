package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

// exitCannotRun is run's exit code when the step could not run at all
// (image rejected, pull failed, agent unreachable or untrusted), as docker
// run uses 125 for its own failures.
const exitCannotRun = 125

// unreachableFor is how long run rides out an agent it cannot reach (a
// restart, a dropped connection) once the step has started.
const unreachableFor = 2 * time.Minute

type runOptions struct {
	stateDir, agentAddr, agentThumbprint    string
	image, pull, registryUser, registryPass string
	vars, sensitive                         []string
	timeout                                 time.Duration
	syntax, resultFile, script, scriptFile  string
	// verbose shows the step's verbose lines too.
	verbose bool
	// Through a server (--server) instead of an agent.
	server, pool, worker, user, password, serverThumbprint string
	// token is an API key, sent as a bearer token instead of user and password.
	token string
	// labels a worker of the pool must have.
	labels []string
	// queueTimeout bounds the wait for a worker (server's default if 0).
	queueTimeout time.Duration
}

func newRunCommand() *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run one step on an agent, or through a server, and stream its log",
		Long: `Starts a step on the agent at --agent (its certificate pinned by
--agent-thumbprint), streams the step's stdout to stdout and its stderr and the
agent's own lines to stderr, writes a JSON result to --result, downloads the
artifacts beside it, and exits with the step's exit code, or 125 when the step
could not run. Lines the script set to a level (Octopus's stdout-warning and
the like): verbose ones only with --verbose, highlighted ones in bold on a
terminal, warnings and errors to stderr marked "warning: " and "error: ".

With --server URL (a stevedore server's HTTP API) and --pool or --worker, the
step is submitted to the server instead, which queues it and runs it on a
worker; the output, result file and exit codes are the same. Credentials:
an API key with the submitter role, --token or STEVEDORE_TOKEN; or the
admin's --user and --password, or STEVEDORE_USER and STEVEDORE_PASSWORD.
A token, when given, is used instead of the username and password.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runStep(cmd, &o) },
	}
	stateDirFlag(cmd, &o.stateDir)
	f := cmd.Flags()
	f.StringVar(&o.agentAddr, "agent", "127.0.0.1:10933", "the agent's address")
	f.StringVar(&o.agentThumbprint, "agent-thumbprint", "", "the agent's certificate thumbprint (required without --server)")
	f.StringVar(&o.image, "image", "", "run in a container of this image (default: on the agent's host)")
	f.StringVar(&o.pull, "pull", "", "pull policy: always, if-not-present or never (default: by tag)")
	f.StringVar(&o.registryUser, "registry-user", "", "registry user for the image")
	f.StringVar(&o.registryPass, "registry-password", envOr("STEVEDORE_REGISTRY_PASSWORD", ""), "registry password (env STEVEDORE_REGISTRY_PASSWORD)")
	f.StringArrayVar(&o.vars, "var", nil, "a variable NAME=VALUE (repeatable)")
	f.StringArrayVar(&o.sensitive, "sensitive", nil, "a sensitive variable NAME=VALUE, masked in the log (repeatable)")
	f.DurationVar(&o.timeout, "timeout", 0, "end the step TIMED_OUT after this long")
	f.StringVar(&o.syntax, "syntax", "bash", "bash, sh or python")
	f.StringVar(&o.resultFile, "result", "", "write the JSON result here; artifacts go beside it")
	f.StringVar(&o.script, "script", "", "the script")
	f.StringVar(&o.scriptFile, "script-file", "", "read the script from this file")
	f.BoolVar(&o.verbose, "verbose", false, "show the step's verbose lines too")
	f.StringVar(&o.server, "server", "", "submit through this server's HTTP API (http://host:8080) instead")
	f.StringVar(&o.serverThumbprint, "server-thumbprint", "", "with an https --server: pin the server's certificate thumbprint instead of trusting the system's CAs")
	f.StringVar(&o.pool, "pool", "", "with --server: run on a worker of this pool")
	f.StringVar(&o.worker, "worker", "", "with --server: run on this worker")
	f.DurationVar(&o.queueTimeout, "queue-timeout", 0, "with --server: end the step TIMED_OUT if no worker takes it within this long (default: the server's)")
	f.StringArrayVar(&o.labels, "label", nil, "with --server: run only on a worker with this label K=V (repeatable; its agent's --label)")
	f.StringVar(&o.user, "user", "", "with --server: the API username (env STEVEDORE_USER)")
	f.StringVar(&o.password, "password", "", "with --server: the API password (env STEVEDORE_PASSWORD)")
	f.StringVar(&o.token, "token", "", "with --server: an API key, instead of --user and --password (env STEVEDORE_TOKEN)")
	cmd.MarkFlagsMutuallyExclusive("script", "script-file")
	cmd.MarkFlagsMutuallyExclusive("server", "agent")
	cmd.MarkFlagsMutuallyExclusive("pool", "worker")
	return cmd
}

// runResult is the JSON of --result.
type runResult struct {
	Ticket          string            `json:"ticket"`
	Outcome         string            `json:"outcome"`
	ExitCode        *int32            `json:"exit_code"`
	Signal          string            `json:"signal,omitempty"`
	Reason          string            `json:"reason,omitempty"`
	OutputVariables map[string]string `json:"output_variables"`
	Artifacts       []runArtifact     `json:"artifacts"`
}

type runArtifact struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	File   string `json:"file,omitempty"`
	Size   int64  `json:"size_bytes"`
	SHA256 string `json:"sha256"`
}

func runStep(cmd *cobra.Command, o *runOptions) error {
	req, err := o.request()
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	stdout := bufio.NewWriterSize(cmd.OutOrStdout(), 256<<10)
	stderr := bufio.NewWriterSize(cmd.ErrOrStderr(), 64<<10)
	defer stdout.Flush()
	defer stderr.Flush()
	intr := newInterrupter(cmd.ErrOrStderr())
	defer intr.stop()
	lp := newLinePrinter(stdout, stderr, cmd.OutOrStdout(), cmd.ErrOrStderr(), o.verbose)
	if o.server != "" {
		return runViaServer(ctx, o, req, lp, intr)
	}
	if o.agentThumbprint == "" {
		return errors.New("--agent-thumbprint is required (or --server to go through a server)")
	}
	client, closeConn, err := dialAgent(ctx, o.stateDir, o.agentAddr, o.agentThumbprint)
	if err != nil {
		return exitCodeError{exitCannotRun, err}
	}
	defer closeConn()
	var st *pb.StepStatus
	if err := retry(ctx, func() (err error) { st, err = client.StartStep(ctx, req); return err }); err != nil {
		return exitCodeError{exitCannotRun, fmt.Errorf("start step: %w", err)}
	}
	intr.arm(func() {
		if err := retry(ctx, func() error {
			_, err := client.CancelStep(ctx, &pb.CancelStepRequest{Ticket: req.Ticket})
			return err
		}); err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "stevedore: cancel step %s: %v\n", req.Ticket, err)
		}
	})
	after := uint64(0)
	for {
		after = lp.print(st.GetLines(), after)
		stdout.Flush()
		stderr.Flush()
		if st.GetState() == pb.StepState_STEP_STATE_COMPLETE && after+1 >= st.GetNextSequence() {
			break
		}
		err := retry(ctx, func() (err error) {
			st, err = client.GetStatus(ctx, &pb.GetStatusRequest{Ticket: req.Ticket, AfterSequence: after, Wait: durationpb.New(30 * time.Second)})
			return err
		})
		if err != nil {
			return exitCodeError{exitCannotRun, fmt.Errorf("follow step %s: %w", req.Ticket, err)}
		}
	}
	final := st
	res := runResult{Ticket: req.Ticket, Outcome: outcomeName(final.GetOutcome()), ExitCode: final.ExitCode,
		Signal: final.GetSignal(), Reason: final.GetReason(), OutputVariables: map[string]string{}, Artifacts: []runArtifact{}}
	for _, v := range final.GetOutputVariables() {
		res.OutputVariables[v.GetName()] = v.GetValue()
	}
	for _, a := range final.GetArtifacts() {
		ra := runArtifact{Name: a.GetName(), Path: a.GetPath(), Size: a.GetSizeBytes(), SHA256: a.GetSha256()}
		if o.resultFile != "" {
			file, err := download(ctx, client, req.Ticket, a, filepath.Dir(o.resultFile))
			if err != nil {
				fmt.Fprintf(stderr, "stevedore: artifact %s: %v\n", a.GetName(), err)
			}
			ra.File = file
		}
		res.Artifacts = append(res.Artifacts, ra)
	}
	// Complete: the agent returns the remaining lines and cleans up.
	for {
		var done *pb.StepStatus
		err := retry(ctx, func() (err error) {
			done, err = client.CompleteStep(ctx, &pb.CompleteStepRequest{Ticket: req.Ticket, AfterSequence: after})
			return err
		})
		if err != nil {
			fmt.Fprintf(stderr, "stevedore: complete step %s: %v\n", req.Ticket, err)
			break
		}
		after = lp.print(done.GetLines(), after)
		if len(done.GetLines()) == 0 || after+1 >= done.GetNextSequence() {
			break
		}
	}
	return finishRun(o, res, final, stdout, stderr)
}

// finishRun writes the result file and ends with the step's exit code.
func finishRun(o *runOptions, res runResult, final *pb.StepStatus, stdout, stderr *bufio.Writer) error {
	if o.resultFile != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(o.resultFile, append(b, '\n'), 0o644); err != nil {
			return exitCodeError{exitCannotRun, fmt.Errorf("result: %w", err)}
		}
	}
	stdout.Flush()
	stderr.Flush()
	code := stepExitCode(final)
	if code != 0 {
		return exitCodeError{code, fmt.Errorf("step %s %s: %s", res.Ticket, strings.ToLower(res.Outcome), reasonOr(final))}
	}
	return nil
}

func reasonOr(st *pb.StepStatus) string {
	if st.GetReason() != "" {
		return st.GetReason()
	}
	if st.ExitCode != nil {
		return fmt.Sprintf("exit code %d", st.GetExitCode())
	}
	return "no exit code"
}

// stepExitCode is the step's own exit code, or 125 when it never ran.
func stepExitCode(st *pb.StepStatus) int {
	switch st.GetOutcome() {
	case pb.Outcome_OUTCOME_SUCCEEDED:
		return 0
	case pb.Outcome_OUTCOME_FAILED, pb.Outcome_OUTCOME_CANCELLED, pb.Outcome_OUTCOME_TIMED_OUT, pb.Outcome_OUTCOME_LOST:
		if st.ExitCode != nil && st.GetExitCode() != 0 {
			return int(st.GetExitCode())
		}
		if st.GetOutcome() == pb.Outcome_OUTCOME_FAILED {
			return 1
		}
	}
	return exitCannotRun
}

func outcomeName(o pb.Outcome) string {
	return strings.TrimPrefix(o.String(), "OUTCOME_")
}

// retry calls f until it succeeds, fails for a reason other than the agent
// being unreachable, or the agent has been unreachable for unreachableFor.
// Every call it retries is idempotent.
func retry(ctx context.Context, f func() error) error {
	return retryWhile(ctx, func(err error) bool { return status.Code(err) == codes.Unavailable }, f)
}

// retryWhile calls f, with backoff, while it fails in a way transient says
// may pass, for up to unreachableFor.
func retryWhile(ctx context.Context, transient func(error) bool, f func() error) error {
	deadline := time.Now().Add(unreachableFor)
	backoff := 200 * time.Millisecond
	for {
		err := f()
		if err == nil || !transient(err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func download(ctx context.Context, client pb.AgentClient, ticket string, a *pb.Artifact, dir string) (string, error) {
	return saveArtifact(dir, a.GetName(), a.GetSizeBytes(), a.GetSha256(), func(w io.Writer) error {
		stream, err := client.DownloadFile(ctx, &pb.DownloadFileRequest{Ticket: ticket, Path: a.GetPath()})
		if err != nil {
			return err
		}
		for {
			msg, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if _, err := w.Write(msg.GetData()); err != nil {
				return err
			}
		}
	})
}

// saveArtifact writes the artifact name into dir with what fetch writes,
// and checks it has the artifact's size and SHA-256. The file is made anew
// on each call, so a caller may retry it whole.
func saveArtifact(dir, name string, size int64, sum string, fetch func(w io.Writer) error) (string, error) {
	path := filepath.Join(dir, filepath.Base(filepath.Clean("/"+name)))
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(f, h)}
	if err := fetch(cw); err != nil {
		return "", err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum || cw.n != size {
		return "", fmt.Errorf("downloaded %d bytes with SHA-256 %s, want %d bytes with %s", cw.n, got, size, sum)
	}
	return path, f.Sync()
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (o *runOptions) request() (*pb.StartStepRequest, error) {
	body := o.script
	if o.scriptFile != "" {
		b, err := os.ReadFile(o.scriptFile)
		if err != nil {
			return nil, fmt.Errorf("script file: %w", err)
		}
		body = string(b)
	}
	if body == "" {
		return nil, errors.New("no script: give --script or --script-file")
	}
	syntax, ok := map[string]pb.Syntax{"bash": pb.Syntax_SYNTAX_BASH, "sh": pb.Syntax_SYNTAX_SH, "python": pb.Syntax_SYNTAX_PYTHON}[o.syntax]
	if !ok {
		return nil, fmt.Errorf("--syntax %q: want bash, sh or python", o.syntax)
	}
	ticket := make([]byte, 8)
	if _, err := rand.Read(ticket); err != nil {
		return nil, err
	}
	req := &pb.StartStepRequest{Ticket: "run-" + hex.EncodeToString(ticket), Script: &pb.Script{Syntax: syntax, Body: body}}
	for _, group := range []struct {
		kvs       []string
		sensitive bool
	}{{o.vars, false}, {o.sensitive, true}} {
		for _, kv := range group.kvs {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("variable %q: want NAME=VALUE", kv)
			}
			req.Variables = append(req.Variables, &pb.Variable{Name: k, Value: v, Sensitive: group.sensitive})
		}
	}
	if o.timeout > 0 {
		req.Timeout = durationpb.New(o.timeout)
	}
	if o.image != "" {
		policy, ok := map[string]pb.PullPolicy{"": pb.PullPolicy_PULL_POLICY_UNSPECIFIED, "always": pb.PullPolicy_PULL_POLICY_ALWAYS,
			"if-not-present": pb.PullPolicy_PULL_POLICY_IF_NOT_PRESENT, "never": pb.PullPolicy_PULL_POLICY_NEVER}[o.pull]
		if !ok {
			return nil, fmt.Errorf("--pull %q: want always, if-not-present or never", o.pull)
		}
		c := &pb.ContainerExecution{Image: o.image, PullPolicy: policy}
		if o.registryUser != "" || o.registryPass != "" {
			c.Credentials = &pb.RegistryCredentials{Username: o.registryUser, Password: o.registryPass}
		}
		req.Execution = &pb.Execution{Target: &pb.Execution_Container{Container: c}}
	} else {
		req.Execution = &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}}
	}
	return req, nil
}

// dialAgent connects to the agent at addr with the identity in stateDir,
// pinning its thumbprint, and checks with one cheap call that the agent
// answers and trusts us, so that a client fails fast before it starts anything.
func dialAgent(ctx context.Context, stateDir, addr, thumbprint string) (pb.AgentClient, func(), error) {
	id, _, err := transport.LoadOrCreateIdentity(stateDir)
	if err != nil {
		return nil, nil, err
	}
	conn, err := transport.Dial(addr, id, thumbprint)
	if err != nil {
		return nil, nil, err
	}
	client := pb.NewAgentClient(conn)
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, err := client.GetCapabilities(cctx, &pb.GetCapabilitiesRequest{}); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("agent %s unreachable or untrusted: %w", addr, err)
	}
	return client, func() { conn.Close() }, nil
}
