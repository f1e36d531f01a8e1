package agent

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/registry"
)

// BadRequest is a StartStepRequest that validateStart must refuse, and the
// field its error must name.
type BadRequest struct {
	Name  string
	Field string
	Req   *pb.StartStepRequest
}

// goodHostRequest and goodContainerRequest are valid; the bad requests are
// each one of them with one thing wrong.
func goodHostRequest() *pb.StartStepRequest {
	return &pb.StartStepRequest{
		Ticket: "good-1", TaskId: "ServerTasks-1", StepName: "Deploy web",
		Script:    &pb.Script{Syntax: pb.Syntax_SYNTAX_BASH, Body: "echo hi"},
		Variables: []*pb.Variable{{Name: "Octopus.Action.Name", Value: "deploy"}, {Name: "Secret", Value: "s3cr3t", Sensitive: true}},
		Files:     []*pb.File{{Path: "pkg/app.txt", Content: []byte("x"), Mode: 0o755}, {Path: "pkg/b.txt", FileId: strings.Repeat("a", 64)}},
		Execution: &pb.Execution{Target: &pb.Execution_Host{Host: &pb.HostExecution{}}},
		Timeout:   durationpb.New(time.Minute), CancelGrace: durationpb.New(time.Second), Wait: durationpb.New(0),
		Isolation: &pb.Isolation{Level: pb.IsolationLevel_ISOLATION_LEVEL_FULL, MutexName: "web", WaitTimeout: durationpb.New(time.Minute)},
	}
}

func goodContainerRequest() *pb.StartStepRequest {
	r := goodHostRequest()
	r.Ticket = "good-2"
	r.Execution = &pb.Execution{Target: &pb.Execution_Container{Container: &pb.ContainerExecution{
		Image: "localhost:5000/fixtures/bookworm:1", PullPolicy: pb.PullPolicy_PULL_POLICY_NEVER, Platform: "linux/amd64",
		Credentials: &pb.RegistryCredentials{Username: "u", Password: "p", ServerAddress: "localhost:5000"}}}}
	r.Limits = &pb.ResourceLimits{MemoryBytes: 64 << 20, NanoCpus: 500_000_000, PidsLimit: 100}
	return r
}

