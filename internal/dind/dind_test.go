package dind

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"stevedore/internal/testenv"
)

// The test binary doubles as a fake dockerd, so that starting, waiting and
// stopping are tested without privileges: DIND_FAKE_DOCKERD says how it
// behaves.
func TestMain(m *testing.M) {
	if mode := os.Getenv("DIND_FAKE_DOCKERD"); mode != "" {
		fakeDockerd(mode)
		return
	}
	os.Exit(m.Run())
}

func fakeDockerd(mode string) {
	var socket string
	for i, a := range os.Args {
		if a == "--host" && i+1 < len(os.Args) {
			socket = strings.TrimPrefix(os.Args[i+1], "unix://")
		}
	}
	switch mode {
	case "fail":
		fmt.Fprintln(os.Stderr, `level=info msg="starting up"`)
		fmt.Fprint(os.Stderr, `failed to start daemon: boom`) // no newline: flushed at exit
		os.Exit(1)
	case "silent":
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	lis, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("API listen on " + socket)
	go http.Serve(lis, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/_ping" {
			w.Write([]byte("OK"))
			return
		}
		http.NotFound(w, r)
	}))
	for {
		<-term
		if mode != "stubborn" {
			fmt.Println("processing signal 'terminated'")
			os.Exit(0)
		}
	}
}

func fakeOptions(t *testing.T, mode string) (Options, *testenv.SyncBuffer) {
	t.Setenv("DIND_FAKE_DOCKERD", mode)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := &testenv.SyncBuffer{}
	return Options{Dockerd: exe, Socket: filepath.Join(dir, "docker.sock"), DataRoot: filepath.Join(dir, "data"),
		ExecRoot: filepath.Join(dir, "exec"), StartTimeout: 10 * time.Second, Output: out}, out
}

func TestStartAnswersAndStops(t *testing.T) {
	o, out := fakeOptions(t, "serve")
	// Left by an engine killed with its container: their pids may be anyone's now.
	stale := []string{filepath.Join(filepath.Dir(o.Socket), "docker.pid"), filepath.Join(o.ExecRoot, "containerd", "containerd.pid")}
	for _, f := range stale {
		os.MkdirAll(filepath.Dir(f), 0o755)
		os.WriteFile(f, []byte("1"), 0o644)
	}
	e, err := start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range stale {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("stale %s left for dockerd", f)
		}
	}
	if e.Host() != "unix://"+o.Socket {
		t.Errorf("Host() = %q", e.Host())
	}
	if e.Err() != nil {
		t.Errorf("Err() = %v while running", e.Err())
	}
	if err := e.Stop(5 * time.Second); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if err := e.Stop(time.Second); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if got := out.String(); !strings.Contains(got, "dockerd: API listen on") || !strings.Contains(got, "dockerd: processing signal") {
		t.Errorf("output not passed on with its prefix:\n%s", got)
	}
}

