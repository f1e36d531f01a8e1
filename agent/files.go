package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"stevedore/internal/stepspec"
	pb "stevedore/proto/stevedore/v1"
)

const (
	uploadsDir    = "uploads"
	maxUploadSize = 4 << 30
	chunkSize     = 256 << 10
)

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// uploadPath is where an uploaded file lives; its id is its SHA-256.
func (a *Agent) uploadPath(id string) string {
	return filepath.Join(a.cfg.StateDir, uploadsDir, id)
}

// UploadFile implements pb.AgentServer. The file is checked against the
// header's length and SHA-256 before it is kept; its id is the digest, so
// uploading the same package twice stores it once.
func (a *Agent) UploadFile(stream pb.Agent_UploadFileServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	h := first.GetHeader()
	if h == nil {
		return status.Error(codes.InvalidArgument, "the first message must be the header")
	}
	want := strings.ToLower(h.GetSha256())
	if !sha256RE.MatchString(want) || h.GetSizeBytes() < 0 || h.GetSizeBytes() > maxUploadSize {
		return status.Errorf(codes.InvalidArgument, "header: want a SHA-256 in hex and a size of at most %d bytes", int64(maxUploadSize))
	}
	dir := filepath.Join(a.cfg.StateDir, uploadsDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return status.Errorf(codes.Internal, "uploads: %v", err)
	}
	tmp, err := os.CreateTemp(dir, ".upload-*")
	if err != nil {
		return status.Errorf(codes.Internal, "uploads: %v", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	sum := sha256.New()
	var n int64
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		n += int64(len(msg.GetData()))
		if n > h.GetSizeBytes() {
			return status.Errorf(codes.InvalidArgument, "more data than the %d bytes the header announced", h.GetSizeBytes())
		}
		sum.Write(msg.GetData())
		if _, err := tmp.Write(msg.GetData()); err != nil {
			return status.Errorf(codes.Internal, "uploads: %v", err)
		}
	}
	got := hex.EncodeToString(sum.Sum(nil))
	if n != h.GetSizeBytes() || got != want {
		return status.Errorf(codes.DataLoss, "received %d bytes with SHA-256 %s, the header said %d bytes with %s", n, got, h.GetSizeBytes(), want)
	}
	if err := tmp.Sync(); err != nil {
		return status.Errorf(codes.Internal, "uploads: %v", err)
	}
	if err := os.Rename(tmp.Name(), a.uploadPath(got)); err != nil {
		return status.Errorf(codes.Internal, "uploads: %v", err)
	}
	return stream.SendAndClose(&pb.UploadFileResponse{FileId: got, SizeBytes: n, Sha256: got})
}

// DownloadFile implements pb.AgentServer: an artifact the step declared.
func (a *Agent) DownloadFile(req *pb.DownloadFileRequest, stream pb.Agent_DownloadFileServer) error {
	s, err := a.find(req.GetTicket())
	if err != nil {
		return err
	}
	s.mu.Lock()
	var art *artifact
	for i := range s.rec.Artifacts {
		if s.rec.Artifacts[i].Path == req.GetPath() {
			art = &s.rec.Artifacts[i]
		}
	}
	dir, completed := s.rec.StepDir, s.rec.Completed
	s.mu.Unlock()
	if art == nil || completed {
		return status.Errorf(codes.NotFound, "step %s has no artifact %q (artifacts are kept until CompleteStep)", req.GetTicket(), req.GetPath())
	}
	f, err := openInside(filepath.Join(dir, stepspec.WorkDir), art.Path)
	if err != nil {
		return status.Errorf(codes.NotFound, "artifact %s: %v", art.Path, err)
	}
	defer f.Close()
	if err := stream.Send(&pb.DownloadFileChunk{Part: &pb.DownloadFileChunk_Header{Header: &pb.FileHeader{Name: art.Name, SizeBytes: art.Size, Sha256: art.SHA256}}}); err != nil {
		return err
	}
	buf := make([]byte, chunkSize)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if err := stream.Send(&pb.DownloadFileChunk{Part: &pb.DownloadFileChunk_Data{Data: buf[:n]}}); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return status.Errorf(codes.Internal, "artifact %s: %v", art.Path, err)
		}
	}
}

// openInside opens rel under root, refusing a path that leaves root through
// "..", an absolute path or a symbolic link: the script may have planted a
// link to a file of the host. O_NONBLOCK: opening a FIFO the script
// planted must not block the agent; it is then refused as not regular.
func openInside(root, rel string) (*os.File, error) {
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	f, err := r.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", rel)
	}
	return f, nil
}

// finalizeArtifactsLocked measures the declared artifacts once the step has
// ended; one that is missing or escapes the workspace is dropped, and said so.
func (s *step) finalizeArtifactsLocked() {
	work := filepath.Join(s.rec.StepDir, stepspec.WorkDir)
	kept := s.rec.Artifacts[:0]
	for _, art := range s.rec.Artifacts {
		f, err := openInside(work, art.Path)
		if err != nil {
			s.rec.PostLines = append(s.rec.PostLines, agentLine{Time: nowUTC(), Text: fmt.Sprintf("artifact %q not kept: %v", art.Name, err)})
			continue
		}
		h := sha256.New()
		n, err := io.Copy(h, f)
		f.Close()
		if err != nil {
			s.rec.PostLines = append(s.rec.PostLines, agentLine{Time: nowUTC(), Text: fmt.Sprintf("artifact %q not kept: %v", art.Name, err)})
			continue
		}
		art.Size, art.SHA256 = n, hex.EncodeToString(h.Sum(nil))
		kept = append(kept, art)
	}
	s.rec.Artifacts = kept
}
