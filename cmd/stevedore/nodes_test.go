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
	db := testenv.Postgres(t)
	shared := t.TempDir() // the directory every node reads and writes
	os.Chmod(shared, 0o755)
	taskLogs, artifacts := filepath.Join(shared, "taskLogs"), filepath.Join(shared, "artifacts")
	key := make([]byte, 16)
	rand.Read(key)
	env := []string{"MASTER_KEY=" + base64.StdEncoding.EncodeToString(key)}

	agentDirs := []string{filepath.Join(t.TempDir(), "w1"), filepath.Join(t.TempDir(), "w2")}
	var trust []string
	for _, d := range agentDirs {
		trust = append(trust, "--trust", thumbprint(t, d))
	}
	node := func(name string) *serverSetup {
		s := &serverSetup{dataDir: filepath.Join(t.TempDir(), name), http: testenv.FreeAddr(t), polling: testenv.FreeAddr(t), scheme: "http"}
		s.thumbprint = thumbprint(t, s.dataDir)
		s.args = append([]string{"server", "--data-dir", s.dataDir, "--http", s.http, "--polling", s.polling, "--log-level", "debug",
			"--db", db, "--node", name, "--step-lease", "3s", "--task-logs", taskLogs, "--artifacts", artifacts}, trust...)
		return s
	}
	a, b := node("a"), node("b")
	procA := startEnv(t, "node-a.log", env, a.args...)
	waitHTTP(t, a.url())
	startEnv(t, "node-b.log", env, b.args...)
	waitHTTP(t, b.url())
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
