package server

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"stevedore/internal/version"
	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

// dispatchLoop gives queued steps, oldest first, to connected workers with
// a free slot; it runs whenever a step is queued or ends, or a worker
// connects.
func (s *Server) dispatchLoop() {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.wake:
		case <-tick.C:
		}
		s.dispatch()
	}
}

func (s *Server) dispatch() {
	s.dispatchMu.Lock()
	defer s.dispatchMu.Unlock()
	now := time.Now()
	for _, rec := range s.queued() {
		if !rec.QueueDeadline.IsZero() && now.After(rec.QueueDeadline) {
			s.mu.Lock()
			why := cmp.Or(s.waiting[rec.ID], "no worker took it")
			s.mu.Unlock()
			_, err := s.endQueued(rec.ID, false, "TIMED_OUT", fmt.Sprintf("no worker took the step within %s of its submission: %s",
				rec.QueueDeadline.Sub(rec.CreatedAt).Round(time.Second), why))
			if err != nil && !errors.Is(err, errStateChanged) {
				s.log.Error("cannot end a step that timed out in the queue", "step", rec.ID, "error", err)
			}
			continue
		}
		w := s.pick(rec)
		if w == nil {
			continue
		}
		// Held before it is claimed: a takeover looking at the claimed
		// step must find it held.
		ctx, h, ok := s.tryHold(rec.ID)
		var claimed StepRecord
		err := errStateChanged // its last driver here is still ending
		if ok {
			if claimed, err = s.claim(rec.ID, w.rec.Name); err != nil {
				s.unhold(rec.ID, h)
			}
		}
		if err != nil {
			if !errors.Is(err, errStateChanged) {
				s.log.Error("cannot record a dispatch", "step", rec.ID, "error", err)
			}
			w.mu.Lock()
			w.inflight--
			w.mu.Unlock()
			continue
		}
		s.log.Info("step dispatched", "step", rec.ID, "worker", w.rec.Name)
		s.startDriving(ctx, h, claimed, w, false)
	}
}

// pick reserves a slot on a connected worker serving rec: one that has
// the step's image cached first, so that it need not pull, then the least
// busy; a worker never gets more steps than its slots. When there is
// none, it records why, for the API to show.
func (s *Server) pick(rec StepRecord) *worker {
	s.mu.Lock()
	defer s.mu.Unlock()
	var best *worker
	bestLoad, bestCached := 0, false
	image := ""
	if rec.Image != "" {
		image = normalImage(rec.Image)
	}
	var known, serving, connected, compatible, capable, accepting int
	refusal := ""
	for _, w := range s.workers {
		// Pools and labels change with capabilities, under w.mu.
		w.mu.Lock()
		in, labelled := w.inTarget(rec), w.hasLabels(rec.Labels)
		if !in || !labelled {
			w.mu.Unlock()
			if in {
				known++
			}
			continue
		}
		known++
		serving++
		up := w.client != nil
		docker := w.caps.GetDocker().GetAvailable()
		free := up && w.inflight < w.slots
		load := w.inflight
		speaks := incompatible(w.caps) == ""
		cached := image != "" && w.images[image]
		notAccepting := w.caps.GetNotAccepting()
		w.mu.Unlock()
		if up {
			connected++
			if speaks {
				compatible++
			}
		}
		if !speaks || rec.Image != "" && !docker {
			continue
		}
		if !up {
			continue
		}
		capable++
		if notAccepting != "" {
			refusal = w.rec.Name + ": " + notAccepting // the name never changes
			continue
		}
		accepting++
		if free && (best == nil || cached && !bestCached || cached == bestCached && load < bestLoad) {
			best, bestLoad, bestCached = w, load, cached
		}
	}
	if best != nil {
		delete(s.waiting, rec.ID)
		best.mu.Lock()
		best.inflight++
		best.mu.Unlock()
		return best
	}
	target := "pool " + rec.Pool
	if rec.Worker != "" {
		target = "worker " + rec.Worker
	}
	switch {
	case known == 0:
		s.waiting[rec.ID] = "no worker of " + target + " is known yet"
	case serving == 0:
		s.waiting[rec.ID] = "no worker of " + target + " has the labels " + labelList(rec.Labels)
	case connected == 0:
		s.waiting[rec.ID] = "no worker of " + target + " is connected"
	case compatible == 0:
		s.waiting[rec.ID] = fmt.Sprintf("no connected worker of %s speaks this server's wire protocol %d: upgrade them (see GET /api/workers)", target, version.Protocol)
	case capable == 0:
		s.waiting[rec.ID] = "no connected worker of " + target + " has a Docker Engine available for a container step"
	case accepting == 0:
		s.waiting[rec.ID] = "no capable worker of " + target + " takes new steps now (" + refusal + ")"
	default:
		s.waiting[rec.ID] = "every capable worker of " + target + " is busy: waiting for a free slot"
	}
	return nil
}

