package server_test

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"stevedore/server"
)

// webClient is a browser's view of the server without a browser: a
// cookie jar, the session's CSRF token, and the headers a page's fetch has.
type webClient struct {
	t    *testing.T
	base string
	c    *http.Client
	csrf string
}

func newWebClient(t *testing.T, base string, c *http.Client) *webClient {
	jar, _ := cookiejar.New(nil)
	if c == nil {
		c = &http.Client{}
	}
	c.Jar = jar
	return &webClient{t: t, base: base, c: c}
}

// do sends a request; with csrf its session's token; headers are extra ones.
func (w *webClient) do(method, path string, body any, csrf bool, headers ...string) (*http.Response, []byte) {
	w.t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, w.base+path, r)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if csrf {
		req.Header.Set(server.CSRFHeader, w.csrf)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := w.c.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func (w *webClient) login(body map[string]string) *http.Response {
	w.t.Helper()
	resp, b := w.do("POST", "/web/login", body, false)
	if resp.StatusCode != http.StatusOK {
		w.t.Fatalf("sign-in: %d %s", resp.StatusCode, b)
	}
	var info server.SessionInfo
	if err := json.Unmarshal(b, &info); err != nil || info.CSRFToken == "" {
		w.t.Fatalf("sign-in answer %s: %v", b, err)
	}
	w.csrf = info.CSRFToken
	return resp
}

func sessionCookie(t *testing.T, resp *http.Response) *http.Cookie {
	t.Helper()
	for _, c := range resp.Cookies() {
		if c.Name == server.SessionCookie {
			return c
		}
	}
	t.Fatalf("no %s cookie in %v", server.SessionCookie, resp.Header["Set-Cookie"])
	return nil
}

// TestWebSession: the cookie's attributes, the CSRF token on the API's
// state-changing routes and on sign-out, sign-ins from elsewhere refused.
func TestWebSession(t *testing.T) {
	e := newEnv(t)
	a := e.api()
	w := newWebClient(t, a.base, nil)

	for _, c := range []struct {
		name    string
		body    any
		headers []string
		want    int
	}{
		{"wrong password", map[string]string{"username": adminUser, "password": "wrong"}, nil, http.StatusUnauthorized},
		{"unknown key", map[string]string{"key": "sdk_nothing"}, nil, http.StatusUnauthorized},
		{"nothing", map[string]string{}, nil, http.StatusBadRequest},
		{"another site's page", map[string]string{"username": adminUser, "password": adminPassword}, []string{"Origin", "https://evil.example"}, http.StatusForbidden},
		{"another site's fetch", map[string]string{"username": adminUser, "password": adminPassword}, []string{"Sec-Fetch-Site", "cross-site"}, http.StatusForbidden},
	} {
		if resp, b := w.do("POST", "/web/login", c.body, false, c.headers...); resp.StatusCode != c.want {
			t.Errorf("sign-in, %s: %d %s, want %d", c.name, resp.StatusCode, b, c.want)
		}
	}
	// A form another site posts is not JSON.
	req, _ := http.NewRequest("POST", a.base+"/web/login", strings.NewReader("username=admin&password="+adminPassword))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("a form sign-in: %v %v, want 415", resp.StatusCode, err)
	}

	c := sessionCookie(t, w.login(map[string]string{"username": adminUser, "password": adminPassword}))
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure || c.Path != "/" {
		t.Errorf("the session cookie over plain HTTP: %+v", c)
	}

	// The API takes the cookie: reads need nothing more...
	if resp, b := w.do("GET", "/api/steps", nil, false); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/steps with the session: %d %s", resp.StatusCode, b)
	}
	// ...state-changing requests need the token.
	v := a.submit(map[string]any{"worker": "nobody"}, numbered(1, "0"))
	if resp, b := w.do("POST", "/api/steps/"+v.ID+"/cancel", nil, false); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a cancel without the CSRF token: %d %s, want 403", resp.StatusCode, b)
	}
	token := w.csrf
	w.csrf = "wrong"
	if resp, b := w.do("POST", "/api/steps/"+v.ID+"/cancel", nil, true); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a cancel with a wrong CSRF token: %d %s, want 403", resp.StatusCode, b)
	}
	if a.step(v.ID).State == server.StateComplete {
		t.Fatal("a refused cancel cancelled")
	}
	w.csrf = token
	if resp, b := w.do("POST", "/api/steps/"+v.ID+"/cancel", nil, true); resp.StatusCode != http.StatusAccepted {
		t.Errorf("a cancel with the CSRF token: %d %s, want 202", resp.StatusCode, b)
	}
	if resp, b := w.do("GET", "/web/session", nil, false); resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"role": "admin"`) {
		t.Errorf("GET /web/session: %d %s", resp.StatusCode, b)
	}

	// Sign-out needs the token too, and ends the session for the API.
	if resp, _ := w.do("POST", "/web/logout", nil, false); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a sign-out without the CSRF token: %d, want 403", resp.StatusCode)
	}
	if resp, _ := w.do("POST", "/web/logout", nil, true); resp.StatusCode != http.StatusNoContent || sessionCookie(t, resp).MaxAge >= 0 {
		t.Errorf("sign-out: %d %v", resp.StatusCode, resp.Header["Set-Cookie"])
	}
	if resp, _ := w.do("GET", "/api/steps", nil, false, "Cookie", server.SessionCookie+"="+c.Value); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the API with a signed-out session: %d, want 401", resp.StatusCode)
	}
}

// TestWebSessionOfAKey: a key's session has the key's role, and ends when
// the key is revoked.
func TestWebSessionOfAKey(t *testing.T) {
	e := newEnv(t)
	a := e.api()
	code, b := a.do("POST", "/api/keys", map[string]any{"name": "dash", "role": "reader"})
	var key server.NewAPIKey
	if code != http.StatusCreated || json.Unmarshal(b, &key) != nil {
		t.Fatalf("a key: %d %s", code, b)
	}
	w := newWebClient(t, a.base, nil)
	w.login(map[string]string{"key": key.Key})
	if resp, b := w.do("GET", "/api/steps", nil, false); resp.StatusCode != http.StatusOK {
		t.Fatalf("a reader's read: %d %s", resp.StatusCode, b)
	}
	if resp, b := w.do("POST", "/api/keys", map[string]any{"name": "mine", "role": "admin"}, true); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a reader's session making a key: %d %s, want 403", resp.StatusCode, b)
	}
	if code, b := a.do("DELETE", "/api/keys/"+key.ID, nil); code != http.StatusNoContent {
		t.Fatalf("revoke: %d %s", code, b)
	}
	if resp, b := w.do("GET", "/api/steps", nil, false); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the session of a revoked key: %d %s, want 401", resp.StatusCode, b)
	}
}

// Under --http-tls the cookie is Secure.
func TestWebSessionCookieSecureOverTLS(t *testing.T) {
	e := newEnv(t)
	h := httptest.NewTLSServer(e.srv.Handler())
	t.Cleanup(h.Close)
	w := newWebClient(t, h.URL, &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}})
	if c := sessionCookie(t, w.login(map[string]string{"username": adminUser, "password": adminPassword})); !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
		t.Errorf("the session cookie over TLS: %+v", c)
	}
}

// The page: its own files only (no inline script, a Content-Security-Policy
// that allows no other), and a page's fetch gets no Basic challenge, which
// would open the browser's own password dialog.
func TestWebPageHeaders(t *testing.T) {
	e := newEnv(t)
	a := e.api()
	w := newWebClient(t, a.base, nil)
	for _, path := range []string{"/steps", "/steps/s1", "/workers", "/login", "/ui/app.js", "/ui/app.css"} {
		resp, b := w.do("GET", path, nil, false)
		csp := resp.Header.Get("Content-Security-Policy")
		if resp.StatusCode != http.StatusOK || !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") ||
			resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: %d, CSP %q", path, resp.StatusCode, csp)
		}
		if strings.HasSuffix(path, ".js") || strings.HasSuffix(path, ".css") {
			continue
		}
		for _, tag := range regexp.MustCompile(`<script[^>]*>`).FindAllString(string(b), -1) {
			if !strings.Contains(tag, `src="/ui/`) {
				t.Errorf("GET %s: an inline script %s", path, tag)
			}
		}
	}
	if resp, _ := w.do("GET", "/", nil, false); resp.Request.URL.Path != "/steps" {
		t.Errorf("GET / led to %s", resp.Request.URL)
	}
	resp, _ := w.do("GET", "/api/steps", nil, false, "Sec-Fetch-Mode", "cors")
	if resp.StatusCode != http.StatusUnauthorized || strings.Contains(strings.Join(resp.Header.Values("WWW-Authenticate"), ","), "Basic") {
		t.Errorf("a page's fetch without a session: %d %v", resp.StatusCode, resp.Header.Values("WWW-Authenticate"))
	}
	resp, _ = w.do("GET", "/api/steps", nil, false)
	if !strings.Contains(strings.Join(resp.Header.Values("WWW-Authenticate"), ","), "Basic") {
		t.Errorf("curl without credentials: %v, want a Basic challenge", resp.Header.Values("WWW-Authenticate"))
	}
}

