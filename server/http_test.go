package server_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
)

// api is a client of the server's HTTP API.
type api struct {
	t          testing.TB
	base       string
	user, pass string
	// token, when set, is sent as a bearer token instead of user and pass.
	token string
}

func (e *env) api() *api {
	h := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The server may be restarted under the test; use the current one.
		e.srv.Handler().ServeHTTP(w, r)
	}))
	e.t.Cleanup(h.Close)
	return &api{t: e.t, base: h.URL, user: adminUser, pass: adminPassword}
}

func (a *api) do(method, path string, body any) (int, []byte) {
	a.t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			a.t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, a.base+path, r)
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	} else if a.user != "" {
		req.SetBasicAuth(a.user, a.pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// step reads GET /api/steps/ID.
func (a *api) step(id string) server.StepView {
	a.t.Helper()
	code, b := a.do("GET", "/api/steps/"+id, nil)
	var v server.StepView
	if code != http.StatusOK || json.Unmarshal(b, &v) != nil {
		a.t.Fatalf("GET /api/steps/%s: %d %s", id, code, b)
	}
	return v
}

func (a *api) submit(body map[string]any, step *pb.StartStepRequest) server.StepView {
	a.t.Helper()
	raw, err := protojson.Marshal(step)
	if err != nil {
		a.t.Fatal(err)
	}
	body["step"] = json.RawMessage(raw)
	code, b := a.do("POST", "/api/steps", body)
	if code != http.StatusCreated {
		a.t.Fatalf("submit: %d %s", code, b)
	}
	var v server.StepView
	if err := json.Unmarshal(b, &v); err != nil {
		a.t.Fatal(err)
	}
	return v
}

// follow reads the step's log through the API to its end.
func (a *api) follow(id string) ([]server.LogEntry, server.StepView) {
	a.t.Helper()
	var all []server.LogEntry
	after := uint64(0)
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		code, b := a.do("GET", fmt.Sprintf("/api/steps/%s/log?after=%d&wait=5s", id, after), nil)
		if code != http.StatusOK {
			a.t.Fatalf("log: %d %s", code, b)
		}
		var page server.LogPage
		if err := json.Unmarshal(b, &page); err != nil {
			a.t.Fatal(err)
		}
		for _, l := range page.Lines {
			if l.Sequence != after+1 {
				a.t.Fatalf("log sequence %d after %d", l.Sequence, after)
			}
			after = l.Sequence
		}
		all = append(all, page.Lines...)
		if page.Next != after {
			a.t.Fatalf("next_after %d, last line %d", page.Next, after)
		}
		if page.Step.State == server.StateComplete && len(page.Lines) == 0 {
			return all, page.Step
		}
	}
	a.t.Fatal("the step did not complete")
	return nil, server.StepView{}
}

func TestAPIRefusesRequestsWithoutCredentials(t *testing.T) {
	e := newEnv(t)
	good := e.api()
	cases := []struct {
		name, user, pass, method, path string
		want                           int
	}{
		{"no credentials", "", "", "GET", "/api/steps", http.StatusUnauthorized},
		{"no credentials, submit", "", "", "POST", "/api/steps", http.StatusUnauthorized},
		{"no credentials, workers", "", "", "GET", "/api/workers", http.StatusUnauthorized},
		{"wrong password", adminUser, "wrong", "GET", "/api/steps", http.StatusUnauthorized},
		{"unknown user", "someone", adminPassword, "GET", "/api/workers", http.StatusUnauthorized},
		{"admin", adminUser, adminPassword, "GET", "/api/steps", http.StatusOK},
		{"health needs none", "", "", "GET", "/healthz", http.StatusOK},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := &api{t: t, base: good.base, user: c.user, pass: c.pass}
			code, body := a.do(c.method, c.path, nil)
			if code != c.want {
				t.Fatalf("%s %s: %d %s, want %d", c.method, c.path, code, body, c.want)
			}
		})
	}
}

