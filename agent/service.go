package agent

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/registry"
	"stevedore/transport"
)

// Bounds of one status reply, well under the gRPC message limit.
const (
	maxReplyLines = 5000
	maxReplyBytes = 4 << 20
	// maxWait caps a long-poll, so a vanished caller's call ends.
	maxWait = 60 * time.Second
)

// StartStep implements pb.AgentServer.
func (a *Agent) StartStep(ctx context.Context, req *pb.StartStepRequest) (*pb.StepStatus, error) {
	if err := validateStart(req); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if c := req.GetExecution().GetContainer(); c != nil && a.lookup(req.GetTicket()) == nil {
		if err := registry.CheckAllowed(a.cfg.Images.AllowedImages, c.GetImage()); err != nil {
			return nil, status.Error(codes.PermissionDenied, err.Error())
		}
		if err := a.checkFeed(c); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	if a.lookup(req.GetTicket()) == nil {
		// An upload that is not here fails now, not half-way into the step.
		for i, f := range req.GetFiles() {
			if id := f.GetFileId(); id != "" {
				if _, err := os.Stat(a.uploadPath(id)); err != nil {
					return nil, status.Errorf(codes.FailedPrecondition, "files[%d] (%s): file_id %s was not uploaded to this agent: call UploadFile first", i, f.GetPath(), id)
				}
			}
		}
	}
	s, err := a.accept(req)
	if err != nil {
		return nil, err
	}
	if w := req.GetWait().AsDuration(); w > 0 {
		wctx, cancel := context.WithTimeout(ctx, min(w, maxWait))
		defer cancel()
		select {
		case <-s.done:
		case <-wctx.Done():
		}
	}
	return a.status(s, 0, true)
}

// accept records the step durably and starts it, or returns the step
// already recorded under the ticket.
func (a *Agent) accept(req *pb.StartStepRequest) (*step, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s := a.steps[req.GetTicket()]; s != nil {
		return s, nil
	}
	if a.refusing != "" {
		return nil, transport.NotAccepting(codes.Unavailable, a.refusing)
	}
	// Under a.mu, after the lookup: a retried StartStep racing the first
	// is answered with the step, never refused for the disk.
	if err := a.checkDisk(); err != nil {
		return nil, transport.NotAccepting(codes.ResourceExhausted, err.Error())
	}
	stepKey := make([]byte, 32)
	if _, err := rand.Read(stepKey); err != nil {
		return nil, status.Errorf(codes.Internal, "step key: %v", err)
	}
	sec := stepSecrets{StepKey: stepKey}
	public := proto.Clone(req).(*pb.StartStepRequest)
	for _, v := range public.GetVariables() {
		if v.GetSensitive() {
			sec.Variables = append(sec.Variables, secretVariable{Name: v.GetName(), Value: v.GetValue()})
			v.Value = ""
		}
	}
	if cr := public.GetExecution().GetContainer().GetCredentials(); cr != nil {
		sec.RegistryPwd, sec.RegistryTok = cr.GetPassword(), cr.GetIdentityToken()
		cr.Password, cr.IdentityToken = "", ""
	}
	public.Wait = nil
	plain, err := json.Marshal(sec)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "secrets: %v", err)
	}
	sealed, err := a.keys.seal(plain)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "seal secrets: %v", err)
	}
	reqBytes, err := proto.Marshal(public)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode request: %v", err)
	}
	rec := stepRecord{
		Ticket: req.GetTicket(), TaskID: req.GetTaskId(), StepName: req.GetStepName(),
		Request: reqBytes, Sealed: sealed,
		StepDir:   filepath.Join(a.cfg.StateDir, stepsDir, req.GetTicket()),
		State:     pb.StepState_STEP_STATE_PENDING,
		CreatedAt: time.Now().UTC(),
	}
	created, err := a.journal.create(&rec)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "journal: %v", err)
	}
	if !created {
		return nil, status.Errorf(codes.Internal, "ticket %s is in the journal but not in memory", req.GetTicket())
	}
	s := a.newStep(rec)
	s.secrets = &sec
	a.steps[rec.Ticket] = s
	a.metrics.stepsStarted.Inc()
	a.log.Info("step accepted", "ticket", rec.Ticket, "task_id", rec.TaskID, "image_ref", req.GetExecution().GetContainer().GetImage())
	go a.run(s)
	return s, nil
}

// GetStatus implements pb.AgentServer.
func (a *Agent) GetStatus(ctx context.Context, req *pb.GetStatusRequest) (*pb.StepStatus, error) {
	s, err := a.find(req.GetTicket())
	if err != nil {
		return nil, err
	}
	wait := min(req.GetWait().AsDuration(), maxWait)
	deadline := time.Now().Add(wait)
	for {
		s.mu.Lock()
		changed := s.changed
		have := s.lastSeqLocked() > req.GetAfterSequence()
		complete := s.rec.State == pb.StepState_STEP_STATE_COMPLETE
		s.mu.Unlock()
		left := time.Until(deadline)
		if have || complete || left <= 0 {
			return a.status(s, req.GetAfterSequence(), true)
		}
		t := time.NewTimer(left)
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		t.Stop()
	}
}

// CancelStep implements pb.AgentServer.
func (a *Agent) CancelStep(_ context.Context, req *pb.CancelStepRequest) (*pb.StepStatus, error) {
	s, err := a.find(req.GetTicket())
	if err != nil {
		return nil, err
	}
	a.stop(s, pb.Outcome_OUTCOME_CANCELLED, "cancelled by the server")
	return a.status(s, 0, false)
}