func TestStartFailures(t *testing.T) {
	cases := []struct {
		mode, want string
		timeout    time.Duration
	}{
		{"fail", "dockerd exited before it answered (exit status 1); its last lines:\nlevel=info msg=\"starting up\"\nfailed to start daemon: boom", 10 * time.Second},
		{"silent", "did not answer on", 300 * time.Millisecond},
	}
	for _, c := range cases {
		t.Run(c.mode, func(t *testing.T) {
			o, _ := fakeOptions(t, c.mode)
			o.StartTimeout = c.timeout
			begin := time.Now()
			_, err := start(context.Background(), o)
			if !errors.Is(err, ErrNoAnswer) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v; want ErrNoAnswer with %q", err, c.want)
			}
			if d := time.Since(begin); d > 5*time.Second {
				t.Errorf("took %s", d)
			}
		})
	}
	t.Run("no dockerd", func(t *testing.T) {
		o, _ := fakeOptions(t, "serve")
		o.Dockerd = "stevedore-no-such-dockerd"
		if _, err := start(context.Background(), o); !errors.Is(err, ErrNoAnswer) || !strings.Contains(err.Error(), "docker.io") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		o, _ := fakeOptions(t, "silent")
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if _, err := start(ctx, o); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestStopKillsAStubbornEngine(t *testing.T) {
	o, _ := fakeOptions(t, "stubborn")
	e, err := start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Stop(300 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Stop = %v; want killed", err)
	}
}

func TestDoneWhenTheEngineDies(t *testing.T) {
	o, _ := fakeOptions(t, "serve")
	e, err := start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	e.cmd.Process.Kill()
	select {
	case <-e.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed")
	}
	if err := e.Err(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Err() = %v", err)
	}
}

func TestCheckPrivileges(t *testing.T) {
	const (
		privileged = "CapEff:\t000001ffffffffff\n"
		// Docker's default set: no CAP_SYS_ADMIN, no CAP_NET_ADMIN.
		unprivileged = "CapEff:\t00000000a80425fb\n"
		cgroupRW     = "81 80 0:29 /docker/abc /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
		cgroupRO     = "84 80 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime - cgroup cgroup rw,memory\n"
		cgroup2RO    = "30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate\n"
		rootfs       = "75 50 0:44 / / rw,relatime - overlay overlay rw,lowerdir=/a\n"
	)
	cases := []struct {
		name, status, mounts string
		want                 []string // in the error; none: no error
	}{
		{"privileged", privileged, rootfs + cgroupRW, nil},
		{"default container", unprivileged, rootfs + cgroupRO + cgroupRW, []string{"CAP_SYS_ADMIN missing", "CAP_NET_ADMIN missing", "read-only at /sys/fs/cgroup/memory", "DISABLE_DIND=Y"}},
		{"several read-only", privileged, rootfs + cgroupRO + strings.ReplaceAll(cgroupRO, "memory", "pids"), []string{"read-only at /sys/fs/cgroup/memory and 1 more"}},
		{"caps but read-only cgroup v2", privileged, rootfs + cgroup2RO, []string{"read-only at /sys/fs/cgroup"}},
		{"no cgroups", privileged, rootfs, []string{"no cgroup file system"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			status, mounts := filepath.Join(dir, "status"), filepath.Join(dir, "mountinfo")
			os.WriteFile(status, []byte("Name:\tstevedore\n"+c.status+"CapBnd:\t000001ffffffffff\n"), 0o644)
			os.WriteFile(mounts, []byte(c.mounts), 0o644)
			err := checkPrivileges(status, mounts)
			if c.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrNotPrivileged) {
				t.Fatalf("err = %v; want ErrNotPrivileged", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q lacks %q", err, w)
				}
			}
		})
	}
}

func TestCheckNetwork(t *testing.T) {
	cases := []struct {
		name  string
		links map[string]string
		want  string // in the error; "": no error
	}{
		{"own namespace", map[string]string{"lo": "../../devices/virtual/net/lo", "eth0": "../../devices/virtual/net/eth0"}, ""},
		{"host's, with its engine's bridge", map[string]string{"lo": "../../devices/virtual/net/lo", "docker0": "../../devices/virtual/net/docker0"}, "docker0"},
		{"host's, with a NIC", map[string]string{"lo": "../../devices/virtual/net/lo", "eth0": "../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0"}, "physical interface eth0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, target := range c.links {
				if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
					t.Fatal(err)
				}
			}
			err := checkNetwork(dir)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrSharedNetwork) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v; want ErrSharedNetwork naming %q", err, c.want)
			}
		})
	}
}

func TestCheckSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "docker.sock")
	if err := checkSocket(sock); err != nil {
		t.Errorf("absent socket: %v", err)
	}
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkSocket(sock); err == nil || !strings.Contains(err.Error(), "already answers") {
		t.Errorf("answering socket: %v", err)
	}
	// A socket file left behind by a killed engine is no engine.
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	lis.Close()
	if err := checkSocket(sock); err != nil {
		t.Errorf("stale socket: %v", err)
	}
}

func TestNestCgroup2(t *testing.T) {
	write := func(t *testing.T, path, s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("private namespace root", func(t *testing.T) {
		root, own := t.TempDir(), filepath.Join(t.TempDir(), "cgroup")
		write(t, filepath.Join(root, "cgroup.controllers"), "cpuset cpu io memory pids\n")
		write(t, filepath.Join(root, "cgroup.procs"), "1\n7\n")
		write(t, filepath.Join(root, "cgroup.subtree_control"), "")
		write(t, own, "0::/\n")
		if err := nestCgroup2(root, own); err != nil {
			t.Fatal(err)
		}
		// A real cgroup.procs takes one pid per write; the file keeps the last.
		if b, _ := os.ReadFile(filepath.Join(root, "init", "cgroup.procs")); string(b) != "7" {
			t.Errorf("init/cgroup.procs = %q", b)
		}
		if b, _ := os.ReadFile(filepath.Join(root, "cgroup.subtree_control")); string(b) != "+cpuset +cpu +io +memory +pids" {
			t.Errorf("subtree_control = %q", b)
		}
	})
	t.Run("not the root: the host's hierarchy is left alone", func(t *testing.T) {
		root, own := t.TempDir(), filepath.Join(t.TempDir(), "cgroup")
		write(t, filepath.Join(root, "cgroup.controllers"), "cpu memory\n")
		write(t, own, "0::/system.slice/docker-abc.scope\n")
		if err := nestCgroup2(root, own); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(root, "init")); err == nil {
			t.Error("made init outside its own namespace")
		}
	})
	t.Run("cgroup v1", func(t *testing.T) {
		if err := nestCgroup2(t.TempDir(), "/nonexistent"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestLineWriterKeepsTheTail(t *testing.T) {
	var out bytes.Buffer
	l := newLineWriter(&out, "dockerd: ", 2)
	l.Write([]byte("one\ntw"))
	l.Write([]byte("o\nthree\nfour"))
	if got := l.tail(); got != "two\nthree" {
		t.Errorf("tail = %q", got)
	}
	l.flush()
	if got := l.tail(); got != "three\nfour" {
		t.Errorf("tail after flush = %q", got)
	}
	if want := "dockerd: one\ndockerd: two\ndockerd: three\ndockerd: four\n"; out.String() != want {
		t.Errorf("output %q; want %q", out.String(), want)
	}
}
