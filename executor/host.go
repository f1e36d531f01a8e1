package executor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Files of the host executor in a step directory.
const (
	hostPIDFile = "runner.pid"
	hostLogFile = "runner.log" // the runner's own diagnostics, not the script's output
)

// Host runs steps directly on the worker: the runner is started as a
// detached process in a session of its own, so it outlives the agent and a
// signal to the agent's process group never reaches it, and in a cgroup of
// its own where there is a writable cgroup v2 (cgroup.go).
type Host struct {
	bundle *Bundle
	log    hclog.Logger
	cg     stepCgroups

	mu    sync.Mutex
	procs map[string]*hostProc
}

type hostProc struct {
	pid  int
	done chan struct{}
	exit Exit
}

// NewHost returns a host executor that starts the bundle's runner.
func NewHost(bundle *Bundle, log hclog.Logger) *Host {
	h := &Host{bundle: bundle, log: log.Named("host"), procs: map[string]*hostProc{}, cg: findStepCgroups()}
	h.log.Info("host steps' processes are tracked", "by", h.cg.Tracking())
	return h
}

// Tracking says how host steps' processes are found and killed: by cgroup
// or, without a writable cgroup v2, by session and mark.
func (h *Host) Tracking() string { return h.cgroups().Tracking() }

func (h *Host) cgroups() stepCgroups {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cg
}

// Prepare implements Executor. Nothing to prepare on the host.
func (h *Host) Prepare(context.Context, *Spec, LogFunc) error { return nil }

// Start implements Executor.
func (h *Host) Start(_ context.Context, spec *Spec, stdin []byte) error {
	logf, err := os.OpenFile(filepath.Join(spec.StepDir, hostLogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("runner log: %w", err)
	}
	defer logf.Close()
	newCmd := func() *exec.Cmd {
		cmd := exec.Command(h.bundle.RunnerPath(), "run", spec.StepDir)
		cmd.Dir = filepath.Join(spec.StepDir, "work")
		cmd.Stdin = bytes.NewReader(stdin)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		cmd.Env = runnerEnv(os.Environ())
		return cmd
	}
	cmd, err := h.startInCgroup(newCmd, spec)
	if err != nil {
		return fmt.Errorf("start runner: %w", err)
	}
	p := &hostProc{pid: cmd.Process.Pid, done: make(chan struct{})}
	if err := os.WriteFile(filepath.Join(spec.StepDir, hostPIDFile), []byte(strconv.Itoa(p.pid)+"\n"), 0o600); err != nil {
		h.log.Warn("could not record the runner's pid", "ticket", spec.Ticket, "error", err)
	}
	h.mu.Lock()
	h.procs[spec.Ticket] = p
	h.mu.Unlock()
	go func() {
		err := cmd.Wait()
		p.exit = exitFromWait(cmd.ProcessState, err)
		close(p.done)
	}()
	return nil
}

// startInCgroup starts a runner from newCmd in the step's own cgroup,
// recorded in the step directory first so that no runner ever runs
// unrecorded. Without one, or when the kernel refuses to start a process
// into it (clone3's CLONE_INTO_CGROUP needs Linux 5.7), the runner starts
// in the agent's cgroup and the step is tracked by session; a refusal
// turns cgroups off for the steps after it too, and capabilities say so.
func (h *Host) startInCgroup(newCmd func() *exec.Cmd, spec *Spec) (*exec.Cmd, error) {
	cg := h.cgroups()
	path, dir, err := cg.make(spec.StepDir)
	if err != nil {
		h.log.Warn("host step runs without a cgroup of its own", "ticket", spec.Ticket, "error", err)
	}
	cmd := newCmd()
	if dir == nil {
		return cmd, cmd.Start()
	}
	defer dir.Close()
	record := filepath.Join(spec.StepDir, hostCgroupFile)
	if err := os.WriteFile(record, []byte(path+"\n"), 0o600); err != nil {
		_ = os.Remove(path)
		h.log.Warn("host step runs without a cgroup of its own: cannot record it", "ticket", spec.Ticket, "error", err)
		return cmd, cmd.Start()
	}
	cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(dir.Fd())
	err = cmd.Start()
	if err == nil {
		return cmd, nil
	}
	h.log.Warn("cannot start a runner into its cgroup: host steps are tracked by session from now on", "ticket", spec.Ticket, "error", err)
	h.mu.Lock()
	h.cg = stepCgroups{why: fmt.Sprintf("starting a process into a cgroup failed: %v", err)}
	h.mu.Unlock()
	_ = os.Remove(record)
	_ = os.Remove(path)
	cmd = newCmd() // an exec.Cmd starts once, even after a failed start
	return cmd, cmd.Start()
}

func exitFromWait(st *os.ProcessState, err error) Exit {
	if st == nil {
		return Exit{Code: -1, Detail: fmt.Sprint(err)}
	}
	ws, ok := st.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		return Exit{Code: 128 + int(ws.Signal()), Signal: signalName(ws.Signal())}
	}
	return Exit{Code: st.ExitCode()}
}