// CompleteStep implements pb.AgentServer.
func (a *Agent) CompleteStep(ctx context.Context, req *pb.CompleteStepRequest) (*pb.StepStatus, error) {
	s, err := a.find(req.GetTicket())
	if err != nil {
		return nil, err
	}
	a.stop(s, pb.Outcome_OUTCOME_CANCELLED, "completed by the server while running")
	select {
	case <-s.done:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	st, err := a.status(s, req.GetAfterSequence(), true)
	if err != nil {
		return nil, err
	}
	n := len(st.GetLines())
	if n > 0 && st.Lines[n-1].GetSequence()+1 < st.GetNextSequence() {
		return st, nil // more lines than fit: the caller asks again from the last
	}
	if err := a.removeStep(ctx, s); err != nil {
		return nil, status.Errorf(codes.Internal, "remove step %s: %v", s.rec.Ticket, err)
	}
	return st, nil
}

// removeStep removes the step's container and directory and keeps a tombstone.
func (a *Agent) removeStep(ctx context.Context, s *step) error {
	s.mu.Lock()
	if s.rec.Completed {
		s.mu.Unlock()
		return nil
	}
	rec := s.rec
	s.mu.Unlock()
	req := &pb.StartStepRequest{}
	if err := proto.Unmarshal(rec.Request, req); err == nil {
		spec := a.execSpec(s, req, &stepSecrets{})
		if ex, err := a.executorFor(ctx, &rec, req); err == nil {
			if err := ex.Remove(ctx, spec); err != nil {
				return err
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log != nil {
		s.log.close()
	}
	if err := os.RemoveAll(rec.StepDir); err != nil {
		return fmt.Errorf("remove %s: %w", rec.StepDir, err)
	}
	s.rec.Completed = true
	s.rec.RemovedAt = time.Now().UTC()
	s.rec.PreLines, s.rec.PostLines = nil, nil
	s.persistLocked()
	a.log.Debug("step removed", "ticket", rec.Ticket)
	return nil
}

func (a *Agent) find(ticket string) (*step, error) {
	if s := a.lookup(ticket); s != nil {
		return s, nil
	}
	return nil, status.Errorf(codes.NotFound, "no step with ticket %q on this agent", ticket)
}

// status assembles a StepStatus with the lines after after.
func (a *Agent) status(s *step, after uint64, withLines bool) (*pb.StepStatus, error) {
	s.mu.Lock()
	rec := s.rec // a copy: the slices are only ever appended to
	rl := s.log
	last := s.lastSeqLocked()
	s.mu.Unlock()

	st := &pb.StepStatus{
		Ticket: rec.Ticket, State: rec.State, Outcome: rec.Outcome,
		ExitCode: rec.ExitCode, Signal: rec.Signal, Reason: rec.Reason,
		NextSequence: last + 1, ImageId: rec.ImageID,
		CreatedAt: timestamppb.New(rec.CreatedAt),
	}
	if !rec.StartedAt.IsZero() {
		st.StartedAt = timestamppb.New(rec.StartedAt)
	}
	if !rec.FinishedAt.IsZero() {
		st.FinishedAt = timestamppb.New(rec.FinishedAt)
	}
	if rec.Completed || !withLines || after == math.MaxUint64 {
		return a.withOutputs(st, &rec)
	}
	add := func(seq uint64, l agentLine) {
		st.Lines = append(st.Lines, &pb.LogLine{Sequence: seq, Source: pb.LogSource_LOG_SOURCE_AGENT, Time: timestamppb.New(l.Time), Text: []byte(l.Text)})
	}
	pre := uint64(len(rec.PreLines))
	for seq := after + 1; seq <= pre && len(st.Lines) < maxReplyLines; seq++ {
		add(seq, rec.PreLines[seq-1])
	}
	runnerLast := pre
	if rec.RunnerStarted && rl != nil {
		lines, err := rl.read(max(after, pre), maxReplyLines-len(st.Lines), maxReplyBytes)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "step %s log: %v", rec.Ticket, err)
		}
		st.Lines = append(st.Lines, lines...)
		runnerLast = rl.lastSeq()
		if rec.RunnerLast > 0 {
			runnerLast = rec.RunnerLast
		}
	}
	if rec.State == pb.StepState_STEP_STATE_COMPLETE && len(st.Lines) < maxReplyLines {
		if n := len(st.Lines); n == 0 || st.Lines[n-1].Sequence >= runnerLast {
			for i, l := range rec.PostLines {
				if seq := runnerLast + 1 + uint64(i); seq > after {
					add(seq, l)
				}
			}
		}
	}
	return a.withOutputs(st, &rec)
}

func (a *Agent) withOutputs(st *pb.StepStatus, rec *stepRecord) (*pb.StepStatus, error) {
	if rec.State != pb.StepState_STEP_STATE_COMPLETE {
		return st, nil
	}
	for _, v := range rec.OutputVariables {
		value := v.Value
		if v.Sensitive {
			plain, err := a.keys.open(v.SealedValue)
			if err != nil {
				return nil, status.Errorf(codes.Internal, "output variable %s: %v", v.Name, err)
			}
			value = string(plain)
		}
		st.OutputVariables = append(st.OutputVariables, &pb.OutputVariable{Name: v.Name, Value: value, Sensitive: v.Sensitive})
	}
	for _, art := range rec.Artifacts {
		st.Artifacts = append(st.Artifacts, &pb.Artifact{Name: art.Name, Path: art.Path, SizeBytes: art.Size, Sha256: art.SHA256})
	}
	return st, nil
}
