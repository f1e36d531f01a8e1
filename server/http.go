package server

import (
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	pb "stevedore/proto/stevedore/v1"
)

// maxSubmitBytes bounds a submission's body; the agent's own limits on
// scripts and inline files are lower.
const maxSubmitBytes = 64 << 20

// maxLogWait bounds a log request's long poll.
const maxLogWait = 60 * time.Second

// Handler is the HTTP API (JSON) and the web page (web.go). Every API route
// but /healthz and /metrics needs credentials: an API key ("Authorization:
// Bearer KEY"), the admin's username and password (HTTP Basic), or the web
// page's session cookie, with its CSRF token on a state-changing request
// (else 403); without them the answer is 401. Each
// route needs a role (reader, submitter or admin, each allowed what the
// ones before it are); a key without it gets 403. The admin user is admin.
//
//	GET  /healthz                          200 "ok"
//	GET  /api/trust                        admin      the agent thumbprints admitted
//	POST /api/trust                        admin      {"thumbprint"}: admit polling agents with it (durable);
//	                                                  also with "Authorization: Bearer REGISTRATION_TOKEN"
//	DELETE /api/trust/{thumbprint}         admin      stop admitting it; its connections are closed
//	GET  /api/workers                      reader     the workers and their state
//	POST /api/workers                      admin      {"name","address","thumbprint"}: register a listening worker
//	DELETE /api/workers/{name}             admin      forget a worker that is not connected; its steps end LOST
//	GET  /api/steps                        reader     every step (?state=queued|running|complete); ?limit=N&offset=M: a page, newest first
//	POST /api/steps                        submitter  {"worker"|"pool", "key"?, "step": StartStepRequest as protobuf JSON}
//	GET  /api/steps/{id}                   reader     the step
//	GET  /api/steps/{id}/log               reader     ?after=N&max=N&wait=30s: lines after N, long-polled
//	GET  /api/steps/{id}/log?format=text   reader     the log as text; &follow=true streams it to the end
//	GET  /api/steps/{id}/artifacts/{name}  reader     an artifact's content
//	GET  /api/steps/{id}/outputs           submitter  its output variables with sensitive values: its submitter's or an admin's
//	POST /api/steps/{id}/cancel            submitter  cancel the step
//	GET  /api/keys                         admin      the API keys, without their secrets
//	POST /api/keys                         admin      {"name","role"}: a new key; its secret is in this answer only
//	DELETE /api/keys/{id}                  admin      revoke the key at once
//	GET  /api/backup                       admin      a consistent copy of the database, taken live
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.Handle("GET /metrics", s.MetricsHandler()) // no credentials, as Prometheus scrapes
	api := http.NewServeMux()
	route := func(pattern string, need Role, h http.HandlerFunc) { api.Handle(pattern, allowed(need, h)) }
	route("GET /api/workers", RoleReader, s.apiWorkers)
	route("POST /api/workers", RoleAdmin, s.apiRegisterWorker)
	route("DELETE /api/workers/{name}", RoleAdmin, s.apiForgetWorker)
	route("GET /api/steps", RoleReader, s.apiSteps)
	route("POST /api/steps", RoleSubmitter, s.apiSubmit)
	route("GET /api/steps/{id}", RoleReader, s.apiStep)
	route("GET /api/steps/{id}/log", RoleReader, s.apiLog)
	route("GET /api/steps/{id}/artifacts/{name}", RoleReader, s.apiArtifact)
	route("GET /api/steps/{id}/outputs", RoleSubmitter, s.apiOutputs)
	route("POST /api/steps/{id}/cancel", RoleSubmitter, s.apiCancel)
	route("GET /api/trust", RoleAdmin, func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, s.Trusted()) })
	route("POST /api/trust", RoleAdmin, s.apiTrust)
	route("DELETE /api/trust/{thumbprint}", RoleAdmin, s.apiDistrust)
	route("GET /api/keys", RoleAdmin, func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, s.APIKeys()) })
	route("POST /api/keys", RoleAdmin, s.apiCreateKey)
	route("DELETE /api/keys/{id}", RoleAdmin, s.apiRevokeKey)
	route("GET /api/backup", RoleAdmin, s.apiBackup)
	authed := s.authenticated(api)
	mux.Handle("/api/", authed)
	// More specific than /api/: an agent with the registration token may
	// add a thumbprint too.
	mux.Handle("POST /api/trust", s.registering(http.HandlerFunc(s.apiTrust), authed))
	s.webRoutes(mux)
	return mux
}