// waitingFor says why a queued step waits, if dispatch has looked at it.
func (s *Server) waitingFor(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiting[id]
}

// drive runs a dispatched step on its worker to the end: StartStep (by
// ticket, so repeating it never runs the step twice), GetStatus from the
// cursor, each batch stored in the task log before the cursor moves, then
// artifacts and CompleteStep. A lost connection waits for the worker's
// next, up to Config.WorkerLostAfter; then a step that was never sent is
// queued again, and one that may have been ends LOST. resumed: an earlier
// server process drove the step, and may have sent it.
// ctx ends when the server closes or the step is no longer this node's.
func (s *Server) drive(ctx context.Context, rec StepRecord, w *worker, resumed bool) {
	log := s.log.With("step", rec.ID, "worker", rec.Assigned)
	// The slot is given back before the step's end is recorded, so that
	// whoever sees the step complete also sees its worker's slot free.
	requeued := false
	release := sync.OnceFunc(func() {
		if w != nil {
			w.mu.Lock()
			w.inflight--
			w.mu.Unlock()
		}
		if !requeued { // a new driver may have the step, and its cancel signal, by now
			s.mu.Lock()
			delete(s.cancels, rec.ID)
			s.mu.Unlock()
		}
		s.kick()
	})
	defer release()
	finish := func(rec StepRecord, code *int32, outcome, reason string) {
		release()
		s.finish(rec, code, outcome, reason)
	}
	// requeue gives back a step the worker never took, unless it is to be
	// cancelled: then it ends here.
	requeue := func(label string, why error) {
		if s.cancelRequested(rec.ID) {
			finish(rec, nil, "CANCELLED", "cancelled before a worker took it")
			return
		}
		s.mu.Lock()
		delete(s.cancels, rec.ID)
		s.mu.Unlock()
		requeued = true
		s.requeue(rec, label, why) // the deferred release lets dispatch see it
	}
	if w == nil {
		finish(rec, nil, "AGENT_ERROR", "the assigned worker is unknown to this server")
		return
	}
	plain, err := s.keys.Open(rec.Sealed)
	if err != nil {
		finish(rec, nil, "AGENT_ERROR", fmt.Sprintf("the step's request cannot be opened: %v", err))
		return
	}
	req := &pb.StartStepRequest{}
	if err := proto.Unmarshal(plain, req); err != nil {
		finish(rec, nil, "AGENT_ERROR", fmt.Sprintf("the step's request is unreadable: %v", err))
		return
	}
	tl, err := openTaskLog(s.TaskLogPath(rec.ID))
	if err != nil {
		finish(rec, nil, "AGENT_ERROR", err.Error())
		return
	}
	// The file is the truth: lines stored before a crash moved the cursor
	// are not asked for again.
	rec.Cursor = max(rec.Cursor, tl.last)
	started, cancelSent, sent := false, false, resumed
	for ctx.Err() == nil {
		client, done, err := w.waitClient(ctx, s.cfg.WorkerLostAfter)
		if errors.Is(err, errWorkerGone) {
			if !sent {
				requeue(requeueWorkerGone, err)
				return
			}
			s.abandon(rec)
			// Back just now? Then its connect may have looked before the
			// step was abandoned: collect it on this connection.
			w.mu.Lock()
			c := w.client
			w.mu.Unlock()
			if c != nil {
				go s.collectAbandoned(w, c)
			}
			finish(rec, nil, "LOST", err.Error()+": how the step ended is unknown")
			return
		}
		if err != nil {
			return
		}
		if !cancelSent && s.cancelRequested(rec.ID) {
			_, err := client.CancelStep(ctx, &pb.CancelStepRequest{Ticket: rec.ID})
			switch {
			case status.Code(err) == codes.NotFound && !started:
				// Never reached the worker (a restart may have hidden
				// whether it did; the worker's answer settles it).
				finish(rec, nil, "CANCELLED", "cancelled before it started on the worker")
				return
			case err != nil && retryable(err):
				s.pause(ctx, done)
				continue
			case err != nil && status.Code(err) != codes.NotFound:
				log.Warn("the worker refused to cancel the step", "error", err)
			}
			cancelSent, started = true, true
			log.Info("step cancelled on its worker")
		}
		if !started {
			sent = true
			if _, err := client.StartStep(ctx, req); err != nil {
				if transport.IsNotAccepting(err) {
					// Draining, or low on disk: it recorded nothing, so
					// another worker may run the step.
					w.refuses(status.Convert(err).Message())
					requeue(requeueRefused, err)
					return
				}
				if retryable(err) {
					s.pause(ctx, done)
					continue
				}
				finish(rec, nil, "AGENT_ERROR", fmt.Sprintf("the worker refused the step: %v", err))
				return
			}
			started = true
		}
		st, err := s.getStatus(ctx, client, rec, cancelSent)
		if err != nil {
			if ctx.Err() == nil && !cancelSent && s.cancelRequested(rec.ID) {
				continue // woken to send the cancel
			}
			if status.Code(err) == codes.NotFound {
				finish(rec, nil, "LOST", "the worker no longer knows the step")
				return
			}
			if retryable(err) {
				log.Debug("lost the worker mid-step; waiting for its next connection", "error", err)
				s.pause(ctx, done)
				continue
			}
			finish(rec, nil, "AGENT_ERROR", err.Error())
			return
		}
		if rec, err = s.store(tl, rec, st.GetLines()); err != nil {
			if errors.Is(err, errLeaseLost) {
				log.Info("the step is driven by another server node now: this one stops")
				return
			}
			log.Error("cannot store the step's log", "error", err)
			time.Sleep(time.Second)
			continue
		}
		if st.GetState() == pb.StepState_STEP_STATE_COMPLETE && rec.Cursor+1 >= st.GetNextSequence() {
			if rec.Image != "" {
				// It may have cached the image: dispatch should know
				// before the step's slot is free again.
				s.askCaps(w, client)
			}
			s.complete(ctx, client, tl, rec, st, finish)
			return
		}
	}
}

