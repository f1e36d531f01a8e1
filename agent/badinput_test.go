package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"stevedore/agent"
	"stevedore/internal/testenv"
	pb "stevedore/proto/stevedore/v1"
)

// upload sends data with UploadFile and returns its file id.
func (ta *testAgent) upload(t *testing.T, data []byte) string {
	t.Helper()
	sum := sha256.Sum256(data)
	stream, err := ta.client.UploadFile(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.UploadFileChunk{Part: &pb.UploadFileChunk_Header{Header: &pb.FileHeader{Name: "blob", SizeBytes: int64(len(data)), Sha256: hex.EncodeToString(sum[:])}}}); err != nil {
		t.Fatal(err)
	}
	for len(data) > 0 {
		n := min(len(data), 1<<20)
		if err := stream.Send(&pb.UploadFileChunk{Part: &pb.UploadFileChunk_Data{Data: data[:n]}}); err != nil {
			t.Fatal(err)
		}
		data = data[n:]
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatalf("UploadFile: %v", err)
	}
	return resp.GetFileId()
}

// stdoutBytes joins a step's stdout records back into the bytes the script
// wrote: a record that is not Partial ended with a newline.
func stdoutBytes(run *stepRun) []byte {
	var out []byte
	for _, l := range run.lines {
		if l.GetSource() != pb.LogSource_LOG_SOURCE_STDOUT {
			continue
		}
		out = append(out, l.GetText()...)
		if !l.GetPartial() {
			out = append(out, '\n')
		}
	}
	return out
}

// Output no line-oriented reader expects — a 10 MB line without a newline,
// random bytes with NULs, invalid UTF-8 — arrives byte for byte, with
// gapless sequences (follow checks them).
func TestHostileOutputArrivesByteForByte(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	longLine := []byte(base64.StdEncoding.EncodeToString(random(10 << 20 * 3 / 4)))[:10<<20] // no '\n' in base64
	binary := random(2 << 20)
	binary[0], binary[1] = 0, 0
	invalidUTF8 := []byte("\xff\xfe\xfd\n\xc3\x28 \xa0\xa1 \xe2\x28\xa1\n\xf0\x28\x8c\xbc\r\n\xed\xa0\x80 surrogate\n\xc0\xaf overlong\n" +
		"##stevedore[setVariable name='\xff' value='\x00']\n" + // not a service message: kept as text
		"trailing \xe2\x82") // a cut UTF-8 character and no newline
	tests := []struct {
		name      string
		container bool
		data      []byte
	}{
		{"10 MB line without a newline", false, longLine},
		{"random bytes with NULs", false, binary},
		{"random bytes with NULs in a container", true, binary},
		{"invalid UTF-8", false, invalidUTF8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exec := hostOrContainer(t, tt.container)
			ta := startAgent(t)
			id := ta.upload(t, tt.data)
			tk := ticket(t)
			run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Execution: exec, Script: bash("cat blob; echo done >&2"),
				Files: []*pb.File{{Path: "blob", FileId: id}}})
			if run.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED || fmt.Sprint(run.stderr) != "[done]" {
				t.Fatalf("%v %s; stderr %q", run.final.GetOutcome(), run.final.GetReason(), run.stderr)
			}
			if got := stdoutBytes(run); !bytes.Equal(got, tt.data) {
				i := 0
				for i < min(len(got), len(tt.data)) && got[i] == tt.data[i] {
					i++
				}
				t.Fatalf("stdout: %d bytes, want %d; they differ from byte %d", len(got), len(tt.data), i)
			}
			for _, l := range run.lines {
				if len(l.GetText()) > 64<<10 {
					t.Fatalf("line %d of %d bytes: long output must come in pieces", l.GetSequence(), len(l.GetText()))
				}
			}
			ta.complete(t, tk)
		})
	}
}

