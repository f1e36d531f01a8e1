package server

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// The web page: plain HTML, CSS and JavaScript embedded in the binary, so
// that a fresh machine serves it with no front-end build. Its script talks
// to the JSON API with the session cookie this file hands out.
//
//	GET  /                      redirect to /steps
//	GET  /steps, /steps/{id}, /workers, /login   the page (index.html); its script routes
//	GET  /ui/...                the page's script, style sheet and icon
//	POST /web/login             {"username","password"} or {"key"}: a session cookie
//	GET  /web/session           who the session is (the admin's email too), its role and its CSRF token
//	POST /web/logout            end the session (needs the CSRF token)

//go:embed web
var webFiles embed.FS

// SessionCookie names the web page's session cookie.
const SessionCookie = "stevedore_session"

// CSRFHeader carries a session's CSRF token on every state-changing
// request the page makes (the API's POST and DELETE routes, sign-out).
const CSRFHeader = "X-CSRF-Token"

// sessionTTL bounds a session's life: a browser left signed in on a
// shared machine is not signed in for ever.
const sessionTTL = 12 * time.Hour

// maxSessions bounds the sessions kept in memory; past it the oldest go.
const maxSessions = 10000

// webCSP allows nothing from elsewhere and no inline script or style:
// what the page runs is only what the binary embeds.
const webCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Errors of the web sessions; test with errors.Is.
var (
	// ErrBadCSRF: a state-changing request on a session lacks its CSRF token.
	ErrBadCSRF = errors.New("missing or wrong CSRF token (" + CSRFHeader + " header)")
	// ErrSessionExpired: the session cookie names no live session.
	ErrSessionExpired = errors.New("the session has ended (signed out, expired, or the server restarted): sign in again")
	// errCrossOrigin: a sign-in from another site's page.
	errCrossOrigin = errors.New("cross-origin sign-in refused")
)

// webSession is one signed-in browser. Sessions live in the server's
// memory only: a restart signs everyone out, and nothing of them is on
// disk to steal. The cookie holds a random token; the map is keyed by its
// SHA-256, so even a heap dump does not give a usable cookie away.
type webSession struct {
	p principal
	// keyHash is the API key's hash for a session opened with a key: the
	// key is looked up again on every request, so revoking it (or its
	// expiry) ends its sessions at once.
	keyHash [32]byte
	csrf    string
	created time.Time
	expires time.Time
}

type webSessions struct {
	mu sync.Mutex
	m  map[[32]byte]*webSession
}

func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("session token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// open stores a new session for p and returns its cookie token.
func (ws *webSessions) open(p principal, keyHash [32]byte) (string, *webSession, error) {
	token, err := randomToken()
	if err != nil {
		return "", nil, err
	}
	csrf, err := randomToken()
	if err != nil {
		return "", nil, err
	}
	now := time.Now()
	sess := &webSession{p: p, keyHash: keyHash, csrf: csrf, created: now, expires: now.Add(sessionTTL)}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.m == nil {
		ws.m = map[[32]byte]*webSession{}
	}
	ws.sweepLocked(now)
	ws.m[sha256.Sum256([]byte(token))] = sess
	return token, sess, nil
}

// sweepLocked drops the expired sessions and, past maxSessions, the oldest.
func (ws *webSessions) sweepLocked(now time.Time) {
	var oldest [32]byte
	var oldestAt time.Time
	for k, s := range ws.m {
		if !now.Before(s.expires) {
			delete(ws.m, k)
			continue
		}
		if oldestAt.IsZero() || s.created.Before(oldestAt) {
			oldest, oldestAt = k, s.created
		}
	}
	if len(ws.m) >= maxSessions {
		delete(ws.m, oldest)
	}
}

func (ws *webSessions) get(token string) (*webSession, bool) {
	k := sha256.Sum256([]byte(token))
	ws.mu.Lock()
	defer ws.mu.Unlock()
	s, ok := ws.m[k]
	if ok && !time.Now().Before(s.expires) {
		delete(ws.m, k)
		return nil, false
	}
	return s, ok
}

func (ws *webSessions) close(token string) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	delete(ws.m, sha256.Sum256([]byte(token)))
}