// getStatus long-polls the step's status; a cancel request ends the wait
// early so that it reaches the worker at once.
func (s *Server) getStatus(ctx context.Context, client pb.AgentClient, rec StepRecord, cancelSent bool) (*pb.StepStatus, error) {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	if !cancelSent {
		ch := s.cancelSignal(rec.ID)
		if s.cancelRequested(rec.ID) {
			stop() // requested before the channel existed
		}
		go func() {
			select {
			case <-ch:
				stop()
			case <-ctx.Done():
			}
		}()
	}
	return client.GetStatus(ctx, &pb.GetStatusRequest{Ticket: rec.ID, AfterSequence: rec.Cursor, Wait: durationpb.New(30 * time.Second)})
}

func (s *Server) cancelRequested(id string) bool {
	asked, err := s.db.CancelRequested(id)
	if err != nil {
		s.log.Warn("cannot read whether a step's cancel was asked for", "step", id, "error", err)
	}
	return asked
}

// pause waits a moment for a failing connection to be noticed as gone.
func (s *Server) pause(ctx context.Context, done <-chan struct{}) {
	select {
	case <-done:
	case <-time.After(time.Second):
	case <-ctx.Done():
	}
}

func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.Canceled, codes.DeadlineExceeded, codes.Unknown:
		return true
	}
	return false
}

