package container_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"stevedore/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, b := range []*imageBuild{&built, &rebuilt, &builtAgent} {
		if b.tag != "" {
			exec.Command("docker", "image", "rm", "-f", b.tag).Run()
		}
	}
	testenv.CleanupBundle()
	os.Exit(code)
}

func docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func randomSuffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// imageBuild is an image built once for all the tests here (a Debian
// package layer is most of a build) and removed by TestMain.
type imageBuild struct {
	once sync.Once
	tag  string
	err  error
}

// built is the server's image, builtAgent the agent's; rebuilt is the
// server's built a second time, a distinct image, for the upgrade test.
var built, rebuilt, builtAgent imageBuild

// serverImage builds the image as `make image` does: the binary and the
// bundle as `make build` lays them out, on the bookworm fixture.
func serverImage(t *testing.T) string {
	t.Helper()
	return buildImage(t, &built, "stevedore-server-test", "Dockerfile", "")
}

// buildImage builds dockerfile once into b, on the bookworm fixture, from
// a context holding the binary and its bundle/ under sub ("" its root),
// with docker build's options extra.
func buildImage(t *testing.T, b *imageBuild, name, dockerfile, sub string, extra ...string) string {
	t.Helper()
	cli, _ := testenv.Docker(t)
	testenv.Image(t, cli, testenv.Bookworm)
	bin := testenv.Binary(t)
	b.once.Do(func() {
		ctxDir, err := os.MkdirTemp("", "stevedore-image-")
		if err != nil {
			b.err = err
			return
		}
		defer os.RemoveAll(ctxDir)
		bundle, err := filepath.EvalSymlinks(filepath.Join(filepath.Dir(bin), "bundle"))
		if err != nil {
			b.err = err
			return
		}
		dst := filepath.Join(ctxDir, sub)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			b.err = err
			return
		}
		for _, cp := range [][2]string{{bin, dst + "/stevedore"}, {bundle, dst + "/bundle"}} {
			if out, err := exec.Command("cp", "-a", cp[0], cp[1]).CombinedOutput(); err != nil {
				b.err = fmt.Errorf("%w: %s", err, out)
				return
			}
		}
		tag := name + ":" + randomSuffix()
		begin := time.Now()
		args := append([]string{"build", "-q", "--build-arg", "BASE_IMAGE=" + testenv.Bookworm, "-t", tag, "-f", dockerfile}, extra...)
		out, err := exec.Command("docker", append(args, ctxDir)...).CombinedOutput()
		b.tag = tag // removed even after a failed build that tagged nothing
		if err != nil {
			b.err = fmt.Errorf("docker build: %w\n%s", err, out)
			return
		}
		t.Logf("built %s in %s", tag, time.Since(begin).Round(100*time.Millisecond))
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.tag
}

// server is a running server and its API; pool is where its steps go
// ("" the built-in worker's).
type server struct {
	name, base, pool string
}

// startServer runs the image with opts and args (after the image name),
// removes it and its anonymous volumes (the engine's data root among them)
// when the test ends, and shows its log when the test failed.
func startServer(t *testing.T, tag string, opts []string, args ...string) server {
	t.Helper()
	name := "stevedore-server-test-" + randomSuffix()
	run := []string{"run", "-d", "--name", name, "-e", "ADMIN_USERNAME=admin", "-e", "ADMIN_PASSWORD=image-test-password", "-p", "127.0.0.1::8080"}
	run = append(append(append(run, opts...), tag), args...)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("docker", "logs", name).CombinedOutput()
			t.Logf("server container log:\n%s", out)
		}
		exec.Command("docker", "rm", "-f", "-v", name).Run()
	})
	docker(t, run...)
	return server{name: name}
}

// waitAPI waits for the server's /healthz (after its engine, in DinD).
func (s *server) waitAPI(t *testing.T) {
	t.Helper()
	addr := docker(t, "port", s.name, "8080/tcp")
	if i := strings.Index(addr, "\n"); i >= 0 {
		addr = addr[:i] // an IPv6 line may follow
	}
	s.base = "http://" + addr
	s.waitHealthy(t)
}

// waitHealthy waits for /healthz at s.base.
func (s *server) waitHealthy(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if resp, err := http.Get(s.base + "/healthz"); err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server in the container does not answer on %s", s.base)
		}
	}
}

// step runs `stevedore run --server` on the server's pool.
func (s *server) step(bin string, args ...string) *exec.Cmd {
	pool := s.pool
	if pool == "" {
		pool = "builtin"
	}
	return exec.Command(bin, append([]string{"run", "--server", s.base, "--pool", pool, "--user", "admin", "--password", "image-test-password"}, args...)...)
}

type stepCase struct {
	name   string
	args   []string
	code   int
	stdout string
}