// BadStartRequests lists one bad request per check of validateStart; the
// end-to-end test sends them all to a running agent.
func BadStartRequests() []BadRequest {
	host := func(f func(r *pb.StartStepRequest)) *pb.StartStepRequest {
		r := goodHostRequest()
		f(r)
		return r
	}
	ctr := func(f func(r *pb.StartStepRequest, c *pb.ContainerExecution)) *pb.StartStepRequest {
		r := goodContainerRequest()
		f(r, r.GetExecution().GetContainer())
		return r
	}
	many := func(n int) []*pb.Variable {
		vs := make([]*pb.Variable, n)
		for i := range vs {
			vs[i] = &pb.Variable{Name: fmt.Sprintf("V%d", i)}
		}
		return vs
	}
	return []BadRequest{
		{"empty ticket", "ticket", host(func(r *pb.StartStepRequest) { r.Ticket = "" })},
		{"overlong ticket", "ticket", host(func(r *pb.StartStepRequest) { r.Ticket = strings.Repeat("t", 129) })},
		{"ticket with a slash", "ticket", host(func(r *pb.StartStepRequest) { r.Ticket = "a/b" })},
		{"ticket dot-dot", "ticket", host(func(r *pb.StartStepRequest) { r.Ticket = ".." })},
		{"ticket with a space", "ticket", host(func(r *pb.StartStepRequest) { r.Ticket = "a b" })},
		{"overlong task id", "task_id", host(func(r *pb.StartStepRequest) { r.TaskId = strings.Repeat("t", 257) })},
		{"task id with a newline", "task_id", host(func(r *pb.StartStepRequest) { r.TaskId = "a\nb" })},
		{"step name with an escape", "step_name", host(func(r *pb.StartStepRequest) { r.StepName = "a\x1b[2Jb" })},
		{"unknown syntax", "script.syntax", host(func(r *pb.StartStepRequest) { r.Script.Syntax = 99 })},
		{"negative syntax", "script.syntax", host(func(r *pb.StartStepRequest) { r.Script.Syntax = -1 })},
		{"script too large", "script.body", host(func(r *pb.StartStepRequest) { r.Script.Body = strings.Repeat("#", maxScriptBytes+1) })},
		{"script with NUL", "script.body", host(func(r *pb.StartStepRequest) { r.Script.Body = "echo a\x00b" })},
		{"too many variables", "variables", host(func(r *pb.StartStepRequest) { r.Variables = many(maxVariables + 1) })},
		{"variable without a name", "variables[0]", host(func(r *pb.StartStepRequest) { r.Variables[0].Name = "" })},
		{"variable name with '='", "variables[0]", host(func(r *pb.StartStepRequest) { r.Variables[0].Name = "A=B" })},
		{"variable name with NUL", "variables[1]", host(func(r *pb.StartStepRequest) { r.Variables[1].Name = "A\x00" })},
		{"variable name with a newline", "variables[0]", host(func(r *pb.StartStepRequest) { r.Variables[0].Name = "A\nB" })},
		{"overlong variable name", "variables[0]", host(func(r *pb.StartStepRequest) { r.Variables[0].Name = strings.Repeat("N", maxVariableName+1) })},
		{"variable value with NUL", "variables[1]", host(func(r *pb.StartStepRequest) { r.Variables[1].Value = "a\x00b" })},
		{"variable given twice", "variables[1]", host(func(r *pb.StartStepRequest) { r.Variables[1].Name = r.Variables[0].Name })},
		{"variables too large together", "variables", host(func(r *pb.StartStepRequest) {
			r.Variables = []*pb.Variable{{Name: "A", Value: strings.Repeat("a", maxVariablesBytes/2)}, {Name: "B", Value: strings.Repeat("b", maxVariablesBytes/2)}}
		})},
		{"file without a path", "files[0]", host(func(r *pb.StartStepRequest) { r.Files[0].Path = "" })},
		{"file path escaping with ..", "files[0]", host(func(r *pb.StartStepRequest) { r.Files[0].Path = "../../etc/passwd" })},
		{"file path escaping in the middle", "files[0]", host(func(r *pb.StartStepRequest) { r.Files[0].Path = "a/../../b" })},
		{"absolute file path", "files[1]", host(func(r *pb.StartStepRequest) { r.Files[1].Path = "/etc/passwd" })},
		{"file path of the workspace", "files[0]", host(func(r *pb.StartStepRequest) { r.Files[0].Path = "./" })},
		{"file path with NUL", "files[0]", host(func(r *pb.StartStepRequest) { r.Files[0].Path = "a\x00b" })},
		{"overlong file path", "files[0]", host(func(r *pb.StartStepRequest) { r.Files[0].Path = strings.Repeat("d/", maxPathBytes) })},
		{"same file twice", "files[1]", host(func(r *pb.StartStepRequest) { r.Files[1].Path = "pkg/./app.txt" })},
		{"file where a directory is needed", "files[1]", host(func(r *pb.StartStepRequest) { r.Files[1].Path = "pkg/app.txt/inner" })},
		{"file too large inline", "files[0]", host(func(r *pb.StartStepRequest) { r.Files[0].Content = make([]byte, maxInlineFileSize+1) })},
		{"files too large together", "files", host(func(r *pb.StartStepRequest) {
			r.Files[0].Content = make([]byte, maxInlineTotal/2+1)
			r.Files[1].FileId, r.Files[1].Content = "", make([]byte, maxInlineTotal/2+1)
		})},
		{"too many files", "files", host(func(r *pb.StartStepRequest) {
			r.Files = nil
			for i := range maxFiles + 1 {
				r.Files = append(r.Files, &pb.File{Path: fmt.Sprintf("f%d", i)})
			}
		})},
		{"malformed file id", "files[1]", host(func(r *pb.StartStepRequest) { r.Files[1].FileId = "../../etc/passwd" })},
		{"content and file id", "files[1]", host(func(r *pb.StartStepRequest) { r.Files[1].Content = []byte("x") })},
		{"file mode with type bits", "files[0]", host(func(r *pb.StartStepRequest) { r.Files[0].Mode = 0o100644 })},
		{"setuid file mode", "files[0]", host(func(r *pb.StartStepRequest) { r.Files[0].Mode = 0o4755 })},
		{"no image", "execution.container.image", ctr(func(_ *pb.StartStepRequest, c *pb.ContainerExecution) { c.Image = "" })},
		{"malformed image", "execution.container.image", ctr(func(_ *pb.StartStepRequest, c *pb.ContainerExecution) { c.Image = "UPPER/Case::" })},
		{"image with a space", "execution.container.image", ctr(func(_ *pb.StartStepRequest, c *pb.ContainerExecution) { c.Image = "debian :12" })},
		{"image with a bad digest", "execution.container.image", ctr(func(_ *pb.StartStepRequest, c *pb.ContainerExecution) { c.Image = "debian@sha256:123" })},
		{"feed with a newline", "execution.container.feed", ctr(func(_ *pb.StartStepRequest, c *pb.ContainerExecution) { c.Feed = "a\nb" })},
		{"unknown pull policy", "execution.container.pull_policy", ctr(func(_ *pb.StartStepRequest, c *pb.ContainerExecution) { c.PullPolicy = 7 })},
		{"malformed platform", "execution.container.platform", ctr(func(_ *pb.StartStepRequest, c *pb.ContainerExecution) { c.Platform = "amd64" })},
		{"platform with empty part", "execution.container.platform", ctr(func(_ *pb.StartStepRequest, c *pb.ContainerExecution) { c.Platform = "linux//v7" })},
		{"password and identity token", "execution.container.credentials", ctr(func(_ *pb.StartStepRequest, c *pb.ContainerExecution) { c.Credentials.IdentityToken = "tok" })},
		{"password without username", "execution.container.credentials", ctr(func(_ *pb.StartStepRequest, c *pb.ContainerExecution) { c.Credentials.Username = "" })},
		{"server address with a space", "execution.container.credentials.server_address", ctr(func(_ *pb.StartStepRequest, c *pb.ContainerExecution) {
			c.Credentials.ServerAddress = "reg istry"
		})},
		{"negative timeout", "timeout", host(func(r *pb.StartStepRequest) { r.Timeout = durationpb.New(-time.Second) })},
		{"invalid timeout", "timeout", host(func(r *pb.StartStepRequest) { r.Timeout = &durationpb.Duration{Seconds: 1, Nanos: -5} })},
		{"negative cancel grace", "cancel_grace", host(func(r *pb.StartStepRequest) { r.CancelGrace = durationpb.New(-time.Second) })},
		{"negative wait", "wait", host(func(r *pb.StartStepRequest) { r.Wait = durationpb.New(-time.Millisecond) })},
		{"invalid wait", "wait", host(func(r *pb.StartStepRequest) { r.Wait = &durationpb.Duration{Nanos: 2e9} })},
		{"unknown isolation level", "isolation.level", host(func(r *pb.StartStepRequest) { r.Isolation.Level = 5 })},
		{"overlong mutex name", "isolation.mutex_name", host(func(r *pb.StartStepRequest) { r.Isolation.MutexName = strings.Repeat("m", 300) })},
		{"negative isolation wait", "isolation.wait_timeout", host(func(r *pb.StartStepRequest) { r.Isolation.WaitTimeout = durationpb.New(-time.Second) })},
		{"negative memory", "limits.memory_bytes", ctr(func(r *pb.StartStepRequest, _ *pb.ContainerExecution) { r.Limits.MemoryBytes = -1 })},
		{"too little memory", "limits.memory_bytes", ctr(func(r *pb.StartStepRequest, _ *pb.ContainerExecution) { r.Limits.MemoryBytes = 1024 })},
		{"negative cpus", "limits.nano_cpus", ctr(func(r *pb.StartStepRequest, _ *pb.ContainerExecution) { r.Limits.NanoCpus = -1 })},
		{"too little cpu", "limits.nano_cpus", ctr(func(r *pb.StartStepRequest, _ *pb.ContainerExecution) { r.Limits.NanoCpus = 1000 })},
		{"negative pids", "limits.pids_limit", ctr(func(r *pb.StartStepRequest, _ *pb.ContainerExecution) { r.Limits.PidsLimit = -1 })},
		{"limits on a host step", "limits", host(func(r *pb.StartStepRequest) { r.Limits = &pb.ResourceLimits{MemoryBytes: 64 << 20} })},
	}
}