// store appends lines to the task log and then moves the cursor.
func (s *Server) store(tl *taskLog, rec StepRecord, lines []*pb.LogLine) (StepRecord, error) {
	if len(lines) == 0 {
		return rec, nil
	}
	last, err := tl.append(lines)
	if err != nil {
		return rec, err
	}
	if last != rec.Cursor {
		s.metrics.logLines.Add(float64(last - rec.Cursor))
		rec.Cursor = last
		if err := s.putStep(rec); err != nil {
			return rec, err
		}
	}
	return rec, nil
}

// complete downloads the artifacts, completes the step on the worker and
// records its end.
func (s *Server) complete(ctx context.Context, client pb.AgentClient, tl *taskLog, rec StepRecord, st *pb.StepStatus, finish func(StepRecord, *int32, string, string)) {
	dir := filepath.Join(s.cfg.ArtifactsDir, rec.ID)
	s.recordOutputs(&rec, st.GetOutputVariables())
	rec.Artifacts = nil
	for _, a := range st.GetArtifacts() {
		art, err := s.download(ctx, client, rec.ID, a, dir)
		if err != nil {
			s.log.Warn("artifact not downloaded", "step", rec.ID, "artifact", a.GetName(), "error", err)
			continue
		}
		rec.Artifacts = append(rec.Artifacts, art)
	}
	for {
		done, err := client.CompleteStep(ctx, &pb.CompleteStepRequest{Ticket: rec.ID, AfterSequence: rec.Cursor})
		if err != nil {
			s.log.Warn("CompleteStep failed; the worker will clean up by retention", "step", rec.ID, "error", err)
			break
		}
		var serr error
		if rec, serr = s.store(tl, rec, done.GetLines()); serr != nil || len(done.GetLines()) == 0 || rec.Cursor+1 >= done.GetNextSequence() {
			break
		}
	}
	rec.ExitCode, rec.Signal = st.ExitCode, st.GetSignal()
	finish(rec, rec.ExitCode, strings.TrimPrefix(st.GetOutcome().String(), "OUTCOME_"), st.GetReason())
}

func (s *Server) finish(rec StepRecord, code *int32, outcome, reason string) {
	rec.State, rec.Outcome, rec.ExitCode, rec.Reason, rec.FinishedAt = StateComplete, outcome, code, reason, time.Now().UTC()
	switch err := s.putStep(rec); {
	case errors.Is(err, errLeaseLost):
		s.log.Warn("the step's end is not recorded here: another server node drives it now", "step", rec.ID, "outcome", outcome)
		return
	case err != nil:
		s.log.Error("cannot record the step's end", "step", rec.ID, "error", err)
	}
	s.ended(rec)
}

// ended counts and logs a step's end.
func (s *Server) ended(rec StepRecord) {
	s.metrics.completed.WithLabelValues(rec.Outcome).Inc()
	s.log.Info("step complete", "step", rec.ID, "outcome", rec.Outcome, "reason", rec.Reason)
}

func (s *Server) download(ctx context.Context, client pb.AgentClient, id string, a *pb.Artifact, dir string) (Artifact, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Artifact{}, err
	}
	name := filepath.Base(filepath.Clean("/" + a.GetName()))
	path := filepath.Join(dir, name)
	stream, err := client.DownloadFile(ctx, &pb.DownloadFileRequest{Ticket: id, Path: a.GetPath()})
	if err != nil {
		return Artifact{}, err
	}
	f, err := os.Create(path)
	if err != nil {
		return Artifact{}, err
	}
	defer f.Close()
	h := sha256.New()
	var n int64
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Artifact{}, err
		}
		if d := msg.GetData(); d != nil {
			h.Write(d)
			if _, err := f.Write(d); err != nil {
				return Artifact{}, err
			}
			n += int64(len(d))
		}
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if sum != a.GetSha256() || n != a.GetSizeBytes() {
		return Artifact{}, fmt.Errorf("downloaded %d bytes with SHA-256 %s, want %d with %s", n, sum, a.GetSizeBytes(), a.GetSha256())
	}
	return Artifact{Name: a.GetName(), Path: a.GetPath(), File: path, Size: n, SHA256: sum}, f.Sync()
}