func (s *server) runSteps(t *testing.T, bin string, cases []stepCase) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			run := s.step(bin, c.args...)
			run.Stdout, run.Stderr = &stdout, &stderr
			code, err := exitCode(run.Run())
			if err != nil {
				t.Fatal(err)
			}
			if code != c.code || !strings.Contains(stdout.String(), c.stdout) {
				t.Errorf("exit %d, stdout %q; want %d and %q\nstderr: %s", code, stdout.String(), c.code, c.stdout, stderr.String())
			}
		})
	}
}

func exitCode(err error) (int, error) {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	return 0, err
}

func containerStep(script string) []string {
	return []string{"--image", testenv.Bookworm, "--pull", "always", "--registry-user", testenv.RegistryUser, "--registry-password", testenv.RegistryPassword, "--script", script}
}

// The server's image runs, with its built-in worker, on the host's engine
// (DISABLE_DIND=Y, the socket mounted, the data dir at the same path inside
// and out): a host step runs in the server's container and a container step
// in a sibling container, both submitted with `stevedore run --server`.
func TestServerImageWithBuiltinWorker(t *testing.T) {
	tag := serverImage(t)
	bin := testenv.Binary(t)
	data := t.TempDir()
	os.Chmod(data, 0o755)
	s := startServer(t, tag, []string{"-e", "DISABLE_DIND=Y", "-e", "STEVEDORE_DATA_DIR=" + data,
		"-v", data + ":" + data, "-v", "/var/run/docker.sock:/var/run/docker.sock"})
	s.waitAPI(t)
	s.runSteps(t, bin, []stepCase{
		{"host step in the server's container", []string{"--script", `. /etc/os-release; echo "host step on $ID $VERSION_ID"`}, 0, "host step on debian 12"},
		// The engine mounts the workspace and the staged bundle from the
		// data dir: a wrong path and the step could not start.
		{"container step beside it", containerStep(`echo "container step with $(python3 --version)" > out.txt; cat out.txt; exit 4`), 4, "container step with Python 3"},
	})
}

// The default mode: the privileged container starts its own engine, and
// the built-in worker runs container steps there, pulling the fixture from
// the local registry with its credentials. The step's container is on the
// inner engine and never on the host's, and docker stop ends the server,
// then the engine, cleanly.
func TestServerImageDockerInDocker(t *testing.T) {
	testenv.RequireRegistry(t)
	tag := serverImage(t)
	bin := testenv.Binary(t)
	p := privileges(t, tag)
	// Its own network: with the host's, the engine would take over docker0.
	s := startServer(t, tag, p.opts, p.args...)
	relayRegistry(t, s.name)
	s.waitAPI(t)

	// docker stop's SIGTERM goes to PID 1, tini, which passes it to its
	// child, the server; dockerd is the server's, which stops it last.
	procs := map[string][2]string{} // comm: pid, parent pid
	ps := docker(t, "exec", s.name, "sh", "-c", `for p in /proc/[0-9]*; do c=$(cat $p/comm 2>/dev/null) && echo "$c ${p#/proc/} $(sed -n 's/^PPid:\s*//p' $p/status)"; done`)
	for line := range strings.Lines(ps) {
		if f := strings.Fields(line); len(f) == 3 {
			procs[f[0]] = [2]string{f[1], f[2]}
		}
	}
	if procs["tini"][0] != "1" || procs["stevedore"][1] != "1" || procs["dockerd"][1] != procs["stevedore"][0] {
		t.Errorf("want tini as PID 1, the server its child and dockerd the server's; processes (comm pid ppid):\n%s", ps)
	}

	s.runSteps(t, bin, []stepCase{
		{"host step in the server's container", []string{"--script", `. /etc/os-release; echo "host step on $ID $VERSION_ID"; exit 3`}, 3, "host step on debian 12"},
	})

	t.Run("container step on the inner engine", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		// It waits for its container to have been looked for on both engines.
		run := s.step(bin, containerStep(`echo "container step with $(python3 --version)"; while [ ! -e /tmp/seen ]; do sleep 0.1; done; exit 4`)...)
		run.Stdout, run.Stderr = &stdout, &stderr
		if err := run.Start(); err != nil {
			t.Fatal(err)
		}
		ended := make(chan error, 1)
		go func() { ended <- run.Wait() }()
		defer func() {
			run.Process.Kill()
		}()
		var id, ticket string
		for deadline := time.Now().Add(3 * time.Minute); id == ""; time.Sleep(200 * time.Millisecond) {
			out := docker(t, "exec", s.name, "docker", "ps", "--filter", "label=io.stevedore.managed=true", "--filter", "status=running",
				"--format", `{{.ID}} {{.Label "io.stevedore.ticket"}}`)
			if f := strings.Fields(out); len(f) >= 2 {
				id, ticket = f[0], f[1]
				break
			}
			select {
			case err := <-ended:
				t.Fatalf("the step ended (%v) before its container was seen running on the inner engine\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("no step container running on the inner engine\nstdout: %s\nstderr: %s", stdout.String(), stderr.String())
			}
		}
		onHost := func(when string) {
			if out := docker(t, "ps", "-a", "--filter", "label=io.stevedore.ticket="+ticket, "--format", "{{.ID}} {{.Names}}"); out != "" {
				t.Errorf("%s: the step's container is on the host's engine: %s", when, out)
			}
		}
		onHost("while it runs")
		docker(t, "exec", s.name, "docker", "exec", id, "touch", "/tmp/seen")
		var err error
		select {
		case err = <-ended:
		case <-time.After(2 * time.Minute):
			t.Fatal("the step does not end")
		}
		code, err := exitCode(err)
		if err != nil {
			t.Fatal(err)
		}
		if code != 4 || !strings.Contains(stdout.String(), "container step with Python 3") {
			t.Errorf("exit %d, stdout %q; want 4 and the Python version\nstderr: %s", code, stdout.String(), stderr.String())
		}
		onHost("after it ended")
	})

	t.Run("docker stop ends the server, then the engine", func(t *testing.T) {
		const timeout = 30
		begin := time.Now()
		docker(t, "stop", "-t", strconv.Itoa(timeout), s.name)
		took := time.Since(begin)
		// 137 would be the SIGKILL at the timeout; 0 is the server's own end.
		if code := docker(t, "inspect", "-f", "{{.State.ExitCode}}", s.name); code != "0" || took >= timeout*time.Second {
			t.Errorf("docker stop took %s, exit code %s; want well within %ds and 0", took, code, timeout)
		}
		logs, _ := exec.Command("docker", "logs", s.name).CombinedOutput()
		stopping := bytes.Index(logs, []byte("stopping: running steps go on"))
		stopped := bytes.Index(logs, []byte("docker engine stopped"))
		if stopping < 0 || stopped < stopping {
			t.Errorf("want the server's stop, then the engine's, in the log:\n%s", logs)
		}
		t.Logf("docker stop took %s", took.Round(10*time.Millisecond))
	})
}