func TestValidateStartAcceptsGoodRequests(t *testing.T) {
	tests := []struct {
		name string
		req  *pb.StartStepRequest
	}{
		{"host", goodHostRequest()},
		{"container", goodContainerRequest()},
		{"minimal", &pb.StartStepRequest{Ticket: "m"}},
		{"identity token", func() *pb.StartStepRequest {
			r := goodContainerRequest()
			r.GetExecution().GetContainer().Credentials = &pb.RegistryCredentials{IdentityToken: "tok"}
			return r
		}()},
		{"digest image and feed", func() *pb.StartStepRequest {
			r := goodContainerRequest()
			c := r.GetExecution().GetContainer()
			c.Image, c.Feed = "debian@sha256:"+strings.Repeat("0", 64), "Docker Hub"
			return r
		}()},
		{"file path with inner dot-dot that stays inside", func() *pb.StartStepRequest {
			r := goodHostRequest()
			r.Files[0].Path = "a/../pkg/c.txt"
			return r
		}()},
		{"variables at the limit", func() *pb.StartStepRequest {
			r := goodHostRequest()
			r.Variables = []*pb.Variable{{Name: "A", Value: strings.Repeat("a", maxVariablesBytes-1)}}
			return r
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := validateStart(tt.req); err != nil {
				t.Fatalf("refused: %v", err)
			}
		})
	}
}