// The admin credentials come from the first start only; a generated
// password is written to the data dir when none is given.
func TestAdminCredentialsFromFirstStart(t *testing.T) {
	e := newEnv(t)
	a := e.api()
	e.stop()
	var err error
	e.srv, err = server.New(server.Config{DataDir: e.dir + "/server", Identity: e.id, Trust: e.trust, Logger: e.log,
		AdminUsername: "other", AdminPassword: "other-password", OpenStore: e.backend.OpenStore()})
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := a.do("GET", "/api/steps", nil); code != http.StatusOK {
		t.Errorf("the first start's credentials: %d", code)
	}
	other := &api{t: t, base: a.base, user: "other", pass: "other-password"}
	if code, _ := other.do("GET", "/api/steps", nil); code != http.StatusUnauthorized {
		t.Errorf("a later start's ADMIN_USERNAME was taken: %d", code)
	}
	e.srv.Close()
	e.srv = nil

	dir := t.TempDir()
	s, err := server.New(server.Config{DataDir: dir, Identity: e.id, Trust: e.trust, Logger: e.log, OpenStore: server.NewTestBackend(t).OpenStore()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pw, err := readFileTrim(dir + "/" + server.AdminPasswordFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Authenticate("admin", pw); err != nil {
		t.Errorf("the generated password: %v", err)
	}
	if err := s.Authenticate("admin", pw+"x"); err == nil {
		t.Error("a wrong password was accepted")
	}
}

// ADMIN_EMAIL: stored with the admin on the first start, shown where the
// admin is (GET /web/session, by Basic auth and by a session), kept over a
// later start that gives another; a malformed one stops the server.
func TestAdminEmail(t *testing.T) {
	for _, tt := range []struct {
		name, email string
		want        error // from server.New
	}{
		{"an address", "ops@example.com", nil},
		{"none", "", nil},
		{"no domain", "ops@", server.ErrBadEmail},
		{"no at", "ops.example.com", server.ErrBadEmail},
		{"with a display name", "Ops <ops@example.com>", server.ErrBadEmail},
		{"with spaces", " ops@example.com", server.ErrBadEmail},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.want != nil {
				_, err := server.New(server.Config{DataDir: t.TempDir(), AdminPassword: "x", AdminEmail: tt.email,
					OpenStore: server.NewTestBackend(t).OpenStore()})
				if !errors.Is(err, tt.want) {
					t.Fatalf("New with ADMIN_EMAIL %q: %v, want %v", tt.email, err, tt.want)
				}
				return
			}
			e := newEnv(t, func(c *server.Config) { c.AdminEmail = tt.email })
			a := e.api()
			shown := func(when string) {
				t.Helper()
				code, b := a.do("GET", "/web/session", nil)
				var info server.SessionInfo
				if code != http.StatusOK || json.Unmarshal(b, &info) != nil || info.Name != adminUser || info.Email != tt.email {
					t.Errorf("%s: GET /web/session: %d %s; want the admin with email %q", when, code, b, tt.email)
				}
				if tt.email == "" && bytes.Contains(b, []byte(`"email"`)) {
					t.Errorf("%s: an email field with no email: %s", when, b)
				}
			}
			shown("first start")
			w := newWebClient(t, a.base, nil)
			resp, b := w.do("POST", "/web/login", map[string]string{"username": adminUser, "password": adminPassword}, false)
			var info server.SessionInfo
			if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &info) != nil || info.Email != tt.email {
				t.Errorf("sign-in: %d %s; want email %q", resp.StatusCode, b, tt.email)
			}

			e.stop()
			e.opts = append(e.opts, func(c *server.Config) { c.AdminEmail = "later@example.com" })
			e.start("127.0.0.1:0")
			shown("a later start with another ADMIN_EMAIL")
		})
	}
}

