package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "stevedore/proto/stevedore/v1"
)

// ErrWorkerConnected: a connected worker cannot be forgotten; stop its
// agent, or distrust its thumbprint, first.
var ErrWorkerConnected = errors.New("the worker is connected")

// collectWait bounds how long the server waits for an abandoned step to
// end on its returned worker after cancelling it.
const collectWait = 2 * time.Minute

// Why a step went back to the queue, the label of steps_requeued_total.
const (
	requeueWorkerGone = "worker_gone"
	requeueRefused    = "not_accepting"
)

// requeue puts a step back in the queue that its worker never took (it
// went away before the step was sent, or refused it for what the worker
// is now): it never ran, so another worker may run it.
func (s *Server) requeue(rec StepRecord, label string, why error) {
	worker := rec.Assigned
	rec.State, rec.Assigned, rec.StartedAt, rec.Node = StateQueued, "", time.Time{}, ""
	if err := s.putStep(rec); err != nil {
		s.log.Error("cannot queue a step again", "step", rec.ID, "error", err)
		return
	}
	s.metrics.requeued.WithLabelValues(label).Inc()
	s.log.Info("step queued again: its worker did not take it", "step", rec.ID, "worker", worker, "why", why)
}

// abandon records that rec, ended LOST, may still be on its worker.
func (s *Server) abandon(rec StepRecord) {
	if err := s.db.Abandon(rec.ID, rec.Assigned); err != nil {
		s.log.Warn("cannot record an abandoned step; its worker's reaper will remove it", "step", rec.ID, "error", err)
	}
}

// collectAbandoned cancels and collects, on a worker that came back, the
// steps the server ended LOST while it was away, so that none runs on
// unseen. A step the worker does not know is simply forgotten; one that
// fails to end stays for the worker's next connection.
func (s *Server) collectAbandoned(w *worker, client pb.AgentClient) {
	tickets, err := s.db.AbandonedOn(w.rec.Name)
	if err != nil {
		s.log.Warn("cannot read the abandoned steps of a returned worker", "worker", w.rec.Name, "error", err)
	}
	for _, ticket := range tickets {
		log := s.log.With("step", ticket, "worker", w.rec.Name)
		if err := collect(s.ctx, client, ticket); err != nil {
			log.Warn("cannot collect an abandoned step yet", "error", err)
			continue
		}
		if err := s.db.ForgetAbandoned(ticket); err != nil {
			log.Warn("cannot forget an abandoned step", "error", err)
			continue
		}
		log.Info("abandoned step cancelled and collected on its returned worker")
	}
}

// collect cancels ticket on client, waits for it to end and completes it.
func collect(ctx context.Context, client pb.AgentClient, ticket string) error {
	ctx, cancel := context.WithTimeout(ctx, collectWait)
	defer cancel()
	if _, err := client.CancelStep(ctx, &pb.CancelStepRequest{Ticket: ticket}); status.Code(err) == codes.NotFound {
		return nil
	} else if err != nil {
		return fmt.Errorf("cancel: %w", err)
	}
	for {
		st, err := client.GetStatus(ctx, &pb.GetStatusRequest{Ticket: ticket, AfterSequence: ^uint64(0) >> 1, Wait: durationpb.New(30 * time.Second)})
		if status.Code(err) == codes.NotFound {
			return nil
		} else if err != nil {
			return fmt.Errorf("status: %w", err)
		}
		if st.GetState() == pb.StepState_STEP_STATE_COMPLETE {
			break
		}
	}
	if _, err := client.CompleteStep(ctx, &pb.CompleteStepRequest{Ticket: ticket, AfterSequence: ^uint64(0) >> 1}); err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("complete: %w", err)
	}
	return nil
}

// ForgetWorker removes a worker that is not connected (a cloud worker
// scaled in, say): its running steps end LOST at once, or are queued again
// if they were never sent; its thumbprint stays trusted. Idempotent but
// for ErrUnknownWorker.
func (s *Server) ForgetWorker(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.workers[name]
	if w == nil {
		return fmt.Errorf("%w: %s", ErrUnknownWorker, name)
	}
	w.mu.Lock()
	connected := w.client != nil
	if !connected {
		w.forgotten = true
		close(w.gone)
	}
	w.mu.Unlock()
	if connected {
		return fmt.Errorf("%w: %s (stop its agent or distrust its thumbprint first)", ErrWorkerConnected, name)
	}
	delete(s.workers, name)
	delete(s.listening, name)
	if err := s.db.DeleteWorker(name); err != nil {
		return err
	}
	s.log.Info("worker forgotten", "worker", name)
	return nil
}

func (s *Server) apiForgetWorker(w http.ResponseWriter, r *http.Request) {
	err := s.ForgetWorker(r.PathValue("name"))
	switch {
	case errors.Is(err, ErrUnknownWorker):
		apiError(w, http.StatusNotFound, err)
	case errors.Is(err, ErrWorkerConnected):
		apiError(w, http.StatusConflict, err)
	case err != nil:
		apiError(w, http.StatusInternalServerError, err)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}
