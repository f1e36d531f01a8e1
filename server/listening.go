package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	pb "stevedore/proto/stevedore/v1"
	"stevedore/transport"
)

// ErrWorkerExists: another worker has the name.
var ErrWorkerExists = errors.New("a worker with that name exists")

// RegisterListening adds a listening worker: the server dials it at addr,
// presenting its own identity and accepting the worker only if its
// certificate has thumbprint. The registration is durable; the server
// keeps the connection up and the worker's steps wait while it is down.
func (s *Server) RegisterListening(name, addr, thumbprint string) error {
	tp, err := transport.ParseThumbprint(thumbprint)
	if err != nil {
		return err
	}
	if name == "" || addr == "" {
		return errors.New("a listening worker needs a name and an address")
	}
	rec := WorkerRecord{Name: name, Thumbprint: tp, Address: addr}
	s.mu.Lock()
	if w := s.workers[name]; w != nil {
		s.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrWorkerExists, name)
	}
	w := newWorker(rec)
	s.workers[name] = w
	s.mu.Unlock()
	if err := s.db.PutWorker(rec); err != nil {
		return err
	}
	go s.keepListening(w)
	return nil
}

// keepListening holds a gRPC connection to a listening worker (grpc-go
// redials by itself) and marks the worker connected while the connection
// is ready and its capabilities are known.
func (s *Server) keepListening(w *worker) {
	log := s.log.With("worker", w.rec.Name, "address", w.rec.Address)
	// Until the server stops or the worker is forgotten.
	ctx, stop := context.WithCancel(s.ctx)
	defer stop()
	go func() {
		select {
		case <-w.gone:
			stop()
		case <-ctx.Done():
		}
	}()
	conn, err := transport.Dial(w.rec.Address, s.cfg.Identity, w.rec.Thumbprint)
	if err != nil {
		log.Error("cannot dial the listening worker", "error", err)
		return
	}
	defer conn.Close()
	client := pb.NewAgentClient(conn)
	for ctx.Err() == nil {
		askCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		caps, err := client.GetCapabilities(askCtx, &pb.GetCapabilitiesRequest{}, grpc.WaitForReady(true))
		cancel()
		if err != nil {
			log.Debug("listening worker not reachable yet", "error", err)
			select {
			case <-time.After(2 * time.Second):
			case <-ctx.Done():
			}
			continue
		}
		done := make(chan struct{})
		s.connect(w, client, done, caps)
		log.Info("worker connected", "slots", caps.GetMaxConcurrentSteps(), "pools", caps.GetPools())
		// Connected until the connection leaves READY.
		for conn.GetState() == connectivity.Ready || conn.GetState() == connectivity.Idle {
			if !conn.WaitForStateChange(ctx, conn.GetState()) {
				break
			}
		}
		s.disconnect(w, done)
		close(done)
		log.Info("worker disconnected; redialing")
	}
}
