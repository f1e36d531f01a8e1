package agent

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/registry"
)

var ticketRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// Limits on a request, so one step cannot exhaust the journal or the disk.
// The request is kept in the journal whole; inline files and variables are
// bounded together, not only one by one.
const (
	maxTicketLen      = 128
	maxLabelBytes     = 256 // task_id, step_name, feed, mutex_name, ...
	maxScriptBytes    = 1 << 20
	maxInlineFileSize = 8 << 20
	maxInlineTotal    = 8 << 20
	maxFiles          = 1000
	maxPathBytes      = 1024
	maxVariables      = 10000
	maxVariableName   = 1024
	maxVariablesBytes = 8 << 20
	// Docker refuses less than this memory, and a CPU share under 0.01;
	// refusing here says so before anything is recorded.
	minMemoryBytes = 6 << 20
	minNanoCPUs    = 10_000_000
	// maxReported bounds the errors one reply lists: a request with ten
	// thousand bad variables gets a readable answer, not a megabyte.
	maxReported = 20
)

// validateStart checks a StartStepRequest field by field; the error says
// which field and why, for an InvalidArgument reply. Checks that need the
// agent's configuration (allowed images, feeds) are made by StartStep.
func validateStart(req *pb.StartStepRequest) error {
	v := &validator{}
	v.ticket(req.GetTicket())
	v.label("task_id", req.GetTaskId())
	v.label("step_name", req.GetStepName())
	v.script(req.GetScript())
	v.variables(req.GetVariables())
	v.files(req.GetFiles())
	v.execution(req)
	v.duration("timeout", req.GetTimeout())
	v.duration("cancel_grace", req.GetCancelGrace())
	v.duration("wait", req.GetWait())
	v.isolation(req.GetIsolation())
	v.limits(req.GetLimits())
	return v.err()
}

// validator collects every problem of a request, so that the caller can fix
// them all at once.
type validator struct {
	errs []error
	more int // problems beyond maxReported
}

func (v *validator) bad(format string, args ...any) {
	if len(v.errs) >= maxReported {
		v.more++
		return
	}
	v.errs = append(v.errs, fmt.Errorf(format, args...))
}

func (v *validator) err() error {
	if v.more > 0 {
		return errors.Join(append(v.errs, fmt.Errorf("and %d more problems", v.more))...)
	}
	return errors.Join(v.errs...)
}

