package server_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
)

// createKey makes an API key through the API as the admin and returns it
// with its secret.
func (a *api) createKey(name string, role server.Role) server.NewAPIKey {
	a.t.Helper()
	code, b := a.do("POST", "/api/keys", server.CreateKeyBody{Name: name, Role: role})
	var k server.NewAPIKey
	if code != http.StatusCreated || json.Unmarshal(b, &k) != nil {
		a.t.Fatalf("create key %s: %d %s", name, code, b)
	}
	return k
}

// as is a client of the same API with the key's secret as bearer token.
func (a *api) as(token string) *api {
	return &api{t: a.t, base: a.base, token: token}
}

// Every route against every kind of caller: no credentials and bad ones
// get 401, the registration token only adds trust, and each key role gets
// its routes and 403 on the others, the 403 naming the role needed.
func TestAPIKeyRoles(t *testing.T) {
	e := newEnv(t)
	e.stop()
	e.regToken = "join-the-pool"
	e.start("127.0.0.1:0")
	e.pollingAgent("w1", 2)
	admin := e.api()
	done := admin.submit(map[string]any{"pool": "linux"}, &pb.StartStepRequest{Execution: &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}},
		Script: &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: "echo hi; echo body > a.txt && new_artifact a.txt"}})
	_, final := admin.follow(done.ID)
	if len(final.Artifacts) != 1 {
		t.Fatalf("artifacts %+v", final.Artifacts)
	}

	reader, submitter, adminRole := server.RoleReader, server.RoleSubmitter, server.RoleAdmin
	callers := []struct {
		name string
		api  *api
		// grants are the roles whose routes the caller may use; none: 401.
		grants []server.Role
		// registration: the caller has the registration token.
		registration bool
	}{
		{"no credentials", &api{t: t, base: admin.base}, nil, false},
		{"unknown key", admin.as(server.APIKeyPrefix + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), nil, false},
		{"wrong password", &api{t: t, base: admin.base, user: adminUser, pass: "wrong"}, nil, false},
		{"registration token", admin.as("join-the-pool"), nil, true},
		{"reader key", admin.as(admin.createKey("dashboard", reader).Key), []server.Role{reader}, false},
		{"submitter key", admin.as(admin.createKey("ci", submitter).Key), []server.Role{reader, submitter}, false},
		{"admin key", admin.as(admin.createKey("ops", adminRole).Key), []server.Role{reader, submitter, adminRole}, false},
		{"admin user", admin, []server.Role{reader, submitter, adminRole}, false},
	}
	thumbprint := strings.Repeat("ab", 32)
	routes := []struct {
		// path: {done} is a complete step with an artifact.
		method, path string
		// body is JSON; {n} in it is a number new to each request.
		body string
		need server.Role
		ok   int
		// byRegistration is the answer to the registration token, when not 401.
		byRegistration int
	}{
		{"GET", "/api/steps", "", reader, http.StatusOK, 0},
		{"GET", "/api/steps/{done}", "", reader, http.StatusOK, 0},
		{"GET", "/api/steps/{done}/log", "", reader, http.StatusOK, 0},
		{"GET", "/api/steps/{done}/log?format=text", "", reader, http.StatusOK, 0},
		{"GET", "/api/steps/{done}/artifacts/" + final.Artifacts[0].Name, "", reader, http.StatusOK, 0},
		{"GET", "/api/workers", "", reader, http.StatusOK, 0},
		{"POST", "/api/steps", `{"pool":"nowhere","step":{"script":{"body":"true"}}}`, submitter, http.StatusCreated, 0},
		// {queued}: a step submitted for the request, waiting for a worker:
		// by the caller when it may submit (a submitter cancels its own).
		{"POST", "/api/steps/{queued}/cancel", "", submitter, http.StatusAccepted, 0},
		{"GET", "/api/steps/{queued}/outputs", "", submitter, http.StatusOK, 0},
		{"POST", "/api/workers", `{"name":"listening-{n}","address":"127.0.0.1:1","thumbprint":"` + thumbprint + `"}`, adminRole, http.StatusCreated, 0},
		{"GET", "/api/trust", "", adminRole, http.StatusOK, 0},
		{"POST", "/api/trust", `{"thumbprint":"` + thumbprint + `"}`, adminRole, http.StatusCreated, http.StatusCreated},
		{"DELETE", "/api/trust/" + thumbprint, "", adminRole, http.StatusNoContent, 0},
		{"GET", "/api/keys", "", adminRole, http.StatusOK, 0},
		{"POST", "/api/keys", `{"name":"key-{n}","role":"reader"}`, adminRole, http.StatusCreated, 0},
		// {key}: a key made for the request.
		{"DELETE", "/api/keys/{key}", "", adminRole, http.StatusNoContent, 0},
	}
	n := 0
	for _, c := range callers {
		for _, r := range routes {
			n++
			path := strings.ReplaceAll(r.path, "{done}", done.ID)
			if strings.Contains(path, "{queued}") {
				by := admin
				if slices.Contains(c.grants, submitter) {
					by = c.api
				}
				path = strings.ReplaceAll(path, "{queued}", by.submit(map[string]any{"pool": "nowhere"}, numbered(1, "0")).ID)
			}
			if strings.Contains(path, "{key}") {
				path = strings.ReplaceAll(path, "{key}", admin.createKey(fmt.Sprintf("doomed-%d", n), reader).ID)
			}
			want := http.StatusUnauthorized
			switch {
			case c.registration && r.byRegistration != 0:
				want = r.byRegistration
			case slices.Contains(c.grants, r.need):
				want = r.ok
			case c.grants != nil:
				want = http.StatusForbidden
			}
			t.Run(c.name+"/"+r.method+" "+r.path, func(t *testing.T) {
				var body any
				if r.body != "" {
					body = json.RawMessage(strings.ReplaceAll(r.body, "{n}", fmt.Sprint(n)))
				}
				a := *c.api
				a.t = t
				code, b := a.do(r.method, path, body)
				if code != want {
					t.Fatalf("%d %s, want %d", code, b, want)
				}
				if code == http.StatusForbidden {
					var apiErr server.APIError
					if json.Unmarshal(b, &apiErr) != nil || !strings.Contains(apiErr.Error, "needs the "+string(r.need)+" role") {
						t.Errorf("403 body %s does not name the role %s", b, r.need)
					}
				}
			})
		}
	}
}