func TestAPISubmitFollowAndArtifacts(t *testing.T) {
	e := newEnv(t)
	e.pollingAgent("w1", 2)
	a := e.api()
	step := &pb.StartStepRequest{Execution: &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}},
		Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: `for i in 1 2 3; do echo line $i; done
echo oops >&2
set_variable Version 1.2.3
printf 'artifact body\n' > out.txt && new_artifact out.txt
exit 5`}}
	v := a.submit(map[string]any{"pool": "linux", "key": "client-key-1"}, step)
	if v.Sealed != nil {
		t.Error("the API shows the sealed request")
	}
	again := a.submit(map[string]any{"pool": "linux", "key": "client-key-1"}, step)
	if again.ID != v.ID {
		t.Errorf("a resubmission with the same key made step %s, want %s", again.ID, v.ID)
	}
	lines, final := a.follow(v.ID)
	var stdout, stderr []string
	for _, l := range lines {
		switch l.Source {
		case "stdout":
			stdout = append(stdout, l.Text)
		case "stderr":
			stderr = append(stderr, l.Text)
		}
	}
	if strings.Join(stdout, ",") != "line 1,line 2,line 3" || strings.Join(stderr, ",") != "oops" {
		t.Errorf("stdout %q stderr %q", stdout, stderr)
	}
	if final.Outcome != "FAILED" || final.ExitCode == nil || *final.ExitCode != 5 || final.OutputVariables["Version"] != "1.2.3" {
		t.Errorf("final %+v", final.StepRecord)
	}
	if len(final.Artifacts) != 1 {
		t.Fatalf("artifacts %+v", final.Artifacts)
	}
	code, body := a.do("GET", "/api/steps/"+v.ID+"/artifacts/"+final.Artifacts[0].Name, nil)
	if code != http.StatusOK || string(body) != "artifact body\n" {
		t.Errorf("artifact: %d %q", code, body)
	}
	if code, _ := a.do("GET", "/api/steps/"+v.ID+"/artifacts/nope", nil); code != http.StatusNotFound {
		t.Errorf("a missing artifact: %d", code)
	}
	code, body = a.do("GET", "/api/steps/"+v.ID+"/log?format=text", nil)
	if code != http.StatusOK || !strings.Contains(string(body), "line 3\n[stderr] oops\n") {
		t.Errorf("text log: %d %q", code, body)
	}
	code, body = a.do("GET", "/api/workers", nil)
	var workers []server.WorkerStatus
	json.Unmarshal(body, &workers)
	if code != http.StatusOK || len(workers) != 1 || !workers[0].Connected || workers[0].FreeSlots != 2 || workers[0].Slots != 2 {
		t.Errorf("workers: %d %s", code, body)
	}
	if code, _ := a.do("GET", "/api/steps/nope", nil); code != http.StatusNotFound {
		t.Errorf("an unknown step: %d", code)
	}
}

func TestAPIBadSubmissions(t *testing.T) {
	e := newEnv(t)
	a := e.api()
	cases := []struct {
		name string
		body string
		want int
	}{
		{"not JSON", `{`, http.StatusBadRequest},
		{"no step", `{"pool":"linux"}`, http.StatusBadRequest},
		{"no target", `{"step":{"script":{"body":"true"}}}`, http.StatusBadRequest},
		{"unknown field", `{"pool":"linux","stepp":{}}`, http.StatusBadRequest},
		{"step not a request", `{"pool":"linux","step":{"nope":1}}`, http.StatusBadRequest},
		{"queue timeout not a duration", `{"pool":"linux","queue_timeout":"soon","step":{"script":{"body":"true"}}}`, http.StatusBadRequest},
		{"queue timeout not positive", `{"pool":"linux","queue_timeout":"-1s","step":{"script":{"body":"true"}}}`, http.StatusBadRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", a.base+"/api/steps", strings.NewReader(c.body))
			req.SetBasicAuth(a.user, a.pass)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var apiErr server.APIError
			json.NewDecoder(resp.Body).Decode(&apiErr)
			if resp.StatusCode != c.want || apiErr.Error == "" {
				t.Errorf("%d %q, want %d and an error", resp.StatusCode, apiErr.Error, c.want)
			}
		})
	}
}

