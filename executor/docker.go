package executor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/hashicorp/go-hclog"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"stevedore/registry"
)

// Labels on every container the agent makes; reaping and reattaching find
// containers by them.
const (
	LabelManaged = "io.stevedore.managed"
	LabelTicket  = "io.stevedore.ticket"
	LabelAgent   = "io.stevedore.agent"
)

// BundleMountPath is where the tool bundle appears inside step containers.
const BundleMountPath = "/opt/stevedore/bundle"

// DockerAPI is the part of the Docker client the executor uses.
type DockerAPI interface {
	ProbeAPI
	ContainerCreate(ctx context.Context, cfg *container.Config, host *container.HostConfig, net any, platform *ocispec.Platform, name string) (container.CreateResponse, error)
	ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error)
	ContainerAttach(ctx context.Context, id string, opts container.AttachOptions) (hijacked, error)
	ContainerStart(ctx context.Context, id string, opts container.StartOptions) error
	ContainerWait(ctx context.Context, id string, cond container.WaitCondition) (<-chan container.WaitResponse, <-chan error)
	ContainerKill(ctx context.Context, id, signal string) error
	ContainerRemove(ctx context.Context, id string, opts container.RemoveOptions) error
	ContainerLogs(ctx context.Context, id string, opts container.LogsOptions) (io.ReadCloser, error)
	ContainerList(ctx context.Context, opts container.ListOptions) ([]container.Summary, error)
	Ping(ctx context.Context) (types.Ping, error)
}

// hijacked is the write side of an attached container's standard input.
type hijacked interface {
	io.Writer
	CloseWrite() error
	Close()
}

// Docker runs steps in containers of their images.
type Docker struct {
	api    DockerAPI
	images *registry.Coordinator
	bundle *Bundle
	// agentID is this agent's label value and container-name prefix, so two
	// agents on one engine never touch each other's containers.
	agentID string
	probes  *ProbeCache
	log     hclog.Logger

	verdicts VerdictStore

	mu     sync.Mutex
	leases map[string]*registry.Lease
	// interrupted: tickets whose wait the engine broke off (it went away).
	interrupted map[string]bool
	// signalled: tickets the agent signalled, so their TERM or KILL is no surprise.
	signalled map[string]bool
}

// NewDocker returns a Docker executor over the client cli.
func NewDocker(cli *client.Client, images *registry.Coordinator, verdicts VerdictStore, bundle *Bundle, agentID string, probes *ProbeCache, log hclog.Logger) *Docker {
	return &Docker{api: clientAdapter{cli}, images: images, verdicts: verdicts, bundle: bundle, agentID: agentID, probes: probes,
		log: log.Named("docker"), leases: map[string]*registry.Lease{}, interrupted: map[string]bool{}, signalled: map[string]bool{}}
}

