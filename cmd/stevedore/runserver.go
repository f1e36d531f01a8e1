package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/server"
	"stevedore/transport"
)

// apiClient calls the server's HTTP API.
type apiClient struct {
	base       string
	user, pass string
	// token, when set, is sent as a bearer token instead of user and pass.
	token string
	http  *http.Client
}

// apiStatusError is an answer of the API other than success.
type apiStatusError struct {
	code int
	msg  string
}

func (e *apiStatusError) Error() string {
	switch e.code {
	case http.StatusUnauthorized:
		return "the server refused the credentials: " + e.msg
	case http.StatusForbidden:
		return "the credentials do not allow this: " + e.msg
	}
	return fmt.Sprintf("server answered %d: %s", e.code, e.msg)
}

// call sends a request and decodes a JSON answer into out (or copies the
// body to an io.Writer).
func (c *apiClient) call(ctx context.Context, method, path string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	} else {
		req.SetBasicAuth(c.user, c.pass)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e server.APIError
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return &apiStatusError{code: resp.StatusCode, msg: e.Error}
	}
	if w, ok := out.(io.Writer); ok {
		_, err = io.Copy(w, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// transientAPIError: the server is restarting, or the network in between
// is failing; the same request may be sent again.
func transientAPIError(err error) bool {
	var se *apiStatusError
	if errors.As(err, &se) {
		return se.code == http.StatusBadGateway || se.code == http.StatusServiceUnavailable || se.code == http.StatusGatewayTimeout
	}
	// A certificate refused, or TLS spoken to plain HTTP, will not pass.
	var cve *tls.CertificateVerificationError
	var rhe tls.RecordHeaderError
	if errors.Is(err, transport.ErrUntrusted) || errors.As(err, &cve) || errors.As(err, &rhe) {
		return false
	}
	var ue *url.Error
	return errors.As(err, &ue) && !errors.Is(err, context.Canceled)
}

// retryAPI calls f until it succeeds, fails for good, or the server has
// been unreachable for unreachableFor. Every call it retries is idempotent
// (a submission carries its key).
func retryAPI(ctx context.Context, f func() error) error {
	return retryWhile(ctx, transientAPIError, f)
}

// runViaServer submits the step to the server's API, streams its log and
// ends as direct mode does: same output, result file and exit codes.
func runViaServer(ctx context.Context, o *runOptions, req *pb.StartStepRequest, lp *linePrinter, intr *interrupter) error {
	stdout, stderr := lp.stdout, lp.stderr
	if (o.pool == "") == (o.worker == "") {
		return exitCodeError{exitCannotRun, errors.New("--server needs exactly one of --pool and --worker")}
	}
	labels, err := parseLabels(o.labels)
	if err != nil {
		return exitCodeError{exitCannotRun, err}
	}
	hc, err := apiHTTPClient(o.serverThumbprint)
	if err != nil {
		return exitCodeError{exitCannotRun, err}
	}
	c := &apiClient{base: strings.TrimRight(o.server, "/"), user: o.user, pass: o.password, token: o.token, http: hc}
	step, err := protojson.Marshal(req)
	if err != nil {
		return err
	}
	// The ticket made for this run is the submission's key: a submission
	// repeated after a lost answer does not run the step twice.
	body := server.SubmitBody{Worker: o.worker, Pool: o.pool, Labels: labels, Key: req.Ticket, Step: step}
	if o.queueTimeout > 0 {
		body.QueueTimeout = o.queueTimeout.String()
	}
	var v server.StepView
	if err := retryAPI(ctx, func() error { return c.call(ctx, "POST", "/api/steps", body, &v) }); err != nil {
		var se *apiStatusError
		if errors.As(err, &se) && se.code == http.StatusUnauthorized {
			err = fmt.Errorf("%w (give --token or STEVEDORE_TOKEN, or --user and --password, or STEVEDORE_USER and STEVEDORE_PASSWORD)", err)
		}
		return exitCodeError{exitCannotRun, fmt.Errorf("submit to %s: %w", o.server, err)}
	}
	intr.arm(func() {
		var cancelled server.StepView
		err := retryAPI(ctx, func() error {
			return c.call(ctx, "POST", "/api/steps/"+url.PathEscape(v.ID)+"/cancel", nil, &cancelled)
		})
		var se *apiStatusError
		if err != nil && !(errors.As(err, &se) && se.code == http.StatusConflict) { // 409: it had ended
			fmt.Fprintf(os.Stderr, "stevedore: cancel step %s: %v\n", v.ID, err)
		}
	})
	fmt.Fprintf(stderr, "stevedore: step %s queued on %s\n", v.ID, o.server)
	stderr.Flush()
	after := uint64(0)
	var final server.StepView
	state, waiting := v.State, ""
	for {
		var page server.LogPage
		// While the step is queued, ask often enough to say soon why it waits.
		wait := "30s"
		if state == server.StateQueued {
			wait = "2s"
		}
		path := fmt.Sprintf("/api/steps/%s/log?after=%d&wait=%s&max=5000", url.PathEscape(v.ID), after, wait)
		if err := retryAPI(ctx, func() error { return c.call(ctx, "GET", path, nil, &page) }); err != nil {
			return exitCodeError{exitCannotRun, fmt.Errorf("follow step %s: %w", v.ID, err)}
		}
		state = page.Step.State
		if page.Step.WaitingFor != "" && page.Step.WaitingFor != waiting {
			waiting = page.Step.WaitingFor
			fmt.Fprintf(stderr, "stevedore: step %s waits: %s\n", v.ID, waiting)
		}
		after = lp.print(logLines(page.Lines), after)
		stdout.Flush()
		stderr.Flush()
		if page.Step.State == server.StateComplete && len(page.Lines) == 0 {
			final = page.Step
			break
		}
	}
	outcome := pb.Outcome(pb.Outcome_value["OUTCOME_"+final.Outcome])
	st := &pb.StepStatus{Outcome: outcome, ExitCode: final.ExitCode, Signal: final.Signal, Reason: final.Reason}
	res := runResult{Ticket: v.ID, Outcome: final.Outcome, ExitCode: final.ExitCode, Signal: final.Signal, Reason: final.Reason,
		OutputVariables: final.OutputVariables, Artifacts: []runArtifact{}}
	if res.OutputVariables == nil {
		res.OutputVariables = map[string]string{}
	}
	// The step views mask sensitive values; the result file has them, as
	// in direct mode, from the route that gives them to their submitter.
	if o.resultFile != "" && len(final.SensitiveOutputs) > 0 {
		var outs server.StepOutputs
		err := retryAPI(ctx, func() error {
			return c.call(ctx, "GET", "/api/steps/"+url.PathEscape(v.ID)+"/outputs", nil, &outs)
		})
		if err != nil {
			fmt.Fprintf(stderr, "stevedore: sensitive output variables of step %s (masked in the result): %v\n", v.ID, err)
		} else {
			res.OutputVariables = outs.OutputVariables
		}
	}
	for _, a := range final.Artifacts {
		ra := runArtifact{Name: a.Name, Path: a.Path, Size: a.Size, SHA256: a.SHA256}
		if o.resultFile != "" {
			file, err := c.downloadArtifact(ctx, v.ID, a, filepath.Dir(o.resultFile))
			if err != nil {
				fmt.Fprintf(stderr, "stevedore: artifact %s: %v\n", a.Name, err)
			}
			ra.File = file
		}
		res.Artifacts = append(res.Artifacts, ra)
	}
	return finishRun(o, res, st, stdout, stderr)
}

// apiHTTPClient is an HTTP client of the server's API; with thumbprints
// (empty ones are none), an https server's certificate is pinned to them
// instead of checked against the system's CAs: any node of a server may
// answer, each with its own certificate.
func apiHTTPClient(thumbprints ...string) (*http.Client, error) {
	hc := &http.Client{}
	pin, _ := transport.NewTrustList()
	for _, t := range thumbprints {
		if t == "" {
			continue
		}
		if err := pin.Add(t); err != nil {
			return nil, fmt.Errorf("server thumbprint: %w", err)
		}
	}
	if len(pin.List()) > 0 {
		hc.Transport = &http.Transport{TLSClientConfig: transport.PinnedTLSConfig(pin), Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true}
	}
	return hc, nil
}

// logLines turns task log entries back into the wire's lines for the
// linePrinter.
func logLines(entries []server.LogEntry) []*pb.LogLine {
	out := make([]*pb.LogLine, 0, len(entries))
	for _, e := range entries {
		src := pb.LogSource_LOG_SOURCE_AGENT
		switch e.Source {
		case "stdout":
			src = pb.LogSource_LOG_SOURCE_STDOUT
		case "stderr":
			src = pb.LogSource_LOG_SOURCE_STDERR
		}
		out = append(out, &pb.LogLine{Sequence: e.Sequence, Source: src, Time: timestamppb.New(e.Time), Text: e.Content(), Partial: e.Partial, Level: e.LogLevel()})
	}
	return out
}

func (c *apiClient) downloadArtifact(ctx context.Context, id string, a server.Artifact, dir string) (path string, err error) {
	err = retryAPI(ctx, func() (err error) {
		path, err = saveArtifact(dir, a.Name, a.Size, a.SHA256, func(w io.Writer) error {
			return c.call(ctx, "GET", "/api/steps/"+url.PathEscape(id)+"/artifacts/"+url.PathEscape(a.Name), nil, w)
		})
		return err
	})
	return path, err
}