// GET /api/steps?limit=N&offset=M: a page, newest first, and the total.
func TestAPIStepsPaged(t *testing.T) {
	e := newEnv(t)
	a := e.api()
	var ids []string
	for range 7 {
		ids = append(ids, a.submit(map[string]any{"worker": "nobody"}, numbered(1, "0")).ID)
	}
	page := func(q string) ([]string, string) {
		t.Helper()
		w := newWebClient(t, a.base, nil)
		resp, b := w.do("GET", "/api/steps?"+q, nil, false, "Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(adminUser+":"+adminPassword)))
		var steps []server.StepView
		if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &steps) != nil {
			t.Fatalf("GET /api/steps?%s: %d %s", q, resp.StatusCode, b)
		}
		var got []string
		for _, s := range steps {
			got = append(got, s.ID)
		}
		return got, resp.Header.Get("X-Total-Count")
	}
	want := func(idx ...int) []string {
		var out []string
		for _, i := range idx {
			out = append(out, ids[i])
		}
		return out
	}
	for _, c := range []struct {
		q     string
		want  []string
		total string
	}{
		{"limit=3", want(6, 5, 4), "7"},
		{"limit=3&offset=3", want(3, 2, 1), "7"},
		{"limit=3&offset=6", want(0), "7"},
		{"limit=3&offset=9", nil, "7"},
		{"limit=3&state=running", nil, "0"},
		{"limit=2&state=queued", want(6, 5), "7"},
		{"", want(0, 1, 2, 3, 4, 5, 6), ""}, // without limit: every step, oldest first, as before
	} {
		got, total := page(c.q)
		if strings.Join(got, ",") != strings.Join(c.want, ",") || total != c.total {
			t.Errorf("?%s: %v (total %q), want %v (total %q)", c.q, got, total, c.want, c.total)
		}
	}
}