// ContainerName is the step's container name on the engine.
func (d *Docker) ContainerName(ticket string) string {
	return "stevedore-" + shortID(d.agentID) + "-" + ticket
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Prepare implements Executor.
func (d *Docker) Prepare(ctx context.Context, spec *Spec, logf LogFunc) error {
	c := spec.Container
	name := d.ContainerName(spec.Ticket)
	log := d.log.With("ticket", spec.Ticket, "image_ref", c.Image)
	if existing, err := d.api.ContainerInspect(ctx, name); err == nil {
		// Prepared by an earlier call: only the verdict and permissions may be missing.
		return d.admit(ctx, spec, existing, logf)
	} else if !errdefs.IsNotFound(err) {
		return fmt.Errorf("%w: inspect %s: %w", ErrEngine, name, err)
	}
	if err := d.ensureImage(ctx, spec, logf); err != nil {
		return err
	}
	labels := map[string]string{LabelManaged: "true", LabelTicket: spec.Ticket, LabelAgent: d.agentID}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	init := true
	cfg := &container.Config{
		Image: c.Image,
		// The image's ENTRYPOINT and CMD never run: the bundle's runner does.
		Entrypoint: []string{BundleMountPath + "/" + d.bundle.Manifest.Entrypoint, "run", spec.StepDir},
		Cmd:        []string{},
		WorkingDir: spec.StepDir + "/work",
		Labels:     labels,
		// Secrets arrive on stdin, never in the container's configuration.
		OpenStdin: true, StdinOnce: true, AttachStdin: true,
	}
	host := &container.HostConfig{
		Init: &init,
		Binds: []string{
			d.bundle.Dir + ":" + BundleMountPath + ":ro",
			spec.StepDir + ":" + spec.StepDir + ":rw",
		},
		Resources: container.Resources{Memory: c.MemoryBytes, NanoCPUs: c.NanoCPUs},
		LogConfig: container.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "1m", "max-file": "1"}},
	}
	if c.PidsLimit > 0 {
		host.Resources.PidsLimit = &c.PidsLimit
	}
	var platform *ocispec.Platform
	if c.Platform != "" {
		p, err := parsePlatform(c.Platform)
		if err != nil {
			return err
		}
		platform = &p
	}
	created, err := d.api.ContainerCreate(ctx, cfg, host, nil, platform, name)
	if err != nil {
		return fmt.Errorf("%w: create container for %s: %w", ErrEngine, c.Image, err)
	}
	log.Debug("created container", "container_id", created.ID)
	inspect, err := d.api.ContainerInspect(ctx, created.ID)
	if err != nil {
		return fmt.Errorf("%w: inspect %s: %w", ErrEngine, created.ID, err)
	}
	return d.admit(ctx, spec, inspect, logf)
}

// admit probes the created container and hands the step directory to the
// image's user.
func (d *Docker) admit(ctx context.Context, spec *Spec, c container.InspectResponse, logf LogFunc) error {
	imageID := c.Image
	verdict, err := d.verdict(ctx, imageID, c.ID, spec.Container.Image)
	if err != nil {
		return err
	}
	if err := verdict.Check(spec.Container.Image, d.bundle.Manifest.Requires); err != nil {
		return err
	}
	logf("image %s (%s): %s %s, loader %s: can run the step runner", spec.Container.Image, shortImageID(imageID), verdict.Libc, verdict.GlibcVersion, verdict.Loader)
	uid, gid, err := resolveUser(ctx, d.api, c.ID, c.Config.User)
	if err != nil {
		return err
	}
	return chownTree(spec.StepDir, uid, gid)
}

func shortImageID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// verdict returns the probe verdict for imageID: from memory, from the
// store (verdicts survive restarts), or by probing the created container.
func (d *Docker) verdict(ctx context.Context, imageID, containerID, image string) (Verdict, error) {
	if v, ok := d.probes.Get(imageID); ok {
		return v, nil
	}
	key := imageID + "/" + d.bundle.Manifest.Requires.Key()
	if d.verdicts != nil {
		if b, ok := d.verdicts.GetVerdict(key); ok {
			var v Verdict
			if json.Unmarshal(b, &v) == nil {
				d.probes.Put(imageID, v)
				return v, nil
			}
		}
	}
	v, err := Probe(ctx, d.api, containerID, d.bundle.Manifest.Requires)
	if err != nil {
		return Verdict{}, fmt.Errorf("%w: probe %s: %w", ErrEngine, image, err)
	}
	d.probes.Put(imageID, v)
	if d.verdicts != nil {
		if b, err := json.Marshal(v); err == nil {
			if err := d.verdicts.PutVerdict(key, b); err != nil {
				d.log.Warn("could not store the probe verdict", "image_id", imageID, "error", err)
			}
		}
	}
	return v, nil
}

// VerdictStore keeps probe verdicts across restarts (registry.Store is one).
type VerdictStore interface {
	GetVerdict(key string) ([]byte, bool)
	PutVerdict(key string, v []byte) error
}