func TestValidateStartRefusesBadRequests(t *testing.T) {
	for _, tt := range BadStartRequests() {
		t.Run(tt.Name, func(t *testing.T) {
			err := validateStart(tt.Req)
			if err == nil {
				t.Fatal("accepted")
			}
			// The message is for a person: it names the field at fault.
			if !strings.Contains(err.Error(), tt.Field) {
				t.Errorf("error %q does not name %s", err, tt.Field)
			}
			if len(err.Error()) > 4096 {
				t.Errorf("error of %d bytes: bad input must not be echoed whole", len(err.Error()))
			}
		})
	}
}

// A request with many bad parts lists a bounded number of them.
func TestValidateStartBoundsItsError(t *testing.T) {
	r := goodHostRequest()
	r.Variables = nil
	for range maxVariables {
		r.Variables = append(r.Variables, &pb.Variable{Name: "", Value: "\x00"})
	}
	err := validateStart(r)
	if err == nil || len(err.Error()) > 4096 || !strings.Contains(err.Error(), "more problems") {
		t.Fatalf("error of %d bytes: %.200v", len(fmtErr(err)), err)
	}
}

func fmtErr(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// FuzzValidateStart decodes arbitrary bytes as a StartStepRequest:
// validateStart must never panic, and whatever it accepts must be safe to
// run: a ticket that names one directory, files that land inside the
// workspace, values an environment can hold, nothing negative.
func FuzzValidateStart(f *testing.F) {
	seeds := []*pb.StartStepRequest{goodHostRequest(), goodContainerRequest(), {Ticket: "m"}}
	for _, b := range BadStartRequests() {
		seeds = append(seeds, b.Req)
	}
	for _, r := range seeds {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		if len(b) <= 64<<10 { // the fuzzer mutates small inputs best
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req := &pb.StartStepRequest{}
		if proto.Unmarshal(data, req) != nil {
			return
		}
		if validateStart(req) != nil {
			return
		}
		if tk := req.GetTicket(); !ticketRE.MatchString(tk) || tk == "." || tk == ".." {
			t.Fatalf("accepted ticket %q", tk)
		}
		if _, ok := pb.Syntax_name[int32(req.GetScript().GetSyntax())]; !ok || strings.IndexByte(req.GetScript().GetBody(), 0) >= 0 {
			t.Fatalf("accepted script %v", req.GetScript().GetSyntax())
		}
		const work = "/state/steps/t/work"
		for _, fl := range req.GetFiles() {
			// Where prepareStepDir writes it.
			dst := filepath.Join(work, filepath.Clean("/"+fl.GetPath()))
			if !strings.HasPrefix(dst, work+"/") || dst != filepath.Join(work, fl.GetPath()) {
				t.Fatalf("accepted file path %q: it lands at %s", fl.GetPath(), dst)
			}
			if fl.GetMode() > 0o777 {
				t.Fatalf("accepted mode %#o", fl.GetMode())
			}
		}
		names := map[string]bool{}
		for _, v := range req.GetVariables() {
			if v.GetName() == "" || names[v.GetName()] || strings.ContainsAny(v.GetName(), "=\x00") || strings.IndexByte(v.GetValue(), 0) >= 0 {
				t.Fatalf("accepted variable %q", v.GetName())
			}
			names[v.GetName()] = true
		}
		for _, d := range []*durationpb.Duration{req.GetTimeout(), req.GetCancelGrace(), req.GetWait(), req.GetIsolation().GetWaitTimeout()} {
			if d != nil && (d.CheckValid() != nil || d.AsDuration() < 0) {
				t.Fatalf("accepted duration %v", d)
			}
		}
		if l := req.GetLimits(); l.GetMemoryBytes() < 0 || l.GetNanoCpus() < 0 || l.GetPidsLimit() < 0 {
			t.Fatalf("accepted limits %v", l)
		}
		if c := req.GetExecution().GetContainer(); c != nil {
			if _, err := registry.ParseImage(c.GetImage()); err != nil {
				t.Fatalf("accepted image %q: %v", c.GetImage(), err)
			}
			if _, err := pullPolicy(c.GetPullPolicy()); err != nil {
				t.Fatalf("accepted pull policy %v", c.GetPullPolicy())
			}
		}
		if err := validateStart(req); err != nil {
			t.Fatalf("accepted once, refused the second time: %v", err)
		}
	})
}