// A key's life: its secret shown once, listed without it, its last use
// written at most once a minute, its submissions recorded as its own, and
// refused at the very next request once revoked.
func TestAPIKeyLifecycle(t *testing.T) {
	e := newEnv(t)
	admin := e.api()
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	var offset atomic.Int64
	server.SetKeyClock(e.srv, func() time.Time { return t0.Add(time.Duration(offset.Load())) })

	code, raw := admin.do("POST", "/api/keys", server.CreateKeyBody{Name: "ci", Role: server.RoleSubmitter})
	var ci server.NewAPIKey
	if code != http.StatusCreated || json.Unmarshal(raw, &ci) != nil {
		t.Fatalf("create: %d %s", code, raw)
	}
	if !strings.HasPrefix(ci.Key, server.APIKeyPrefix) || len(ci.Key) < len(server.APIKeyPrefix)+43 || ci.ID == "" ||
		ci.Name != "ci" || ci.Role != server.RoleSubmitter || !ci.CreatedAt.Equal(t0) || !ci.LastUsedAt.IsZero() {
		t.Errorf("created %s", raw)
	}
	listed := func() []server.APIKey {
		t.Helper()
		code, raw := admin.do("GET", "/api/keys", nil)
		if code != http.StatusOK || strings.Contains(string(raw), ci.Key) || strings.Contains(string(raw), `"key"`) {
			t.Fatalf("list: %d %s", code, raw)
		}
		var keys []server.APIKey
		if err := json.Unmarshal(raw, &keys); err != nil {
			t.Fatal(err)
		}
		return keys
	}
	if keys := listed(); len(keys) != 1 || keys[0].ID != ci.ID || keys[0].Name != "ci" || !keys[0].LastUsedAt.IsZero() {
		t.Errorf("listed %+v", keys)
	}

	bad := []struct {
		name, body string
		want       int
	}{
		{"the same name", `{"name":"ci","role":"reader"}`, http.StatusConflict},
		{"an unknown role", `{"name":"x","role":"owner"}`, http.StatusBadRequest},
		{"no role", `{"name":"x"}`, http.StatusBadRequest},
		{"no name", `{"role":"reader"}`, http.StatusBadRequest},
		{"a name with a space", `{"name":"my key","role":"reader"}`, http.StatusBadRequest},
		{"a name too long", `{"name":"` + strings.Repeat("n", 65) + `","role":"reader"}`, http.StatusBadRequest},
		{"an unknown field", `{"name":"x","role":"reader","secret":"mine"}`, http.StatusBadRequest},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			code, raw := admin.do("POST", "/api/keys", json.RawMessage(c.body))
			var apiErr server.APIError
			if code != c.want || json.Unmarshal(raw, &apiErr) != nil || apiErr.Error == "" {
				t.Errorf("%d %s, want %d and an error", code, raw, c.want)
			}
		})
	}

	// Last use: written at the first, then not again within a minute.
	key := admin.as(ci.Key)
	uses := []struct {
		at, want time.Duration
	}{{0, 0}, {30 * time.Second, 0}, {61 * time.Second, 61 * time.Second}, {90 * time.Second, 61 * time.Second}}
	for _, u := range uses {
		offset.Store(int64(u.at))
		if code, raw := key.do("GET", "/api/steps", nil); code != http.StatusOK {
			t.Fatalf("use at +%v: %d %s", u.at, code, raw)
		}
		if got := listed()[0].LastUsedAt; !got.Equal(t0.Add(u.want)) {
			t.Errorf("after a use at +%v: last_used_at %v, want %v", u.at, got, t0.Add(u.want))
		}
	}

	// Who submitted.
	byKey := key.submit(map[string]any{"pool": "nowhere"}, numbered(1, "0"))
	byAdmin := admin.submit(map[string]any{"pool": "nowhere"}, numbered(1, "0"))
	for id, want := range map[string]string{byKey.ID: "key:ci", byAdmin.ID: adminUser} {
		code, raw := key.do("GET", "/api/steps/"+id, nil)
		var v server.StepView
		if code != http.StatusOK || json.Unmarshal(raw, &v) != nil || v.SubmittedBy != want {
			t.Errorf("step %s: %d %s, want submitted_by %q", id, code, raw, want)
		}
	}

	// Keys outlive a restart.
	e.stop()
	e.start("127.0.0.1:0")
	if code, raw := key.do("GET", "/api/steps/"+byKey.ID, nil); code != http.StatusOK {
		t.Fatalf("after a restart: %d %s", code, raw)
	}
	// Revoked: refused at once, right after a successful request.
	if code, raw := admin.do("DELETE", "/api/keys/"+ci.ID, nil); code != http.StatusNoContent {
		t.Fatalf("revoke: %d %s", code, raw)
	}
	if code, raw := key.do("GET", "/api/steps", nil); code != http.StatusUnauthorized {
		t.Errorf("a revoked key: %d %s, want 401", code, raw)
	}
	if code, raw := admin.do("DELETE", "/api/keys/"+ci.ID, nil); code != http.StatusNotFound {
		t.Errorf("revoke again: %d %s, want 404", code, raw)
	}
	if keys := listed(); len(keys) != 0 {
		t.Errorf("listed after revocation: %+v", keys)
	}
}