func TestAPICancel(t *testing.T) {
	e := newEnv(t)
	e.pollingAgent("w1", 1)
	a := e.api()
	running := a.submit(map[string]any{"worker": "w1"}, &pb.StartStepRequest{Execution: &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}},
		Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: "echo started; sleep 300"}})
	queued := a.submit(map[string]any{"worker": "w1"}, numbered(1, "0"))
	// Wait until the first step runs (its first line is stored).
	deadline := time.Now().Add(time.Minute)
	for {
		r, _ := e.srv.Step(running.ID)
		if r.Cursor > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the step did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, b := a.do("POST", "/api/steps/"+queued.ID+"/cancel", nil); code != http.StatusAccepted {
		t.Fatalf("cancel queued: %d %s", code, b)
	}
	start := time.Now()
	if code, b := a.do("POST", "/api/steps/"+running.ID+"/cancel", nil); code != http.StatusAccepted {
		t.Fatalf("cancel running: %d %s", code, b)
	}
	_, final := a.follow(running.ID)
	if final.Outcome != "CANCELLED" {
		t.Errorf("running step: %+v", final.StepRecord)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("the cancel took %v", took)
	}
	_, q := a.follow(queued.ID)
	if q.Outcome != "CANCELLED" || q.Assigned != "" {
		t.Errorf("queued step: %+v", q.StepRecord)
	}
	if code, _ := a.do("POST", "/api/steps/"+running.ID+"/cancel", nil); code != http.StatusConflict {
		t.Errorf("cancelling a complete step: %d", code)
	}
}

func readFileTrim(path string) (string, error) {
	b, err := os.ReadFile(path)
	return strings.TrimSpace(string(b)), err
}

// A queued step says why it waits.
func TestAPIQueuedStepSaysWhy(t *testing.T) {
	e := newEnv(t)
	a := e.api()
	v := a.submit(map[string]any{"pool": "nowhere"}, numbered(1, "0"))
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, b := a.do("GET", "/api/steps/"+v.ID, nil)
		var got server.StepView
		if code != http.StatusOK || json.Unmarshal(b, &got) != nil {
			t.Fatalf("%d %s", code, b)
		}
		if got.WaitingFor != "" {
			if got.State != server.StateQueued || !strings.Contains(got.WaitingFor, "nowhere") {
				t.Errorf("state %s, waiting for %q", got.State, got.WaitingFor)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a queued step with no worker does not say why it waits")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, _ := a.do("POST", "/api/steps/"+v.ID+"/cancel", nil); code != http.StatusAccepted {
		t.Errorf("cancel: %d", code)
	}
}

// The registration token adds a thumbprint to trust and does nothing else.
func TestRegistrationToken(t *testing.T) {
	e := newEnv(t)
	e.stop()
	e.regToken = "join-the-pool"
	e.start("127.0.0.1:0")
	a := e.api()
	newcomer := strings.Repeat("ab", 32)
	cases := []struct {
		name, method, path, token string
		body                      any
		want                      int
	}{
		{"token registers", "POST", "/api/trust", "join-the-pool", map[string]string{"thumbprint": newcomer}, http.StatusCreated},
		{"a bad token", "POST", "/api/trust", "guess", map[string]string{"thumbprint": newcomer}, http.StatusUnauthorized},
		{"the token lists nothing", "GET", "/api/trust", "join-the-pool", nil, http.StatusUnauthorized},
		{"the token submits nothing", "POST", "/api/steps", "join-the-pool", map[string]any{"pool": "x"}, http.StatusUnauthorized},
		{"the token distrusts nothing", "DELETE", "/api/trust/" + newcomer, "join-the-pool", nil, http.StatusUnauthorized},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var body io.Reader
			if c.body != nil {
				b, _ := json.Marshal(c.body)
				body = bytes.NewReader(b)
			}
			req, _ := http.NewRequest(c.method, a.base+c.path, body)
			req.Header.Set("Authorization", "Bearer "+c.token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("%s %s: %d, want %d", c.method, c.path, resp.StatusCode, c.want)
			}
		})
	}
	if !slices.Contains(e.srv.Trusted(), newcomer) {
		t.Error("the registered thumbprint is not trusted")
	}
	// The admin may still add one.
	if code, b := a.do("POST", "/api/trust", map[string]string{"thumbprint": strings.Repeat("cd", 32)}); code != http.StatusCreated {
		t.Errorf("admin trust: %d %s", code, b)
	}
}