// Start implements Executor.
func (d *Docker) Start(ctx context.Context, spec *Spec, stdin []byte) error {
	name := d.ContainerName(spec.Ticket)
	// Attach before start, so no byte of stdin can be missed.
	att, err := d.api.ContainerAttach(ctx, name, container.AttachOptions{Stream: true, Stdin: true})
	if err != nil {
		return fmt.Errorf("%w: attach %s: %w", ErrEngine, name, err)
	}
	defer att.Close()
	if err := d.api.ContainerStart(ctx, name, container.StartOptions{}); err != nil {
		return fmt.Errorf("%w: start %s: %w", ErrEngine, name, err)
	}
	if _, err := att.Write(stdin); err != nil {
		return fmt.Errorf("%w: write the secrets to %s: %w", ErrEngine, name, err)
	}
	if err := att.CloseWrite(); err != nil {
		return fmt.Errorf("%w: close stdin of %s: %w", ErrEngine, name, err)
	}
	return nil
}

// Wait implements Executor. A container that no longer exists is an exit
// with Code -1 and a Detail saying so, not an error: retrying cannot help.
// A wait the engine broke off (it stopped or restarted) is an error; the
// exit reported once it answers again says the engine went away meanwhile.
func (d *Docker) Wait(ctx context.Context, spec *Spec) (Exit, error) {
	name := d.ContainerName(spec.Ticket)
	statusCh, errCh := d.api.ContainerWait(ctx, name, container.WaitConditionNotRunning)
	var code int64
	select {
	case st := <-statusCh:
		code = st.StatusCode
	case err := <-errCh:
		if errdefs.IsNotFound(err) {
			return Exit{Code: -1, Vanished: true, Detail: fmt.Sprintf("its container %s no longer exists (removed outside the agent)", name)}, nil
		}
		if ctx.Err() == nil {
			d.mu.Lock()
			d.interrupted[spec.Ticket] = true
			d.mu.Unlock()
		}
		return Exit{Code: -1}, fmt.Errorf("%w: wait for %s: %w", ErrEngine, name, err)
	}
	exit := Exit{Code: int(code)}
	c, err := d.api.ContainerInspect(ctx, name)
	switch {
	case errdefs.IsNotFound(err):
		return Exit{Code: -1, Vanished: true, Detail: fmt.Sprintf("its container %s no longer exists (removed outside the agent)", name)}, nil
	case err == nil && c.State != nil:
		exit.OOMKilled = c.State.OOMKilled
		if c.State.Status == container.StateCreated {
			// The agent stopped between recording the start and making it.
			return Exit{Code: -1, Detail: fmt.Sprintf("its container %s was created but never started", name)}, nil
		}
	}
	if code > 128 && code < 128+65 {
		exit.Signal = signalName(syscall.Signal(code - 128))
	}
	d.mu.Lock()
	exit.EngineInterrupted = d.interrupted[spec.Ticket]
	signalled := d.signalled[spec.Ticket]
	d.mu.Unlock()
	if !signalled && !exit.EngineInterrupted && (exit.Signal == "SIGTERM" || exit.Signal == "SIGKILL") {
		// Stopped, but not by the agent: docker stop, or the engine stopping
		// its containers before it exits (its API still answers meanwhile).
		exit.StoppedOutside = true
		exit.EngineInterrupted = d.engineGoing(ctx)
	}
	exit.Detail = d.logTail(ctx, name)
	return exit, nil
}

// engineGoingWindow is how long after a container's unexplained stop the
// engine is watched for going away; it stops every container first.
const engineGoingWindow = 5 * time.Second

// engineGoing reports whether the engine stops answering within
// engineGoingWindow.
func (d *Docker) engineGoing(ctx context.Context) bool {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	end := time.After(engineGoingWindow)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := d.api.Ping(pctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-end:
			return false
		case <-t.C:
		}
	}
}

// logTail returns the last lines the runner itself printed (not the
// script's output, which is in output.log): evidence when it died.
func (d *Docker) logTail(ctx context.Context, name string) string {
	rc, err := d.api.ContainerLogs(ctx, name, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: "20"})
	if err != nil {
		return ""
	}
	defer rc.Close()
	var b strings.Builder
	_, _ = stdcopy.StdCopy(&b, &b, io.LimitReader(rc, 64<<10))
	return strings.TrimSpace(b.String())
}