// A submitter cancels the steps it submitted, not another's; an admin
// cancels any.
func TestSubmitterCancelsOnlyItsOwnSteps(t *testing.T) {
	e := newEnv(t)
	admin := e.api()
	teamA := admin.as(admin.createKey("team-a", server.RoleSubmitter).Key)
	teamB := admin.as(admin.createKey("team-b", server.RoleSubmitter).Key)
	stepA := teamA.submit(map[string]any{"pool": "nowhere"}, numbered(1, "0"))
	stepB := teamB.submit(map[string]any{"pool": "nowhere"}, numbered(1, "0"))
	byAdmin := admin.submit(map[string]any{"pool": "nowhere"}, numbered(1, "0"))
	tests := []struct {
		name string
		by   *api
		step string
		want int
	}{
		{"another team's step", teamA, stepB.ID, http.StatusForbidden},
		{"the admin's step", teamA, byAdmin.ID, http.StatusForbidden},
		{"its own step", teamA, stepA.ID, http.StatusAccepted},
		{"the admin, another's step", admin, stepB.ID, http.StatusAccepted},
		{"an unknown step", teamA, "s-no-such-step", http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, b := tt.by.do("POST", "/api/steps/"+tt.step+"/cancel", nil)
			if code != tt.want {
				t.Fatalf("%d %s, want %d", code, b, tt.want)
			}
			if code == http.StatusForbidden && !strings.Contains(string(b), "only its own steps") {
				t.Errorf("403 %s does not say why", b)
			}
		})
	}
	if v := admin.step(byAdmin.ID); v.State != server.StateQueued {
		t.Errorf("the admin's step is %s after a refused cancel", v.State)
	}
	// A new key under a revoked key's name is another key: not its steps.
	stepB2 := teamB.submit(map[string]any{"pool": "nowhere"}, numbered(1, "0"))
	var keys []server.APIKey
	_, raw := admin.do("GET", "/api/keys", nil)
	json.Unmarshal(raw, &keys)
	for _, k := range keys {
		if k.Name == "team-b" {
			admin.do("DELETE", "/api/keys/"+k.ID, nil)
		}
	}
	teamB2 := admin.as(admin.createKey("team-b", server.RoleSubmitter).Key)
	if code, b := teamB2.do("POST", "/api/steps/"+stepB2.ID+"/cancel", nil); code != http.StatusForbidden {
		t.Errorf("a new key named like a revoked one cancelled its step: %d %s", code, b)
	}
}