// Wait implements Executor. A runner this process did not start (an
// earlier agent's) is watched through its pid until it is gone.
func (h *Host) Wait(ctx context.Context, spec *Spec) (Exit, error) {
	h.mu.Lock()
	p := h.procs[spec.Ticket]
	h.mu.Unlock()
	if p != nil {
		select {
		case <-p.done:
			return p.exit, nil
		case <-ctx.Done():
			return Exit{Code: -1}, ctx.Err()
		}
	}
	pid, err := h.pid(spec)
	if errors.Is(err, fs.ErrNotExist) {
		// The agent stopped between recording the start and making it.
		return Exit{Code: -1, Vanished: true, Detail: "its runner was never started (no " + hostPIDFile + ")"}, nil
	} else if err != nil {
		return Exit{Code: -1}, err
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for runnerAlive(pid) {
		select {
		case <-t.C:
		case <-ctx.Done():
			return Exit{Code: -1}, ctx.Err()
		}
	}
	// Not our child: its status went to init; result.json tells the rest.
	return Exit{Code: -1, Vanished: true, Detail: fmt.Sprintf("its runner process (pid %d) is gone", pid)}, nil
}

// runnerAlive: pid is still a runner, i.e. alive and leading its own
// session, so a pid the OS reused for another process does not count.
func runnerAlive(pid int) bool {
	sid, ok := sessionOf(pid)
	return ok && sid == pid && alive(pid)
}

// Signal implements Executor.
func (h *Host) Signal(_ context.Context, spec *Spec, sig syscall.Signal) error {
	pid, err := h.pid(spec)
	if err != nil {
		return nil // never started: nothing to signal
	}
	if sig == syscall.SIGKILL {
		killStep(pid, spec.StepDir)
		return nil
	}
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal runner %d: %w", pid, err)
	}
	return nil
}

// Remove implements Executor: whatever of the step still runs is killed,
// also what it left behind after the runner ended.
func (h *Host) Remove(ctx context.Context, spec *Spec) error {
	if pid, err := h.pid(spec); err == nil {
		killStep(pid, spec.StepDir)
		if alive(pid) {
			wctx, cancel := context.WithTimeout(ctx, killGrace)
			defer cancel()
			_, _ = h.Wait(wctx, spec)
		}
	}
	h.mu.Lock()
	delete(h.procs, spec.Ticket)
	h.mu.Unlock()
	if cg := recordedCgroup(spec.StepDir); cg != "" {
		return removeCgroup(cg, killGrace)
	}
	return nil
}