// quote quotes s for an error message, cut short: the reply must not echo a
// megabyte of bad input.
func quote(s string) string {
	const n = 64
	if len(s) <= n {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q... (%d bytes)", s[:n], len(s))
}

func (v *validator) ticket(t string) {
	switch {
	case t == "":
		v.bad("ticket: required")
	case len(t) > maxTicketLen:
		v.bad("ticket %s: longer than %d characters", quote(t), maxTicketLen)
	case !ticketRE.MatchString(t) || t == "." || t == "..":
		// The ticket names the step's directory.
		v.bad("ticket %s: want 1 to %d of A-Z a-z 0-9 . _ - (and not . or ..)", quote(t), maxTicketLen)
	}
}

// label checks a free-text field that ends up in the agent's log and in
// container labels: bounded UTF-8 text without control characters.
func (v *validator) label(field, s string) {
	if len(s) > maxLabelBytes {
		v.bad("%s %s: longer than %d bytes", field, quote(s), maxLabelBytes)
		return
	}
	if why := textProblem(s); why != "" {
		v.bad("%s %s: %s", field, quote(s), why)
	}
}

// textProblem says why s is not one line of printable UTF-8 text, or "".
func textProblem(s string) string {
	if !utf8.ValidString(s) {
		return "not UTF-8 text"
	}
	if strings.ContainsFunc(s, unicode.IsControl) {
		return "contains a control character"
	}
	return ""
}

func (v *validator) script(s *pb.Script) {
	if _, ok := pb.Syntax_name[int32(s.GetSyntax())]; !ok {
		v.bad("script.syntax %d: unknown; want bash, sh or python", s.GetSyntax())
	}
	body := s.GetBody()
	if n := len(body); n > maxScriptBytes {
		v.bad("script.body: %d bytes, more than the %d allowed: upload large content as a file", n, maxScriptBytes)
	}
	if strings.IndexByte(body, 0) >= 0 {
		v.bad("script.body: contains a NUL byte; a script is text")
	}
}

func (v *validator) variables(vars []*pb.Variable) {
	if n := len(vars); n > maxVariables {
		v.bad("variables: %d, more than the %d allowed", n, maxVariables)
		return
	}
	seen := make(map[string]int, len(vars))
	total := 0
	for i, vr := range vars {
		name, value := vr.GetName(), vr.GetValue()
		total += len(name) + len(value)
		switch {
		case name == "":
			v.bad("variables[%d]: name: required", i)
		case len(name) > maxVariableName:
			v.bad("variables[%d]: name %s: longer than %d bytes", i, quote(name), maxVariableName)
		case strings.ContainsRune(name, '='):
			// Variables reach the script through its environment.
			v.bad("variables[%d]: name %s: contains '='", i, quote(name))
		case textProblem(name) != "":
			v.bad("variables[%d]: name %s: %s", i, quote(name), textProblem(name))
		}
		if j, dup := seen[name]; dup && name != "" {
			v.bad("variables[%d]: name %s: given twice, also as variables[%d]", i, quote(name), j)
		} else {
			seen[name] = i
		}
		if strings.IndexByte(value, 0) >= 0 {
			// Never echo the value: it may be sensitive.
			v.bad("variables[%d] (%s): value contains a NUL byte, which an environment cannot hold", i, quote(name))
		}
	}
	if total > maxVariablesBytes {
		v.bad("variables: %d bytes of names and values, more than the %d allowed", total, maxVariablesBytes)
	}
}

func (v *validator) files(files []*pb.File) {
	if n := len(files); n > maxFiles {
		v.bad("files: %d, more than the %d allowed", n, maxFiles)
		return
	}
	paths := make(map[string]int, len(files))
	inline := 0
	for i, f := range files {
		p := f.GetPath()
		field := fmt.Sprintf("files[%d] (%s)", i, quote(p))
		clean, ok := v.filePath(field, p)
		if ok {
			if j, dup := paths[clean]; dup {
				v.bad("%s: the same file as files[%d]", field, j)
			}
			paths[clean] = i
		}
		n := len(f.GetContent())
		inline += n
		if n > maxInlineFileSize {
			v.bad("%s: %d bytes inline, more than %d: upload it with UploadFile", field, n, maxInlineFileSize)
		}
		if id := f.GetFileId(); id != "" {
			if !sha256RE.MatchString(id) {
				v.bad("%s: file_id %s is not an uploaded file's id (its SHA-256, lowercase hex)", field, quote(id))
			}
			if n > 0 {
				v.bad("%s: both content and file_id: give one", field)
			}
		}
		if m := f.GetMode(); m > 0o777 {
			v.bad("%s: mode %#o: want permission bits, at most 0777", field, m)
		}
	}
	if inline > maxInlineTotal {
		v.bad("files: %d bytes inline in all, more than %d: upload large files with UploadFile", inline, maxInlineTotal)
	}
	// A file cannot also be a directory of another: "a" and "a/b".
	for clean, i := range paths {
		for d := filepath.Dir(clean); d != "."; d = filepath.Dir(d) {
			if j, ok := paths[d]; ok {
				v.bad("files[%d] (%s): files[%d] is a file where it needs a directory", i, quote(files[i].GetPath()), j)
				break
			}
		}
	}
}

// filePath checks a path relative to the workspace and returns it cleaned.
func (v *validator) filePath(field, p string) (string, bool) {
	switch {
	case p == "":
		v.bad("%s: path: required", field)
	case len(p) > maxPathBytes:
		v.bad("%s: path longer than %d bytes", field, maxPathBytes)
	case strings.IndexByte(p, 0) >= 0:
		v.bad("%s: path contains a NUL byte", field)
	case filepath.IsAbs(p) || !filepath.IsLocal(p):
		v.bad("%s: path must be relative and stay inside the workspace", field)
	case filepath.Clean(p) == ".":
		v.bad("%s: path names the workspace itself, not a file in it", field)
	default:
		return filepath.Clean(p), true
	}
	return "", false
}

// validateContainer checks a ContainerExecution on its own, as PrePull
// takes it; field prefixes the field names in the error.
func validateContainer(field string, c *pb.ContainerExecution) error {
	v := &validator{}
	v.container(field, c)
	return v.err()
}

func (v *validator) execution(req *pb.StartStepRequest) {
	c := req.GetExecution().GetContainer()
	if c == nil {
		// A host step (or no execution: the host). Limits need a container.
		if l := req.GetLimits(); l.GetMemoryBytes() != 0 || l.GetNanoCpus() != 0 || l.GetPidsLimit() != 0 {
			v.bad("limits: only a container step can be limited; this step runs on the host")
		}
		return
	}
	v.container("execution.container", c)
}

func (v *validator) container(field string, c *pb.ContainerExecution) {
	if c.GetImage() == "" {
		v.bad("%s.image: required", field)
	} else if _, err := registry.ParseImage(c.GetImage()); err != nil {
		v.bad("%s.image: %w", field, err)
	}
	if f := c.GetFeed(); f != "" {
		// Whether the agent has the feed is StartStep's check.
		v.label(field+".feed", f)
	}
	if _, err := pullPolicy(c.GetPullPolicy()); err != nil {
		v.bad("%s.pull_policy: %w", field, err)
	}
	if p := c.GetPlatform(); p != "" && !validPlatform(p) {
		v.bad("%s.platform %s: want os/arch or os/arch/variant, e.g. linux/amd64", field, quote(p))
	}
	if cr := c.GetCredentials(); cr != nil {
		field := field + ".credentials"
		user, pwd, tok := cr.GetUsername() != "", cr.GetPassword() != "", cr.GetIdentityToken() != ""
		switch {
		case tok && (user || pwd):
			v.bad("%s: give username and password, or identity_token, not both", field)
		case pwd && !user:
			v.bad("%s: a password without a username", field)
		}
		if why := textProblem(cr.GetUsername()); why != "" {
			v.bad("%s.username: %s", field, why)
		}
		if s := cr.GetServerAddress(); len(s) > maxLabelBytes || strings.ContainsFunc(s, unicode.IsSpace) || textProblem(s) != "" {
			v.bad("%s.server_address %s: want a registry's host[:port] (or URL)", field, quote(s))
		}
	}
}

// validPlatform reports whether p reads os/arch[/variant], as Docker takes it.
func validPlatform(p string) bool {
	parts := strings.Split(p, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return false
	}
	for _, s := range parts {
		if s == "" || strings.ContainsFunc(s, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-')
		}) {
			return false
		}
	}
	return true
}