// A key made with expires_in works until then, and is refused from then
// on saying it expired; a bad expires_in is refused at creation.
func TestAPIKeyExpiry(t *testing.T) {
	e := newEnv(t)
	admin := e.api()
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	var offset atomic.Int64
	server.SetKeyClock(e.srv, func() time.Time { return t0.Add(time.Duration(offset.Load())) })
	code, raw := admin.do("POST", "/api/keys", server.CreateKeyBody{Name: "temp", Role: server.RoleReader, ExpiresIn: "1h"})
	var k server.NewAPIKey
	if code != http.StatusCreated || json.Unmarshal(raw, &k) != nil || !k.ExpiresAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("create: %d %s", code, raw)
	}
	temp := admin.as(k.Key)
	tests := []struct {
		name  string
		after time.Duration
		want  int
	}{
		{"just made", 0, http.StatusOK},
		{"a second before", time.Hour - time.Second, http.StatusOK},
		{"at its expiry", time.Hour, http.StatusUnauthorized},
		{"long after", 48 * time.Hour, http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			offset.Store(int64(tt.after))
			code, b := temp.do("GET", "/api/steps", nil)
			if code != tt.want {
				t.Fatalf("%d %s, want %d", code, b, tt.want)
			}
			if code == http.StatusUnauthorized && !strings.Contains(string(b), "expired") {
				t.Errorf("401 %s does not say the key expired", b)
			}
		})
	}
	for _, bad := range []string{"soon", "-1h", "0s"} {
		if code, b := admin.do("POST", "/api/keys", server.CreateKeyBody{Name: "bad", Role: server.RoleReader, ExpiresIn: bad}); code != http.StatusBadRequest {
			t.Errorf("expires_in %q: %d %s, want 400", bad, code, b)
		}
	}
}
