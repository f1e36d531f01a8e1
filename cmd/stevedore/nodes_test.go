package main

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
)

// Two server nodes on one PostgreSQL serve one queue: fifty steps are
// submitted through both nodes' APIs to two polling agents, each of which
// knows both nodes; one node is killed with SIGKILL while it drives steps.
// Its agent redials the other node, which takes the steps over once their
// leases run out: every step completes once, with its real exit code and a
// gapless task log holding each of its lines once, although the killed node
// comes back meanwhile.
func TestTwoNodesOneKilled(t *testing.T) {
	const steps, lines = 50, 20
	agentDirs := []string{filepath.Join(t.TempDir(), "w1"), filepath.Join(t.TempDir(), "w2")}
	c := newCluster(t, agentDirs)
	a, b := c.node("a"), c.node("b")
	procA := c.start(t, a)
	c.start(t, b)
	env, taskLogs := c.env, c.taskLogs
	// w1 prefers node a, w2 node b; each fails over to the other.
	for i, order := range [][]*serverSetup{{a, b}, {b, a}} {
		args := []string{"agent", "--state-dir", agentDirs[i], "--name", fmt.Sprintf("w%d", i+1), "--pool", "linux", "--max-steps", "4", "--log-level", "debug"}
		for _, s := range order {
			args = append(args, "--server", s.polling, "--server-thumbprint", s.thumbprint)
		}
		start(t, fmt.Sprintf("agent-w%d.log", i+1), args...)
	}

	apiA := &apiClient{base: a.url(), user: testAdmin, pass: testPassword, http: http.DefaultClient}
	apiB := &apiClient{base: b.url(), user: testAdmin, pass: testPassword, http: http.DefaultClient}
	want := map[string]int{} // step ID → its exit code
	for n := range steps {
		script := fmt.Sprintf("for i in $(seq 1 %d); do echo step %d line $i; sleep 0.1; done; exit %d", lines, n, n%5)
		body, err := protojson.Marshal(&pb.StartStepRequest{Execution: &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}},
			Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: script}})
		if err != nil {
			t.Fatal(err)
		}
		api := apiA
		if n%2 == 1 {
			api = apiB
		}
		var v server.StepView
		if err := api.call(t.Context(), "POST", "/api/steps", server.SubmitBody{Pool: "linux", Step: body}, &v); err != nil {
			t.Fatalf("submit %d: %v", n, err)
		}
		want[v.ID] = n % 5
	}

	list := func() []server.StepView {
		t.Helper()
		var vs []server.StepView
		if err := apiB.call(t.Context(), "GET", "/api/steps", nil, &vs); err != nil {
			t.Fatal(err)
		}
		return vs
	}
	// Kill node a while it drives steps, some already done.
	deadline := time.Now().Add(2 * time.Minute)
	drivenByA := map[string]bool{}
	for len(drivenByA) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("node a never drove a step")
		}
		done := 0
		clear(drivenByA)
		for _, v := range list() {
			switch {
			case v.State == server.StateComplete:
				done++
			case v.State == server.StateRunning && v.Node == "a":
				drivenByA[v.ID] = true
			}
		}
		if done < 8 {
			clear(drivenByA)
		}
		time.Sleep(100 * time.Millisecond)
	}
	procA.kill()
	// Once node b has taken a's steps over, a comes back: it must not
	// drive them again (the task logs below would show every line twice).
	for taken := false; !taken; {
		if time.Now().After(deadline) {
			t.Fatal("node b did not take node a's steps over")
		}
		time.Sleep(200 * time.Millisecond)
		taken = true
		for _, v := range list() {
			if drivenByA[v.ID] && v.State == server.StateRunning && v.Node != "b" {
				taken = false
			}
		}
	}
	startEnv(t, "node-a-again.log", env, a.args...)
	waitHTTP(t, a.url())

	var final []server.StepView
	for {
		if time.Now().After(deadline) {
			t.Fatalf("not every step completed in time: %+v", final)
		}
		final = list()
		complete := 0
		for _, v := range final {
			if v.State == server.StateComplete {
				complete++
			}
		}
		if complete == steps {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(final) != steps {
		t.Fatalf("%d steps, want %d", len(final), steps)
	}
	takenOver := 0
	for _, v := range final {
		code, ok := want[v.ID]
		wantOutcome := "SUCCEEDED"
		if code != 0 {
			wantOutcome = "FAILED"
		}
		if !ok || v.ExitCode == nil || int(*v.ExitCode) != code || v.Outcome != wantOutcome {
			t.Errorf("step %s: outcome %s, exit code %v (%s); want %s, %d", v.ID, v.Outcome, v.ExitCode, v.Reason, wantOutcome, code)
		}
		if drivenByA[v.ID] && v.Node == "b" {
			takenOver++
		}
		checkStepLog(t, filepath.Join(taskLogs, v.ID+".log"), lines)
	}
	if takenOver == 0 {
		t.Errorf("none of the %d steps node a drove when it was killed was finished by node b", len(drivenByA))
	}
	t.Logf("%d steps were running on node a when it was killed; node b finished %d of them", len(drivenByA), takenOver)
}

// checkStepLog checks a task log: sequences 1, 2, … with no gap, and the
// step's lines "step N line 1" … "step N line lines" once each, in order.
func checkStepLog(t *testing.T, path string, lines int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	var out []string
	var seq uint64
	for sc.Scan() {
		var e server.LogEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Errorf("%s: %v", path, err)
			return
		}
		if seq++; e.Sequence != seq {
			t.Errorf("%s: entry %d has sequence %d", path, seq, e.Sequence)
			return
		}
		if e.Source == "stdout" {
			out = append(out, e.Text)
		}
	}
	if len(out) != lines {
		t.Errorf("%s: %d stdout lines, want %d:\n%s", path, len(out), lines, strings.Join(out, "\n"))
		return
	}
	prefix := strings.TrimSuffix(out[0], " 1")
	for i, l := range out {
		if l != fmt.Sprintf("%s %d", prefix, i+1) {
			t.Errorf("%s: line %d is %q", path, i+1, l)
			return
		}
	}
}