// DinD is refused at once, with a message saying what to do, where it
// cannot work or would disturb the host.
func TestServerImageDockerInDockerRefuses(t *testing.T) {
	tag := serverImage(t)
	p := privileges(t, tag)
	// Should a check let one through, no dockerd can start: it is not in
	// this PATH (the image's entrypoint names tini and stevedore in full).
	noDockerd := []string{"-e", "PATH=/usr/local/bin:/usr/bin:/bin"}
	_, hadBridge := net.InterfaceByName("docker0")
	cases := []struct {
		name string
		opts []string
		args []string
		want []string
	}{
		{"without --privileged", nil, nil, []string{"needs a privileged container", "CAP_SYS_ADMIN missing", "DISABLE_DIND=Y"}},
		{"on the host's network", append(append([]string{"--network", "host"}, noDockerd...), p.opts...), p.args, []string{"network namespace of its own", "--network host"}},
		{"with the host's engine socket", append(append([]string{"-v", "/var/run/docker.sock:/var/run/docker.sock"}, noDockerd...), p.opts...), p.args, []string{"an engine already answers on /var/run/docker.sock", "DISABLE_DIND=Y"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			begin := time.Now()
			s := startServer(t, tag, c.opts, c.args...)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, "docker", "wait", s.name).CombinedOutput()
			if err != nil {
				t.Fatalf("the container does not end: %v %s", err, out)
			}
			took := time.Since(begin)
			logs, _ := exec.Command("docker", "logs", s.name).CombinedOutput()
			if code := strings.TrimSpace(string(out)); code == "0" {
				t.Errorf("exit code 0; want a failure")
			}
			for _, w := range c.want {
				if !bytes.Contains(logs, []byte(w)) {
					t.Errorf("the log lacks %q:\n%s", w, logs)
				}
			}
			if took > 20*time.Second {
				t.Errorf("took %s to fail", took)
			}
		})
	}
	if _, err := net.InterfaceByName("docker0"); hadBridge == nil && err != nil {
		t.Errorf("the host's docker0 is gone: %v", err)
	}
}

// privileged is how the test gives a container what --privileged gives.
type privileged struct {
	opts []string // docker run options
	args []string // after the image: a command, when the entrypoint is wrapped
}

var privOnce struct {
	sync.Once
	p   privileged
	err error
}