// duration checks an optional, non-negative duration. A Duration the wire
// can carry but Go cannot (nanos out of range, mixed signs) is refused too.
func (v *validator) duration(field string, d *durationpb.Duration) {
	if d == nil {
		return
	}
	if err := d.CheckValid(); err != nil {
		v.bad("%s: %w", field, err)
		return
	}
	if d.AsDuration() < 0 {
		v.bad("%s %v: negative", field, d.AsDuration())
	}
}

func (v *validator) isolation(iso *pb.Isolation) {
	if _, ok := pb.IsolationLevel_name[int32(iso.GetLevel())]; !ok {
		v.bad("isolation.level %d: unknown; want NONE or FULL", iso.GetLevel())
	}
	v.label("isolation.mutex_name", iso.GetMutexName())
	v.duration("isolation.wait_timeout", iso.GetWaitTimeout())
}

func (v *validator) limits(l *pb.ResourceLimits) {
	switch m := l.GetMemoryBytes(); {
	case m < 0:
		v.bad("limits.memory_bytes %d: negative; zero means no limit", m)
	case m > 0 && m < minMemoryBytes:
		v.bad("limits.memory_bytes %d: less than Docker's minimum of %d (6 MiB)", m, minMemoryBytes)
	}
	switch c := l.GetNanoCpus(); {
	case c < 0:
		v.bad("limits.nano_cpus %d: negative; zero means no limit", c)
	case c > 0 && c < minNanoCPUs:
		v.bad("limits.nano_cpus %d: less than Docker's minimum of %d (0.01 CPU)", c, minNanoCPUs)
	}
	if p := l.GetPidsLimit(); p < 0 {
		v.bad("limits.pids_limit %d: negative; zero means no limit", p)
	}
}