// A flood of service messages (setVariable and mask, interleaved with
// text) is handled whole: every message becomes one agent line, every
// variable is returned, masked values never appear, and no text is lost.
func TestServiceMessageFlood(t *testing.T) {
	const n = 25000 // of each kind: 50,000 service messages
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	var script bytes.Buffer
	var wantText []string
	for i := range n {
		fmt.Fprintf(&script, "##stevedore[setVariable name='%s' value='%s']\n", b64(fmt.Sprintf("Var%d", i)), b64(fmt.Sprintf("value %d", i)))
		fmt.Fprintf(&script, "##octopus[mask value='%s']\n", b64(fmt.Sprintf("secret-%d-x", i)))
		if i%10 == 0 {
			fmt.Fprintf(&script, "line %d secret-%d-x\n", i, i)
			wantText = append(wantText, fmt.Sprintf("line %d ********", i))
		}
	}
	ta := startAgent(t)
	id := ta.upload(t, script.Bytes())
	tk := ticket(t)
	start := time.Now()
	run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Execution: host(), Script: bash("cat messages"),
		Files: []*pb.File{{Path: "messages", FileId: id}}})
	t.Logf("%d service messages in %v", 2*n, time.Since(start))
	if run.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("%v %s; stderr %q", run.final.GetOutcome(), run.final.GetReason(), run.stderr)
	}
	if len(run.stdout) != len(wantText) {
		t.Fatalf("%d stdout lines, want %d", len(run.stdout), len(wantText))
	}
	for i := range wantText {
		if run.stdout[i] != wantText[i] {
			t.Fatalf("stdout line %d is %q, want %q", i, run.stdout[i], wantText[i])
		}
	}
	sets, masks := 0, 0
	for _, l := range run.agent {
		switch {
		case strings.HasPrefix(l, "output variable "):
			sets++
		case strings.HasPrefix(l, "a value will be masked"):
			masks++
		}
	}
	if sets != n || masks != n {
		t.Errorf("%d setVariable and %d mask lines, want %d of each", sets, masks, n)
	}
	vars := run.final.GetOutputVariables()
	if len(vars) != n {
		t.Fatalf("%d output variables, want %d", len(vars), n)
	}
	for i, v := range vars {
		if v.GetName() != fmt.Sprintf("Var%d", i) || v.GetValue() != fmt.Sprintf("value %d", i) {
			t.Fatalf("output variable %d is %s=%q", i, v.GetName(), v.GetValue())
		}
	}
	ta.complete(t, tk)
}

// An artifact outside the workspace is refused however the script points
// at it: "..", an absolute path, a symbolic link to a file of the host, a
// link to a directory above the workspace. DownloadFile reaches none of
// them, nor any path the step did not declare.
func TestArtifactsCannotEscapeTheWorkspace(t *testing.T) {
	script := `
echo kept > ok.txt
new_artifact ok.txt ok
ln -s /etc/passwd passwd-link
new_artifact passwd-link
ln -s / root
new_artifact root/etc/hostname
ln -s .. up
new_artifact up/script
new_artifact ../script
new_artifact /etc/passwd
mkdir d && ln -s ../../script d/deep
new_artifact d/deep
new_artifact d
mkfifo pipe
new_artifact pipe
`
	tests := []struct {
		name      string
		container bool
	}{{"host", false}, {"container", true}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exec := hostOrContainer(t, tt.container)
			ta := startAgent(t)
			tk := ticket(t)
			run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Execution: exec, Script: bash(script)})
			if run.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED {
				t.Fatalf("%v %s; stderr %q", run.final.GetOutcome(), run.final.GetReason(), run.stderr)
			}
			arts := run.final.GetArtifacts()
			if len(arts) != 1 || arts[0].GetName() != "ok" || arts[0].GetPath() != "ok.txt" {
				t.Fatalf("artifacts %v, want only ok.txt; agent lines %q", arts, run.agent)
			}
			if got := download(t, ta, tk, "ok.txt"); string(got) != "kept\n" {
				t.Errorf("ok.txt: %q", got)
			}
			for _, p := range []string{"passwd-link", "root/etc/hostname", "up/script", "../script", "/etc/passwd", "d/deep", "d", "pipe", "../../../../etc/passwd", "", "."} {
				stream, err := ta.client.DownloadFile(context.Background(), &pb.DownloadFileRequest{Ticket: tk, Path: p})
				if err == nil {
					_, err = stream.Recv()
				}
				if status.Code(err) != codes.NotFound {
					t.Errorf("DownloadFile(%q): %v, want NotFound", p, err)
				}
			}
			ta.complete(t, tk)
		})
	}
}