// safeMethod: a request that changes nothing, which needs no CSRF token.
func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// sessionPrincipal authenticates a request by its session cookie: the
// session's principal, after the CSRF token for a state-changing request,
// and the API key, for a key's session, checked again.
func (s *Server) sessionPrincipal(r *http.Request, token string) (principal, error) {
	sess, ok := s.web.get(token)
	if !ok {
		return principal{}, ErrSessionExpired
	}
	if !safeMethod(r.Method) && subtle.ConstantTimeCompare([]byte(r.Header.Get(CSRFHeader)), []byte(sess.csrf)) != 1 {
		s.log.Warn("web request without its csrf token", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "principal", sess.p.Name)
		return principal{}, ErrBadCSRF
	}
	if sess.p.KeyID != "" {
		stored, err := s.db.APIKeyByHash(sess.keyHash)
		if err != nil {
			s.web.close(token)
			return principal{}, fmt.Errorf("%w: %w", ErrSessionExpired, ErrBadKey)
		}
		if k := apiKeyOf(stored); !k.ExpiresAt.IsZero() && !s.clock().Before(k.ExpiresAt) {
			s.web.close(token)
			return principal{}, fmt.Errorf("%w: %w", ErrSessionExpired, ErrKeyExpired)
		}
	}
	return sess.p, nil
}

// webRoutes adds the page and its session routes to mux.
func (s *Server) webRoutes(mux *http.ServeMux) {
	assets, err := fs.Sub(webFiles, "web")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	index, err := fs.ReadFile(assets, "index.html")
	if err != nil {
		panic(err)
	}
	page := func(w http.ResponseWriter, _ *http.Request) {
		webHeaders(w)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		w.Write(index)
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/steps", http.StatusFound) })
	for _, p := range []string{"GET /steps", "GET /steps/{id}", "GET /workers", "GET /login"} {
		mux.HandleFunc(p, page)
	}
	files := http.StripPrefix("/ui/", http.FileServerFS(assets))
	mux.Handle("GET /ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		webHeaders(w)
		// The files carry no modification time: the browser asks each time,
		// which costs little for three small files and never serves an old
		// script after an upgrade.
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	}))
	mux.HandleFunc("POST /web/login", s.webLogin)
	mux.Handle("GET /web/session", s.authenticated(http.HandlerFunc(s.webSessionInfo)))
	mux.HandleFunc("POST /web/logout", s.webLogout)
}

func webHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", webCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Frame-Options", "DENY")
}

// LoginBody is the body of POST /web/login: the admin's username and
// password, or an API key.
type LoginBody struct {
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	Key      string `json:"key,omitempty"`
}

