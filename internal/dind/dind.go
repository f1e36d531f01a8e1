// Package dind runs a Docker Engine of the server container's own (Docker
// in Docker) for its built-in worker: it checks that the container can run
// one, starts dockerd as a child in a process group of its own (so that
// only this process signals it), waits for it to answer, and stops it after
// the server, so that a stop of the container ends the server first and the
// engine then.
package dind

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Defaults of Options.
const (
	DefaultSocket       = "/var/run/docker.sock"
	DefaultDataRoot     = "/var/lib/docker"
	DefaultExecRoot     = "/var/run/docker"
	DefaultStartTimeout = 60 * time.Second
)

// tailLines is how much of dockerd's output a start failure quotes.
const tailLines = 20

// ErrNoAnswer is wrapped by Start's error when dockerd exited or did not
// answer in time.
var ErrNoAnswer = errors.New("the Docker Engine did not start")

// Options configures the engine. Anything else (log level, registry
// mirrors, insecure registries, address pools) goes in dockerd's own
// /etc/docker/daemon.json, which must not set hosts, data-root, exec-root
// nor pidfile: they are flags here, and dockerd refuses a setting given
// both ways.
type Options struct {
	// Dockerd is the program; default "dockerd", looked up in PATH.
	Dockerd string
	// Socket is the unix socket it listens on; default DefaultSocket.
	Socket string
	// DataRoot holds images and containers; it must not be on overlayfs.
	DataRoot string
	// ExecRoot holds its state files; default DefaultExecRoot.
	ExecRoot string
	// StartTimeout bounds the wait for its first answer.
	StartTimeout time.Duration
	// Output receives its output, each line prefixed "dockerd: "; nil: discarded.
	Output io.Writer
}

func (o *Options) defaults() {
	if o.Dockerd == "" {
		o.Dockerd = "dockerd"
	}
	if o.Socket == "" {
		o.Socket = DefaultSocket
	}
	if o.DataRoot == "" {
		o.DataRoot = DefaultDataRoot
	}
	if o.ExecRoot == "" {
		o.ExecRoot = DefaultExecRoot
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = DefaultStartTimeout
	}
	if o.Output == nil {
		o.Output = io.Discard
	}
}

// Engine is a running dockerd.
type Engine struct {
	o    Options
	cmd  *exec.Cmd
	out  *lineWriter
	done chan struct{}
	err  error // how it ended; read after done is closed
}

// Start checks that an engine can run here (Check), prepares the cgroup
// hierarchy, starts dockerd and waits until it answers on its socket. ctx
// ends the wait (and the engine) early.
func Start(ctx context.Context, o Options) (*Engine, error) {
	o.defaults()
	if err := Check(o); err != nil {
		return nil, err
	}
	if err := nestCgroup2("/sys/fs/cgroup", "/proc/self/cgroup"); err != nil {
		return nil, err
	}
	return start(ctx, o)
}

// start is Start without the checks of the container, for tests.
func start(ctx context.Context, o Options) (*Engine, error) {
	o.defaults()
	path, err := exec.LookPath(o.Dockerd)
	if err != nil {
		return nil, fmt.Errorf("%w: %w (the server's image installs Debian's docker.io)", ErrNoAnswer, err)
	}
	// No engine answers (Check): pid files there are left by one that was
	// killed with the container, and their pids may now be anyone's, which
	// dockerd and its containerd would take for themselves still running.
	for _, f := range []string{
		filepath.Join(filepath.Dir(o.Socket), "docker.pid"),
		filepath.Join(o.ExecRoot, "containerd", "containerd.pid"),
	} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("stale pid file: %w", err)
		}
	}
	e := &Engine{o: o, out: newLineWriter(o.Output, "dockerd: ", tailLines), done: make(chan struct{})}
	e.cmd = exec.Command(path, "--host", "unix://"+o.Socket, "--data-root", o.DataRoot, "--exec-root", o.ExecRoot,
		"--pidfile", filepath.Join(filepath.Dir(o.Socket), "docker.pid"))
	e.cmd.Stdout, e.cmd.Stderr = e.out, e.out
	// A process group of its own: a terminal's Ctrl-C reaches the server
	// alone, which stops the engine after itself.
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := e.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoAnswer, err)
	}
	go func() {
		e.err = e.cmd.Wait()
		e.out.flush()
		close(e.done)
	}()
	if err := e.wait(ctx); err != nil {
		e.Stop(5 * time.Second)
		return nil, err
	}
	return e, nil
}

// wait polls the socket until the engine answers, it exits, ctx ends or
// the start timeout passes.
func (e *Engine) wait(ctx context.Context) error {
	deadline := time.NewTimer(e.o.StartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if ping(ctx, e.o.Socket) == nil {
			return nil
		}
		select {
		case <-e.done:
			return fmt.Errorf("%w: dockerd exited before it answered (%v); its last lines:\n%s", ErrNoAnswer, e.err, e.out.tail())
		case <-deadline.C:
			return fmt.Errorf("%w: dockerd did not answer on %s within %s; its last lines:\n%s", ErrNoAnswer, e.o.Socket, e.o.StartTimeout, e.out.tail())
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrNoAnswer, ctx.Err())
		case <-tick.C:
		}
	}
}

// ping asks the engine's /_ping, as the docker CLI does.
func ping(ctx context.Context, socket string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/_ping", nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("ping: %s", resp.Status)
	}
	return nil
}

// Host is the engine's address for DOCKER_HOST.
func (e *Engine) Host() string { return "unix://" + e.o.Socket }

// Done is closed when dockerd has exited.
func (e *Engine) Done() <-chan struct{} { return e.done }

// Err is how dockerd ended, once Done is closed.
func (e *Engine) Err() error {
	select {
	case <-e.done:
		if e.err == nil {
			return errors.New("dockerd exited")
		}
		return fmt.Errorf("dockerd exited: %w", e.err)
	default:
		return nil
	}
}

// Stop asks dockerd to stop (SIGTERM: it stops its containers and
// containerd) and waits up to timeout, then kills it. It may be called more
// than once, and after dockerd exited by itself.
func (e *Engine) Stop(timeout time.Duration) error {
	select {
	case <-e.done:
		return nil
	default:
	}
	if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop dockerd: %w", err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-e.done:
		if e.err != nil {
			return fmt.Errorf("dockerd: %w", e.err)
		}
		return nil
	case <-t.C:
	}
	// Its whole group: containerd and the shims it started go with it.
	syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
	<-e.done
	return fmt.Errorf("dockerd did not stop within %s: killed", timeout)
}

// lineWriter copies output line by line to w with a prefix and keeps the
// last lines for error messages.
type lineWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
	last   []string
	max    int
}

func newLineWriter(w io.Writer, prefix string, max int) *lineWriter {
	return &lineWriter{w: w, prefix: prefix, max: max}
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.line(string(l.buf[:i]))
		l.buf = l.buf[i+1:]
	}
	return len(p), nil
}

func (l *lineWriter) line(s string) {
	fmt.Fprintln(l.w, l.prefix+s)
	l.last = append(l.last, s)
	if len(l.last) > l.max {
		l.last = l.last[len(l.last)-l.max:]
	}
}

// flush writes a last line that had no newline.
func (l *lineWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.line(string(l.buf))
		l.buf = nil
	}
}

func (l *lineWriter) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.last) == 0 {
		return "(none)"
	}
	return strings.Join(l.last, "\n")
}