// registering serves a request bearing the registration token with next,
// and any other with otherwise. An API key is never taken for the token:
// it goes to otherwise, whatever its role.
func (s *Server) registering(next, otherwise http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || s.cfg.RegistrationToken == "" {
			otherwise.ServeHTTP(w, r)
			return
		}
		if subtle.ConstantTimeCompare([]byte(token), []byte(s.cfg.RegistrationToken)) == 1 {
			next.ServeHTTP(w, r)
			return
		}
		if strings.HasPrefix(token, APIKeyPrefix) {
			otherwise.ServeHTTP(w, r)
			return
		}
		s.log.Warn("registration with a bad token", "remote", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="stevedore"`)
		apiError(w, http.StatusUnauthorized, errors.New("bad registration token"))
	})
}

// principal is who made a request, and their role.
type principal struct {
	// Name is the admin's username, or "key:NAME" for an API key.
	Name string
	Role Role
	// KeyID is the API key's ID; a name may be reused after a revocation,
	// an ID never.
	KeyID string
}

type principalKey struct{}

// errNoCredentials: the request has neither a bearer token nor Basic auth.
var errNoCredentials = errors.New("authentication required: an API key (Authorization: Bearer KEY) or the admin username and password (HTTP Basic)")

// authenticated serves next with the request's principal in its context,
// or answers 401.
func (s *Server) authenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := s.authenticate(r)
		if errors.Is(err, ErrBadCSRF) {
			apiError(w, http.StatusForbidden, err)
			return
		}
		if err != nil {
			// A script's request (the web page's fetch) gets no Basic
			// challenge: the browser would hold it for its own password
			// dialog rather than let the page show its sign-in.
			if m := r.Header.Get("Sec-Fetch-Mode"); m == "" || m == "navigate" {
				w.Header().Add("WWW-Authenticate", `Basic realm="stevedore", charset="UTF-8"`)
			}
			w.Header().Add("WWW-Authenticate", `Bearer realm="stevedore"`)
			apiError(w, http.StatusUnauthorized, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}

func (s *Server) authenticate(r *http.Request) (principal, error) {
	if token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		k, err := s.AuthenticateKey(token)
		if err != nil {
			s.log.Warn("api request with a bad key", "remote", r.RemoteAddr, "path", r.URL.Path)
			return principal{}, err
		}
		return principal{Name: "key:" + k.Name, Role: k.Role, KeyID: k.ID}, nil
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		// The web page's session (web.go), when neither is given.
		if c, err := r.Cookie(SessionCookie); err == nil {
			return s.sessionPrincipal(r, c.Value)
		}
		return principal{}, errNoCredentials
	}
	if err := s.Authenticate(user, pass); err != nil {
		s.log.Warn("api request with bad credentials", "remote", r.RemoteAddr, "username", user, "path", r.URL.Path)
		return principal{}, err
	}
	return principal{Name: user, Role: RoleAdmin}, nil
}

// principalOf is the request's principal, put there by authenticated.
func principalOf(r *http.Request) principal {
	p, _ := r.Context().Value(principalKey{}).(principal)
	return p
}

// allowed serves next if the request's principal has the role need, and
// answers 403 otherwise.
func allowed(need Role, next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := principalOf(r); !p.Role.allows(need) {
			apiError(w, http.StatusForbidden, fmt.Errorf("%s %s needs the %s role; %s has the %s role", r.Method, r.URL.Path, need, p.Name, p.Role))
			return
		}
		next(w, r)
	})
}

// StepView is a step as the API shows it: neither the sealed request nor
// the sealed output variables, whose values it shows as SensitiveMask.
type StepView struct {
	StepRecord
	// WaitingFor says why a queued step is not running yet.
	WaitingFor string `json:"waiting_for,omitempty"`
	// EndedIn names the stage a completed step ended in: queue, image,
	// isolation, worker or script.
	EndedIn string `json:"ended_in,omitempty"`
	Log     string `json:"log"`
}

func (s *Server) view(rec StepRecord) StepView {
	rec.Sealed, rec.SealedOutputs = nil, nil
	v := StepView{StepRecord: rec, EndedIn: endedIn(rec), Log: "/api/steps/" + rec.ID + "/log"}
	if rec.State == StateQueued {
		v.WaitingFor = s.waitingFor(rec.ID)
	}
	return v
}

// SubmitBody is the body of POST /api/steps.
type SubmitBody struct {
	Worker string `json:"worker,omitempty"`
	Pool   string `json:"pool,omitempty"`
	// Labels a worker must all have (see SubmitRequest.Labels).
	Labels map[string]string `json:"labels,omitempty"`
	// QueueTimeout, a duration such as "10m", ends the step TIMED_OUT if
	// no worker takes it in time (see SubmitRequest.QueueTimeout).
	QueueTimeout string `json:"queue_timeout,omitempty"`
	// Key makes the submission idempotent (see SubmitRequest.Key).
	Key  string          `json:"key,omitempty"`
	Step json.RawMessage `json:"step"`
}

func (s *Server) apiSubmit(w http.ResponseWriter, r *http.Request) {
	var body SubmitBody
	if !decodeBody(w, r, maxSubmitBytes, &body) {
		return
	}
	if len(body.Step) == 0 {
		apiError(w, http.StatusBadRequest, errors.New(`body: "step" is missing`))
		return
	}
	queueTimeout, err := optionalDuration("queue_timeout", body.QueueTimeout, "10m")
	if err != nil {
		apiError(w, http.StatusBadRequest, err)
		return
	}
	step := &pb.StartStepRequest{}
	if err := protojson.Unmarshal(body.Step, step); err != nil {
		apiError(w, http.StatusBadRequest, fmt.Errorf("step: %w", err))
		return
	}
	rec, err := s.Submit(SubmitRequest{Worker: body.Worker, Pool: body.Pool, Labels: body.Labels, QueueTimeout: queueTimeout, Step: step, Key: body.Key, SubmittedBy: principalOf(r).Name, SubmitterKey: principalOf(r).KeyID})
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, ErrNoTarget) {
			code = http.StatusBadRequest
		}
		apiError(w, code, err)
		return
	}
	w.Header().Set("Location", "/api/steps/"+rec.ID)
	writeJSON(w, http.StatusCreated, s.view(rec))
}

// apiSteps lists the steps, oldest first; with ?limit=N a page of them,
// newest first, after skipping ?offset=M, and X-Total-Count saying how
// many match in all, so that thousands of steps come a page at a time.
func (s *Server) apiSteps(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	state := q.Get("state")
	limit, err := uintParam(q.Get("limit"), 0)
	if err != nil {
		apiError(w, http.StatusBadRequest, fmt.Errorf("limit: %w", err))
		return
	}
	offset, err := uintParam(q.Get("offset"), 0)
	if err != nil {
		apiError(w, http.StatusBadRequest, fmt.Errorf("offset: %w", err))
		return
	}
	var matching []StepRecord
	if state == "" || state == StateQueued || state == StateRunning || state == StateComplete {
		matching = s.steps(state)
	}
	out := []StepView{}
	if limit == 0 {
		for _, rec := range matching {
			out = append(out, s.view(rec))
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	w.Header().Set("X-Total-Count", strconv.Itoa(len(matching)))
	for i := len(matching) - 1 - int(min(offset, uint64(len(matching)))); i >= 0 && uint64(len(out)) < limit; i-- {
		out = append(out, s.view(matching[i]))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) apiStep(w http.ResponseWriter, r *http.Request) {
	rec, ok := s.Step(r.PathValue("id"))
	if !ok {
		apiError(w, http.StatusNotFound, fmt.Errorf("%w: %s", ErrUnknownStep, r.PathValue("id")))
		return
	}
	writeJSON(w, http.StatusOK, s.view(rec))
}

// LogPage is the answer of GET /api/steps/{id}/log: the lines after the
// asked sequence, and the step as it stands. Ask again from Next until
// Step.State is complete and Lines is empty.
type LogPage struct {
	Lines []LogEntry `json:"lines"`
	Next  uint64     `json:"next_after"`
	Step  StepView   `json:"step"`
}

func (s *Server) apiLog(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after, err := uintParam(q.Get("after"), 0)
	if err != nil {
		apiError(w, http.StatusBadRequest, fmt.Errorf("after: %w", err))
		return
	}
	maxLines, err := uintParam(q.Get("max"), 5000)
	if err != nil || maxLines == 0 {
		apiError(w, http.StatusBadRequest, fmt.Errorf("max: want a positive number"))
		return
	}
	var wait time.Duration
	if v := q.Get("wait"); v != "" {
		if wait, err = time.ParseDuration(v); err != nil || wait < 0 {
			apiError(w, http.StatusBadRequest, fmt.Errorf("wait %q: want a duration such as 30s", v))
			return
		}
	}
	wait = min(wait, maxLogWait)
	id := r.PathValue("id")
	if q.Get("format") == "text" {
		s.textLog(w, r, id, after, q.Get("follow") == "true")
		return
	}
	lines, rec, err := s.Log(r.Context(), id, after, int(min(maxLines, 100000)), wait)
	if errors.Is(err, ErrUnknownStep) {
		apiError(w, http.StatusNotFound, err)
		return
	}
	if err != nil {
		apiError(w, http.StatusInternalServerError, err)
		return
	}
	page := LogPage{Lines: lines, Next: after, Step: s.view(rec)}
	if page.Lines == nil {
		page.Lines = []LogEntry{}
	}
	if n := len(lines); n > 0 {
		page.Next = lines[n-1].Sequence
	}
	writeJSON(w, http.StatusOK, page)
}

// textLog writes the task log as text, a line each, following it to the
// step's end if asked. Marks at a line's start say what is not an ordinary
// stdout line: "[stderr] ", "[stevedore] " (the agent's), then the level's,
// "[verbose] ", "[highlight] ", "[wait] ", "[warning] " or "[error] ". The
// pieces that continue a partial line get none, so the line reads whole;
// another source's line after a partial one starts on a line of its own.
func (s *Server) textLog(w http.ResponseWriter, r *http.Request, id string, after uint64, follow bool) {
	if _, ok := s.Step(id); !ok {
		apiError(w, http.StatusNotFound, fmt.Errorf("%w: %s", ErrUnknownStep, id))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	flusher, _ := w.(http.Flusher)
	lineStart := true // the next piece starts a line
	openSource := ""  // else, the source of the partial line it may continue
	for {
		wait := time.Duration(0)
		if follow {
			wait = maxLogWait
		}
		lines, rec, err := s.Log(r.Context(), id, after, 5000, wait)
		if err != nil {
			return
		}
		for _, l := range lines {
			if !lineStart && l.Source != openSource {
				// Another source's line does not continue this one.
				io.WriteString(w, "\n")
				lineStart = true
			}
			if lineStart {
				switch l.Source {
				case "stderr":
					io.WriteString(w, "[stderr] ")
				case "agent":
					io.WriteString(w, "[stevedore] ")
				}
				if l.Level != "" {
					io.WriteString(w, "["+l.Level+"] ")
				}
			}
			w.Write(l.Content())
			if !l.Partial {
				io.WriteString(w, "\n")
			}
			lineStart, openSource = !l.Partial, l.Source
			after = l.Sequence
		}
		if flusher != nil {
			flusher.Flush()
		}
		if len(lines) == 0 && (!follow || rec.State == StateComplete) {
			return
		}
	}
}

func (s *Server) apiArtifact(w http.ResponseWriter, r *http.Request) {
	rec, ok := s.Step(r.PathValue("id"))
	if !ok {
		apiError(w, http.StatusNotFound, fmt.Errorf("%w: %s", ErrUnknownStep, r.PathValue("id")))
		return
	}
	for _, a := range rec.Artifacts {
		if a.Name != r.PathValue("name") {
			continue
		}
		f, err := os.Open(a.File)
		if err != nil {
			apiError(w, http.StatusGone, fmt.Errorf("artifact %s: %w", a.Name, err))
			return
		}
		defer f.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", filepath.Base(a.File)))
		w.Header().Set("Digest", "sha-256="+a.SHA256)
		fi, err := f.Stat()
		if err != nil {
			apiError(w, http.StatusInternalServerError, err)
			return
		}
		http.ServeContent(w, r, filepath.Base(a.File), fi.ModTime(), f)
		return
	}
	apiError(w, http.StatusNotFound, fmt.Errorf("step %s has no artifact %q", rec.ID, r.PathValue("name")))
}

func (s *Server) apiCancel(w http.ResponseWriter, r *http.Request) {
	// A submitter cancels its own steps; another team's are not its to stop.
	p := principalOf(r)
	if rec, ok := s.Step(r.PathValue("id")); ok && !ownsStep(p, rec) {
		apiError(w, http.StatusForbidden, fmt.Errorf("step %s was submitted by %s: %s may cancel only its own steps (an admin may cancel any)", rec.ID, cmp.Or(rec.SubmittedBy, "an earlier server"), p.Name))
		return
	}
	rec, err := s.Cancel(r.PathValue("id"))
	switch {
	case errors.Is(err, ErrUnknownStep):
		apiError(w, http.StatusNotFound, err)
	case errors.Is(err, ErrStepComplete):
		apiError(w, http.StatusConflict, err)
	case err != nil:
		apiError(w, http.StatusInternalServerError, err)
	default:
		writeJSON(w, http.StatusAccepted, s.view(rec))
	}
}

func (s *Server) apiWorkers(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Workers())
}

// RegisterWorkerBody is the body of POST /api/workers.
type RegisterWorkerBody struct {
	Name       string `json:"name"`
	Address    string `json:"address"`
	Thumbprint string `json:"thumbprint"`
}

func (s *Server) apiRegisterWorker(w http.ResponseWriter, r *http.Request) {
	var body RegisterWorkerBody
	if !decodeBody(w, r, 1<<20, &body) {
		return
	}
	err := s.RegisterListening(body.Name, body.Address, body.Thumbprint)
	switch {
	case errors.Is(err, ErrWorkerExists):
		apiError(w, http.StatusConflict, err)
	case err != nil:
		apiError(w, http.StatusBadRequest, err)
	default:
		writeJSON(w, http.StatusCreated, body)
	}
}

// TrustBody is the body of POST /api/trust.
type TrustBody struct {
	Thumbprint string `json:"thumbprint"`
}

func (s *Server) apiTrust(w http.ResponseWriter, r *http.Request) {
	var body TrustBody
	if !decodeBody(w, r, 1<<20, &body) {
		return
	}
	tp, err := s.Trust(body.Thumbprint)
	if err != nil {
		apiError(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, http.StatusCreated, TrustBody{Thumbprint: tp})
}

func (s *Server) apiDistrust(w http.ResponseWriter, r *http.Request) {
	if err := s.Distrust(r.PathValue("thumbprint")); err != nil {
		apiError(w, http.StatusBadRequest, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// optionalDuration reads a body's duration field v: 0 when absent, an
// error naming the field unless it is a positive duration.
func optionalDuration(field, v, example string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s %q: want a positive duration such as %q", field, v, example)
	}
	return d, nil
}

// CreateKeyBody is the body of POST /api/keys.
type CreateKeyBody struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
	// ExpiresIn, a duration such as "720h", makes the key stop working
	// then; none: it works until revoked.
	ExpiresIn string `json:"expires_in,omitempty"`
}

func (s *Server) apiCreateKey(w http.ResponseWriter, r *http.Request) {
	var body CreateKeyBody
	if !decodeBody(w, r, 1<<20, &body) {
		return
	}
	ttl, err := optionalDuration("expires_in", body.ExpiresIn, "720h")
	if err != nil {
		apiError(w, http.StatusBadRequest, fmt.Errorf("%w: %w", ErrBadExpiry, err))
		return
	}
	k, err := s.CreateAPIKey(body.Name, body.Role, ttl)
	switch {
	case errors.Is(err, ErrKeyExists):
		apiError(w, http.StatusConflict, err)
	case errors.Is(err, ErrBadKeyName), errors.Is(err, ErrBadRole), errors.Is(err, ErrBadExpiry):
		apiError(w, http.StatusBadRequest, err)
	case err != nil:
		apiError(w, http.StatusInternalServerError, err)
	default:
		writeJSON(w, http.StatusCreated, k)
	}
}

func (s *Server) apiRevokeKey(w http.ResponseWriter, r *http.Request) {
	err := s.RevokeAPIKey(r.PathValue("id"))
	switch {
	case errors.Is(err, ErrUnknownKey):
		apiError(w, http.StatusNotFound, err)
	case err != nil:
		apiError(w, http.StatusInternalServerError, err)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

// decodeBody decodes a request's JSON body, at most limit bytes and no
// unknown fields, into v; when it cannot, it answers 400 and returns false.
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		apiError(w, http.StatusBadRequest, fmt.Errorf("body: %w", err))
		return false
	}
	return true
}

func uintParam(v string, def uint64) (uint64, error) {
	if v == "" {
		return def, nil
	}
	return strconv.ParseUint(v, 10, 64)
}

// APIError is the body of every error answer.
type APIError struct {
	Error string `json:"error"`
}

func apiError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, APIError{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