// Signal implements Executor.
func (d *Docker) Signal(ctx context.Context, spec *Spec, sig syscall.Signal) error {
	name := d.ContainerName(spec.Ticket)
	d.mu.Lock()
	d.signalled[spec.Ticket] = true
	d.mu.Unlock()
	err := d.api.ContainerKill(ctx, name, strings.TrimPrefix(signalName(sig), "SIG"))
	if err == nil || errdefs.IsNotFound(err) || errdefs.IsConflict(err) {
		return nil // gone or not running: nothing to signal
	}
	return fmt.Errorf("%w: signal %s: %w", ErrEngine, name, err)
}

// Remove implements Executor.
func (d *Docker) Remove(ctx context.Context, spec *Spec) error {
	defer d.releaseImage(spec.Ticket)
	d.mu.Lock()
	delete(d.interrupted, spec.Ticket)
	delete(d.signalled, spec.Ticket)
	d.mu.Unlock()
	name := d.ContainerName(spec.Ticket)
	err := d.api.ContainerRemove(ctx, name, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err == nil || errdefs.IsNotFound(err) {
		return nil
	}
	if errdefs.IsConflict(err) { // removal already in progress
		return nil
	}
	return fmt.Errorf("%w: remove %s: %w", ErrEngine, name, err)
}

// Ping checks that the engine answers.
func (d *Docker) Ping(ctx context.Context) error {
	if _, err := d.api.Ping(ctx); err != nil {
		return fmt.Errorf("%w: ping: %w", ErrEngine, err)
	}
	return nil
}

// ManagedContainer is a container of this agent, as the engine lists it.
type ManagedContainer struct {
	ID      string
	Name    string
	Ticket  string
	State   string
	Created time.Time
}

// Containers lists this agent's containers: those with its own
// io.stevedore.agent label, so another agent's on the same engine are never
// among them. Safe to call at any time.
func (d *Docker) Containers(ctx context.Context) ([]ManagedContainer, error) {
	list, err := d.api.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", LabelManaged+"=true"), filters.Arg("label", LabelAgent+"="+d.agentID))})
	if err != nil {
		return nil, fmt.Errorf("%w: list containers: %w", ErrEngine, err)
	}
	out := make([]ManagedContainer, 0, len(list))
	for _, c := range list {
		if c.Labels[LabelAgent] != d.agentID { // belt and braces over the filter
			continue
		}
		name := c.ID
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		out = append(out, ManagedContainer{ID: c.ID, Name: name, Ticket: c.Labels[LabelTicket], State: string(c.State), Created: time.Unix(c.Created, 0)})
	}
	return out, nil
}

// RemoveContainer force-removes one of this agent's containers, as listed
// by Containers. Idempotent.
func (d *Docker) RemoveContainer(ctx context.Context, c ManagedContainer) error {
	err := d.api.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err == nil || errdefs.IsNotFound(err) || errdefs.IsConflict(err) {
		return nil
	}
	return fmt.Errorf("%w: remove %s: %w", ErrEngine, c.Name, err)
}

func parsePlatform(s string) (ocispec.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return ocispec.Platform{}, fmt.Errorf("platform %q: want os/arch[/variant]", s)
	}
	p := ocispec.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGHUP:
		return "SIGHUP"
	case syscall.SIGQUIT:
		return "SIGQUIT"
	}
	return fmt.Sprintf("SIG%d", int(s))
}

// clientAdapter narrows *client.Client to DockerAPI (its ContainerCreate and
// ContainerAttach have concrete types the interface abstracts).
type clientAdapter struct{ *client.Client }

func (a clientAdapter) ContainerCreate(ctx context.Context, cfg *container.Config, host *container.HostConfig, _ any, platform *ocispec.Platform, name string) (container.CreateResponse, error) {
	return a.Client.ContainerCreate(ctx, cfg, host, nil, platform, name)
}

func (a clientAdapter) ContainerAttach(ctx context.Context, id string, opts container.AttachOptions) (hijacked, error) {
	resp, err := a.Client.ContainerAttach(ctx, id, opts)
	if err != nil {
		return nil, err
	}
	return &hijackedConn{resp}, nil
}

// hijackedConn writes to the attached stream's connection.
type hijackedConn struct{ types.HijackedResponse }

func (h *hijackedConn) Write(p []byte) (int, error) { return h.Conn.Write(p) }