func download(t *testing.T, ta *testAgent, tk, path string) []byte {
	t.Helper()
	stream, err := ta.client.DownloadFile(context.Background(), &pb.DownloadFileRequest{Ticket: tk, Path: path})
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return got
		}
		if err != nil {
			t.Fatalf("DownloadFile(%s): %v", path, err)
		}
		got = append(got, msg.GetData()...)
	}
}

// Every bad input the agent can be sent is refused with the right code,
// records nothing, and leaves the agent serving normal steps.
func TestBadInputThenNormalStep(t *testing.T) {
	withImages(t, testenv.Bookworm)
	ta := startAgent(t)
	ctx := context.Background()
	for i, bad := range agent.BadStartRequests() {
		t.Run(bad.Name, func(t *testing.T) {
			req := proto.Clone(bad.Req).(*pb.StartStepRequest)
			if req.GetTicket() == "good-1" || req.GetTicket() == "good-2" {
				req.Ticket = fmt.Sprintf("bad-%d", i) // a ticket of its own, to check nothing was recorded
			}
			_, err := ta.client.StartStep(ctx, req)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), bad.Field) {
				t.Fatalf("err %v, want InvalidArgument naming %s", err, bad.Field)
			}
			if _, err := ta.client.GetStatus(ctx, &pb.GetStatusRequest{Ticket: req.GetTicket()}); status.Code(err) != codes.NotFound {
				t.Errorf("GetStatus of the refused ticket: %v, want NotFound", err)
			}
		})
	}
	inContainerWith := func(c *pb.ContainerExecution) *pb.StartStepRequest {
		return &pb.StartStepRequest{Ticket: ticket(t), Script: bash("true"), Execution: &pb.Execution{Target: &pb.Execution_Container{Container: c}}}
	}
	uploadWith := func(msgs ...*pb.UploadFileChunk) error {
		stream, err := ta.client.UploadFile(ctx)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if err := stream.Send(m); err != nil {
				break // the agent refused already; CloseAndRecv says why
			}
		}
		_, err = stream.CloseAndRecv()
		return err
	}
	header := func(size int64, sum string) *pb.UploadFileChunk {
		return &pb.UploadFileChunk{Part: &pb.UploadFileChunk_Header{Header: &pb.FileHeader{Name: "x", SizeBytes: size, Sha256: sum}}}
	}
	chunk := func(s string) *pb.UploadFileChunk {
		return &pb.UploadFileChunk{Part: &pb.UploadFileChunk_Data{Data: []byte(s)}}
	}
	sumOf := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	others := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"unknown feed", func() error {
			_, err := ta.client.StartStep(ctx, inContainerWith(&pb.ContainerExecution{Image: testenv.Bookworm, Feed: "nope"}))
			return err
		}, codes.InvalidArgument},
		{"request over the message limit", func() error {
			req := &pb.StartStepRequest{Ticket: ticket(t), Script: bash(strings.Repeat("#", 17<<20))}
			_, err := ta.client.StartStep(ctx, req, grpc.MaxCallSendMsgSize(64<<20))
			return err
		}, codes.ResourceExhausted},
		{"file id never uploaded", func() error {
			req := &pb.StartStepRequest{Ticket: ticket(t), Script: bash("true"), Files: []*pb.File{{Path: "f", FileId: strings.Repeat("0", 64)}}}
			_, err := ta.client.StartStep(ctx, req)
			return err
		}, codes.FailedPrecondition},
		{"GetStatus of an empty ticket", func() error {
			_, err := ta.client.GetStatus(ctx, &pb.GetStatusRequest{})
			return err
		}, codes.NotFound},
		{"GetStatus of a path as a ticket", func() error {
			_, err := ta.client.GetStatus(ctx, &pb.GetStatusRequest{Ticket: "../../etc"})
			return err
		}, codes.NotFound},
		{"CancelStep of an unknown ticket", func() error {
			_, err := ta.client.CancelStep(ctx, &pb.CancelStepRequest{Ticket: "nope"})
			return err
		}, codes.NotFound},
		{"CompleteStep of an unknown ticket", func() error {
			_, err := ta.client.CompleteStep(ctx, &pb.CompleteStepRequest{Ticket: "nope"})
			return err
		}, codes.NotFound},
		{"DownloadFile outside a workspace", func() error {
			stream, err := ta.client.DownloadFile(ctx, &pb.DownloadFileRequest{Ticket: "nope", Path: "../../etc/passwd"})
			if err == nil {
				_, err = stream.Recv()
			}
			return err
		}, codes.NotFound},
		{"upload without a header", func() error { return uploadWith(chunk("data")) }, codes.InvalidArgument},
		{"upload with a malformed digest", func() error { return uploadWith(header(4, "../../x"), chunk("data")) }, codes.InvalidArgument},
		{"upload with a negative size", func() error { return uploadWith(header(-1, sumOf("")), chunk("data")) }, codes.InvalidArgument},
		{"upload longer than announced", func() error { return uploadWith(header(2, sumOf("data")), chunk("data")) }, codes.InvalidArgument},
		{"upload shorter than announced", func() error { return uploadWith(header(8, sumOf("data")), chunk("data")) }, codes.DataLoss},
		{"upload with a wrong digest", func() error { return uploadWith(header(4, sumOf("atad")), chunk("data")) }, codes.DataLoss},
		{"pre-pull of a malformed image", func() error {
			stream, err := ta.client.PrePull(ctx, &pb.PrePullRequest{Images: []*pb.ContainerExecution{{Image: "UPPER/Case::"}}})
			if err == nil {
				_, err = stream.Recv()
			}
			return err
		}, codes.InvalidArgument},
		{"pre-pull with a malformed platform", func() error {
			stream, err := ta.client.PrePull(ctx, &pb.PrePullRequest{Images: []*pb.ContainerExecution{{Image: testenv.Bookworm, Platform: "amd64"}}})
			if err == nil {
				_, err = stream.Recv()
			}
			return err
		}, codes.InvalidArgument},
	}
	for _, o := range others {
		t.Run(o.name, func(t *testing.T) {
			if err := o.call(); status.Code(err) != o.want {
				t.Fatalf("err %v, want %v", err, o.want)
			}
		})
	}

	// Nothing of the refused steps is on disk.
	entries, _ := os.ReadDir(filepath.Join(ta.stateDir, "steps"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "bad-") {
			t.Errorf("a refused step left %s", e.Name())
		}
	}

	// And the agent still serves normal steps, on the host and in a container.
	for _, exec := range []*pb.Execution{host(), inContainer(testenv.Bookworm)} {
		tk := ticket(t)
		run := ta.run(t, &pb.StartStepRequest{Ticket: tk, Execution: exec, Script: bash("echo still serving")})
		if run.final.GetOutcome() != pb.Outcome_OUTCOME_SUCCEEDED || fmt.Sprint(run.stdout) != "[still serving]" {
			t.Fatalf("a normal step after bad input: %v %s; stdout %q stderr %q", run.final.GetOutcome(), run.final.GetReason(), run.stdout, run.stderr)
		}
		// Sequences at the edge of uint64 and a wait Go cannot hold answer
		// with no lines, at once.
		st, err := ta.client.GetStatus(ctx, &pb.GetStatusRequest{Ticket: tk, AfterSequence: math.MaxUint64, Wait: &durationpb.Duration{Seconds: -1, Nanos: 5}})
		if err != nil || len(st.GetLines()) != 0 {
			t.Fatalf("GetStatus after the last sequence: %d lines, %v", len(st.GetLines()), err)
		}
		ta.complete(t, tk)
	}
}