// cluster is server nodes on one PostgreSQL database of the test's own,
// with one master key and one directory of task logs and artifacts.
type cluster struct {
	db, taskLogs, artifacts string
	env, trust              []string
	t                       *testing.T
}

// newCluster trusts the agents whose state dirs are agentDirs.
func newCluster(t *testing.T, agentDirs []string) *cluster {
	shared := t.TempDir() // the directory every node reads and writes
	os.Chmod(shared, 0o755)
	key := make([]byte, 16)
	rand.Read(key)
	c := &cluster{db: testenv.Postgres(t), taskLogs: filepath.Join(shared, "taskLogs"), artifacts: filepath.Join(shared, "artifacts"),
		env: []string{"MASTER_KEY=" + base64.StdEncoding.EncodeToString(key)}, t: t}
	for _, d := range agentDirs {
		c.trust = append(c.trust, "--trust", thumbprint(t, d))
	}
	return c
}

// node is the set-up of node name, with a short lease.
func (c *cluster) node(name string) *serverSetup {
	t := c.t
	s := &serverSetup{dataDir: filepath.Join(t.TempDir(), name), http: testenv.FreeAddr(t), polling: testenv.FreeAddr(t), scheme: "http"}
	s.thumbprint = thumbprint(t, s.dataDir)
	s.args = append([]string{"server", "--data-dir", s.dataDir, "--http", s.http, "--polling", s.polling, "--log-level", "debug",
		"--db", c.db, "--node", name, "--step-lease", "3s", "--task-logs", c.taskLogs, "--artifacts", c.artifacts}, c.trust...)
	return s
}

// start starts node s and waits for its API.
func (c *cluster) start(t *testing.T, s *serverSetup) *proc {
	p := startEnv(t, "node-"+filepath.Base(s.dataDir)+".log", c.env, s.args...)
	waitHTTP(t, s.url())
	return p
}