// SessionInfo is the answer of POST /web/login and GET /web/session.
type SessionInfo struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
	// KeyID is the API key's ID for a key's session: the page compares it
	// with a step's submitter_key to offer a submitter the cancel of its
	// own steps only (the API decides anyway).
	KeyID string `json:"key_id,omitempty"`
	// Email is the admin's address (ADMIN_EMAIL), when one was given; an
	// API key has none.
	Email     string    `json:"email,omitempty"`
	CSRFToken string    `json:"csrf_token,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// sameOrigin refuses a sign-in posted from another site's page (login
// CSRF: the victim signed in as the attacker). Browsers send Origin on
// every POST; a client without it (curl) is no browser to trick.
func sameOrigin(r *http.Request) error {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return fmt.Errorf("%w: Sec-Fetch-Site %s", errCrossOrigin, site)
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return nil
	}
	u, err := url.Parse(o)
	if err != nil || u.Host != r.Host {
		return fmt.Errorf("%w: Origin %s, host %s", errCrossOrigin, o, r.Host)
	}
	return nil
}

func (s *Server) webLogin(w http.ResponseWriter, r *http.Request) {
	if err := sameOrigin(r); err != nil {
		apiError(w, http.StatusForbidden, err)
		return
	}
	// JSON only: a form another site posts cannot be JSON without a CORS
	// preflight, which this server never grants.
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		apiError(w, http.StatusUnsupportedMediaType, errors.New("sign-in wants a JSON body"))
		return
	}
	var body LoginBody
	if !decodeBody(w, r, 1<<16, &body) {
		return
	}
	var p principal
	var keyHash [32]byte
	switch {
	case body.Key != "":
		k, err := s.AuthenticateKey(strings.TrimSpace(body.Key))
		if err != nil {
			s.log.Warn("web sign-in with a bad key", "remote", r.RemoteAddr)
			apiError(w, http.StatusUnauthorized, err)
			return
		}
		p, keyHash = principal{Name: "key:" + k.Name, Role: k.Role, KeyID: k.ID}, sha256.Sum256([]byte(strings.TrimSpace(body.Key)))
	case body.Username != "":
		if err := s.Authenticate(body.Username, body.Password); err != nil {
			s.log.Warn("web sign-in with bad credentials", "remote", r.RemoteAddr, "username", body.Username)
			apiError(w, http.StatusUnauthorized, err)
			return
		}
		p = principal{Name: body.Username, Role: RoleAdmin}
	default:
		apiError(w, http.StatusBadRequest, errors.New("sign-in wants a username and password, or an API key"))
		return
	}
	token, sess, err := s.web.open(p, keyHash)
	if err != nil {
		apiError(w, http.StatusInternalServerError, err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil, MaxAge: int(sessionTTL / time.Second)})
	s.log.Info("web sign-in", "principal", p.Name, "role", p.Role, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, s.sessionInfo(sess))
}

func (s *Server) sessionInfo(sess *webSession) SessionInfo {
	info := s.principalInfo(sess.p)
	info.CSRFToken, info.ExpiresAt = sess.csrf, sess.expires.UTC()
	return info
}

// principalInfo says who p is; for the admin, with the email stored with
// its credentials. The email is read at each ask, not kept in the session:
// it is the store's to say.
func (s *Server) principalInfo(p principal) SessionInfo {
	info := SessionInfo{Name: p.Name, Role: p.Role, KeyID: p.KeyID}
	if p.KeyID == "" {
		c, err := s.db.User(p.Name)
		if err != nil {
			// Who the session is stands without it.
			s.log.Warn("cannot read the admin's email", "username", p.Name, "error", err)
		}
		info.Email = c.Email
	}
	return info
}

// webSessionInfo says who is signed in; with a session, its CSRF token,
// which only a page of this origin can read (no CORS).
func (s *Server) webSessionInfo(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(SessionCookie); err == nil && r.Header.Get("Authorization") == "" {
		if sess, ok := s.web.get(c.Value); ok {
			writeJSON(w, http.StatusOK, s.sessionInfo(sess))
			return
		}
	}
	writeJSON(w, http.StatusOK, s.principalInfo(principalOf(r)))
}

func (s *Server) webLogout(w http.ResponseWriter, r *http.Request) {
	c, err := r.Cookie(SessionCookie)
	if err == nil {
		if _, err := s.sessionPrincipal(r, c.Value); errors.Is(err, ErrBadCSRF) {
			apiError(w, http.StatusForbidden, err)
			return
		}
		if sess, ok := s.web.get(c.Value); ok {
			s.log.Info("web sign-out", "principal", sess.p.Name)
		}
		s.web.close(c.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil, MaxAge: -1})
	w.WriteHeader(http.StatusNoContent)
}

// endedIn names the stage a completed step ended in, for the page's
// "ended in" line: the queue (never dispatched), the image (pull or
// probe), the isolation wait, the worker (lost, agent error) or the
// script (its exit, a cancel or timeout while it ran).
func endedIn(rec StepRecord) string {
	if rec.State != StateComplete {
		return ""
	}
	switch {
	case rec.StartedAt.IsZero():
		return "queue"
	case rec.Outcome == "PULL_FAILED" || rec.Outcome == "IMAGE_REJECTED":
		return "image"
	case rec.Outcome == "ISOLATION_TIMEOUT":
		return "isolation"
	case rec.Outcome == "LOST" || rec.Outcome == "AGENT_ERROR":
		return "worker"
	}
	return "script"
}