// privileges returns --privileged where the engine can grant it. An engine
// whose own capability bounding set lacks some capability (one run in a
// sandbox) cannot: runc fails to "apply caps". There the test grants the
// rest of what --privileged gives: every other capability, no seccomp, no
// AppArmor, unmasked /proc, all devices, and /sys and the cgroup file
// systems read-write, remounted by a shell that then execs the image's own
// entrypoint unchanged.
func privileges(t *testing.T, tag string) privileged {
	t.Helper()
	privOnce.Do(func() {
		out, err := exec.Command("docker", "run", "--rm", "--privileged", "--entrypoint", "/bin/true", tag).CombinedOutput()
		if err == nil {
			privOnce.p = privileged{opts: []string{"--privileged"}}
			return
		}
		if !bytes.Contains(out, []byte("apply caps")) {
			privOnce.err = fmt.Errorf("docker run --privileged: %w\n%s", err, out)
			return
		}
		missing, err := missingCaps()
		if err != nil {
			privOnce.err = err
			return
		}
		var entrypoint []string
		if err := json.Unmarshal([]byte(docker(t, "image", "inspect", "-f", "{{json .Config.Entrypoint}}", tag)), &entrypoint); err != nil {
			privOnce.err = err
			return
		}
		opts := []string{"--cap-add", "ALL"}
		for _, c := range missing {
			opts = append(opts, "--cap-drop", c)
		}
		opts = append(opts, "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
			"--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm", "--entrypoint", "/bin/sh")
		remount := `for d in /sys /sys/fs/cgroup /sys/fs/cgroup/*; do
	if mountpoint -q "$d"; then mount -o remount,rw,bind "$d" "$d" || exit 1; fi
done
exec "$@"`
		privOnce.p = privileged{opts: opts, args: append([]string{"-c", remount, "sh"}, entrypoint...)}
		t.Logf("this engine cannot grant --privileged (its bounding set lacks %s): emulating it", strings.Join(missing, ", "))
	})
	if privOnce.err != nil {
		t.Fatal(privOnce.err)
	}
	return privOnce.p
}

// capNames are the capabilities by number (linux/capability.h), as
// docker's --cap-drop names them.
var capNames = []string{"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
	"SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
	"SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
	"SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
	"MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ"}

// missingCaps lists the capabilities docker knows that this machine's
// bounding set lacks (the engine runs here: the registry is on loopback).
func missingCaps() ([]string, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, err
	}
	for line := range strings.Lines(string(b)) {
		v, ok := strings.CutPrefix(line, "CapBnd:")
		if !ok {
			continue
		}
		bnd, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return nil, err
		}
		var missing []string
		for i, name := range capNames {
			if bnd&(1<<i) == 0 {
				missing = append(missing, name)
			}
		}
		if len(missing) == 0 {
			return nil, errors.New("--privileged fails, yet no capability is missing from the bounding set")
		}
		return missing, nil
	}
	return nil, errors.New("no CapBnd in /proc/self/status")
}

// relayRegistry makes the local registry (on the host's loopback) reachable
// at the same address on the container's own loopback, where the inner
// engine pulls from. The registry, its credentials and its TLS-less
// loopback address are the real ones; only the TCP path is longer.
func relayRegistry(t *testing.T, container string) {
	t.Helper()
	relay(t, container, testenv.Registry)
}

// relay makes each of addrs, on the host's loopback, reachable at the same
// address in the container's network namespace: a listener opened there
// whose connections are relayed, byte for byte, to addr on the host's.
func relay(t *testing.T, container string, addrs ...string) {
	t.Helper()
	pid, err := strconv.Atoi(docker(t, "inspect", "-f", "{{.State.Pid}}", container))
	if err != nil || pid == 0 {
		t.Fatalf("the container %s has no process: %v", container, err)
	}
	for _, addr := range addrs {
		relayOne(t, pid, addr)
	}
}

func relayOne(t *testing.T, pid int, addr string) {
	t.Helper()
	lis, err := listenInNetns(pid, addr)
	if err != nil {
		t.Fatalf("relay to %s: %v", addr, err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		lis.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", addr)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			go func() { io.Copy(out, in); out.(*net.TCPConn).CloseWrite() }()
			go func() { io.Copy(in, out); in.(*net.TCPConn).CloseWrite() }()
		}
	}()
}

// listenInNetns listens on addr in the network namespace of process pid.
// The socket stays in that namespace; the thread that made it returns to
// its own, or, if it cannot, ends with its goroutine.
func listenInNetns(pid int, addr string) (net.Listener, error) {
	type result struct {
		lis net.Listener
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer own.Close()
		target, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("setns (needs root): %w", err)}
			return
		}
		lis, lerr := net.Listen("tcp", addr)
		if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
			if lis != nil {
				lis.Close()
			}
			done <- result{err: fmt.Errorf("back to the test's network namespace: %w", err)}
			return // still locked: the thread ends with this goroutine
		}
		runtime.UnlockOSThread()
		done <- result{lis, lerr}
	}()
	r := <-done
	return r.lis, r.err
}