func (h *Host) pid(spec *Spec) (int, error) {
	h.mu.Lock()
	p := h.procs[spec.Ticket]
	h.mu.Unlock()
	if p != nil {
		return p.pid, nil
	}
	b, err := os.ReadFile(filepath.Join(spec.StepDir, hostPIDFile))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// stepDirEnv is the variable the runner (cmd/stevedore-step) gives the
// script and everything it starts: the step's mark on its processes.
const stepDirEnv = "STEVEDORE_STEP_DIR"

// killStep SIGKILLs every process of the step whose runner leads session
// sid. In a step's own cgroup, cgroup.kill ends them all. Beside it (or
// without one) a step's processes are those in the session (the runner,
// the script, whatever they started in process groups of their own), those
// whose environment carries the step's mark (daemons that called setsid
// and were reparented to init), and the descendants of both; without a
// cgroup, a daemon that left the session and cleared its environment
// escapes. The session id stays reserved while any member lives, so after
// the runner's death it still names only the step's processes.
func killStep(sid int, stepDir string) {
	if cg := recordedCgroup(stepDir); cg != "" {
		killCgroup(cg)
	}
	for _, pid := range stepProcs(sid, stepDir) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// stepProcs lists the step's processes (see killStep), never the agent's own.
func stepProcs(sid int, stepDir string) []int {
	mark := []byte(stepDirEnv + "=" + stepDir + "\x00")
	if abs, err := filepath.Abs(stepDir); err == nil {
		mark = []byte(stepDirEnv + "=" + abs + "\x00")
	}
	// While the runner lives it leads the session; once it is gone the id
	// cannot be reused while members remain. A leader that is not the
	// step's runner is a reused pid: its session is not the step's.
	if cmd, err := os.ReadFile("/proc/" + strconv.Itoa(sid) + "/cmdline"); err == nil && !bytes.Contains(cmd, []byte(stepDir)) {
		sid = -1
	}
	entries, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	var roots []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == 1 || pid == os.Getpid() {
			continue
		}
		st, ok := procStat(pid)
		if !ok {
			continue
		}
		children[st.ppid] = append(children[st.ppid], pid)
		if st.sid == sid || hasEnv(pid, mark) {
			roots = append(roots, pid)
		}
	}
	seen := map[int]bool{}
	var out []int
	for len(roots) > 0 {
		pid := roots[len(roots)-1]
		roots = roots[:len(roots)-1]
		if seen[pid] || pid == os.Getpid() {
			continue
		}
		seen[pid] = true
		out = append(out, pid)
		roots = append(roots, children[pid]...)
	}
	return out
}

// hasEnv reports whether pid's environment holds the entry mark (with its
// terminating NUL). A process that exec'd a setuid program or is gone reads
// as unmarked.
func hasEnv(pid int, mark []byte) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	return bytes.HasPrefix(b, mark) || bytes.Contains(b, append([]byte{0}, mark...))
}

type procStatus struct{ ppid, sid int }

// procStat reads the parent and session ids, fields 4 and 6 of /proc/PID/stat.
func procStat(pid int) (procStatus, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStatus{}, false
	}
	// The command name (field 2) may hold spaces; fields resume after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStatus{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 4 {
		return procStatus{}, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	sid, err2 := strconv.Atoi(f[3])
	return procStatus{ppid: ppid, sid: sid}, err1 == nil && err2 == nil
}

// sessionOf reads the session id, field 6 of /proc/PID/stat.
func sessionOf(pid int) (int, bool) {
	st, ok := procStat(pid)
	return st.sid, ok
}

// agentOnlyEnv are the agent's own settings that a step's script must never
// see: the master key, registry passwords, the engine's TLS material.
var agentOnlyEnv = map[string]bool{
	"MASTER_KEY": true, "STEVEDORE_REGISTRY_PASSWORD": true, "STEVEDORE_PASSWORD": true,
	"DOCKER_CERT_PATH": true, "DOCKER_TLS_VERIFY": true, "ADMIN_PASSWORD": true,
}

// runnerEnv is the agent's environment without agentOnlyEnv.
func runnerEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !agentOnlyEnv[k] {
			out = append(out, kv)
		}
	}
	return out
}
