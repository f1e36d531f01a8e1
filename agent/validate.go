package agent

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/registry"
)

var ticketRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// Limits on a request, so one step cannot exhaust the journal or the disk.
const (
	maxScriptBytes    = 1 << 20
	maxInlineFileSize = 8 << 20
	maxVariables      = 10000
)

// validateStart checks a StartStepRequest field by field; the error says
// which field and why, for an InvalidArgument reply.
func validateStart(req *pb.StartStepRequest) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !ticketRE.MatchString(req.GetTicket()) || req.GetTicket() == "." || req.GetTicket() == ".." {
		bad("ticket %q: want 1 to 128 of A-Z a-z 0-9 . _ -", req.GetTicket())
	}
	switch req.GetScript().GetSyntax() {
	case pb.Syntax_SYNTAX_UNSPECIFIED, pb.Syntax_SYNTAX_BASH, pb.Syntax_SYNTAX_SH, pb.Syntax_SYNTAX_PYTHON:
	default:
		bad("script syntax %v: want bash, sh or python", req.GetScript().GetSyntax())
	}
	if n := len(req.GetScript().GetBody()); n > maxScriptBytes {
		bad("script: %d bytes, more than the %d allowed", n, maxScriptBytes)
	}
	if n := len(req.GetVariables()); n > maxVariables {
		bad("variables: %d, more than the %d allowed", n, maxVariables)
	}
	for i, v := range req.GetVariables() {
		if v.GetName() == "" || strings.ContainsAny(v.GetName(), "=\x00") {
			bad("variables[%d]: name %q: must be non-empty, without '=' or NUL", i, v.GetName())
		}
		if strings.ContainsRune(v.GetValue(), 0) {
			bad("variables[%d] (%s): value contains NUL", i, v.GetName())
		}
	}
	for i, f := range req.GetFiles() {
		p := f.GetPath()
		if p == "" || filepath.IsAbs(p) || !filepath.IsLocal(p) {
			bad("files[%d]: path %q must be relative and stay inside the workspace", i, p)
		}
		if len(f.GetContent()) > maxInlineFileSize {
			bad("files[%d] (%s): %d bytes inline, more than %d: upload it with UploadFile", i, p, len(f.GetContent()), maxInlineFileSize)
		}
		if f.GetFileId() != "" && !sha256RE.MatchString(f.GetFileId()) {
			bad("files[%d] (%s): file_id %q is not an uploaded file's id", i, p, f.GetFileId())
		}
	}
	if c := req.GetExecution().GetContainer(); c != nil {
		if _, err := registry.ParseImage(c.GetImage()); err != nil {
			bad("execution.container.image: %v", err)
		}
		if _, err := pullPolicy(c.GetPullPolicy()); err != nil {
			bad("execution.container.pull_policy: %v", err)
		}
	}
	if req.GetTimeout().AsDuration() < 0 {
		bad("timeout: negative")
	}
	if req.GetCancelGrace().AsDuration() < 0 {
		bad("cancel_grace: negative")
	}
	if req.GetWait().AsDuration() < 0 {
		bad("wait: negative")
	}
	l := req.GetLimits()
	if l.GetMemoryBytes() < 0 || l.GetNanoCpus() < 0 || l.GetPidsLimit() < 0 {
		bad("limits: negative")
	}
	return errors.Join(errs...)
}