// `stevedore run` through one node follows live the log of a step that
// another node drives (its worker is connected only there), and its
// Ctrl-C cancels the step on that node's worker: the script's own exit.
func TestRunThroughOneNodeOfAStepDrivenByAnother(t *testing.T) {
	agentDir := filepath.Join(t.TempDir(), "w1")
	c := newCluster(t, []string{agentDir})
	a, b := c.node("a"), c.node("b")
	c.start(t, a)
	c.start(t, b)
	start(t, "agent-w1.log", "agent", "--state-dir", agentDir, "--name", "w1", "--pool", "linux", "--server", a.polling, "--server-thumbprint", a.thumbprint)
	interruptRun(t, b.url(), "linux")
	apiB := &apiClient{base: b.url(), user: testAdmin, pass: testPassword, http: http.DefaultClient}
	var vs []server.StepView
	if err := apiB.call(t.Context(), "GET", "/api/steps", nil, &vs); err != nil || len(vs) != 1 || vs[0].Node != "a" || vs[0].Outcome != "CANCELLED" {
		t.Errorf("steps %+v (%v); want one, driven by node a, CANCELLED", vs, err)
	}
}

// A listening worker is dialled by one node of several at a time, so that
// one dispatcher fills its slots; when that node dies, another takes the
// worker's lease and connects, and steps run on.
func TestListeningWorkerOneNodeAtATime(t *testing.T) {
	c := newCluster(t, nil)
	a, b := c.node("a"), c.node("b")
	procs := map[string]*proc{"a": c.start(t, a), "b": c.start(t, b)}
	// Both present the identity node a kept in the database.
	agentDir := filepath.Join(t.TempDir(), "l1")
	listen := testenv.FreeAddr(t)
	start(t, "agent-l1.log", "agent", "--state-dir", agentDir, "--listen", listen, "--trust", a.thumbprint, "--name", "l1", "--pool", "linux")
	apis := map[string]*apiClient{}
	for name, s := range map[string]*serverSetup{"a": a, "b": b} {
		apis[name] = &apiClient{base: s.url(), user: testAdmin, pass: testPassword, http: http.DefaultClient}
	}
	var registered map[string]any
	if err := apis["a"].call(t.Context(), "POST", "/api/workers", server.RegisterWorkerBody{Name: "l1", Address: listen, Thumbprint: thumbprint(t, agentDir)}, &registered); err != nil {
		t.Fatal(err)
	}
	connectedOn := func(names ...string) []string {
		var on []string
		for _, n := range names {
			var ws []server.WorkerStatus
			if err := apis[n].call(t.Context(), "GET", "/api/workers", nil, &ws); err != nil {
				continue // a node killed
			}
			for _, w := range ws {
				if w.Name == "l1" && w.Connected {
					on = append(on, n)
				}
			}
		}
		return on
	}
	deadline := time.Now().Add(time.Minute)
	var on []string
	for on = connectedOn("a", "b"); len(on) != 1; on = connectedOn("a", "b") {
		if time.Now().After(deadline) {
			t.Fatalf("connected on %v, want one node", on)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A few lease renewals later, still one.
	time.Sleep(2 * time.Second)
	if now := connectedOn("a", "b"); len(now) != 1 {
		t.Fatalf("connected on %v, want one node", now)
	}
	code, stdout, stderr := runStevedore(t, []string{"STEVEDORE_PASSWORD=" + testPassword}, "run", "--server", b.url(), "--user", testAdmin, "--pool", "linux", "--script", "echo through $0; exit 4")
	if code != 4 || !strings.Contains(stdout, "through") {
		t.Fatalf("run: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	holder, other := on[0], map[string]string{"a": "b", "b": "a"}[on[0]]
	procs[holder].kill()
	for on = connectedOn(other); len(on) != 1; on = connectedOn(other) {
		if time.Now().After(deadline) {
			t.Fatalf("node %s never connected the listening worker after node %s died", other, holder)
		}
		time.Sleep(100 * time.Millisecond)
	}
	survivor := map[string]*serverSetup{"a": a, "b": b}[other]
	code, stdout, stderr = runStevedore(t, []string{"STEVEDORE_PASSWORD=" + testPassword}, "run", "--server", survivor.url(), "--user", testAdmin, "--pool", "linux", "--script", "echo after its node died; exit 5")
	if code != 5 || !strings.Contains(stdout, "after its node died") {
		t.Fatalf("run after the node died: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
