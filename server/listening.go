package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
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
	s.listen(w)
	return nil
}

// keepListening holds a gRPC connection to a listening worker (grpc-go
// redials by itself) and marks the worker connected while the connection
// is ready and its capabilities are known. With several nodes on one
// database only the node holding the worker's lease connects, so that the
// worker's slots are filled by one dispatcher; another node takes the
// lease when that one stops renewing it.
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
		held, release := s.holdWorker(ctx, w.rec.Name)
		if held == nil {
			sleepCtx(ctx, s.cfg.StepLease/3) // another node's, for now
			continue
		}
		s.serveListening(held, log, w, conn, client)
		release()
	}
}

// serveListening connects w while ctx lasts, redialing as it drops.
func (s *Server) serveListening(ctx context.Context, log hclog.Logger, w *worker, conn *grpc.ClientConn, client pb.AgentClient) {
	for ctx.Err() == nil {
		askCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		caps, err := client.GetCapabilities(askCtx, &pb.GetCapabilitiesRequest{}, grpc.WaitForReady(true))
		cancel()
		if err != nil {
			log.Debug("listening worker not reachable yet", "error", err)
			sleepCtx(ctx, 2*time.Second)
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
		if ctx.Err() == nil {
			log.Info("worker disconnected; redialing")
		}
	}
}

// holdWorker takes the lease of the listening worker name and keeps it
// renewed; the context it returns ends when the lease is lost or ctx
// ends, and release gives the lease up. On a store of one node there is
// no lease: ctx itself. nil when another node holds the lease.
func (s *Server) holdWorker(ctx context.Context, name string) (context.Context, func()) {
	if !s.shared {
		return ctx, func() {}
	}
	lease := "listening-worker/" + name
	take := func() (bool, error) {
		now := time.Now()
		ok, err := s.db.TakeLease(lease, s.cfg.Node, now, now.Add(s.cfg.StepLease))
		if err != nil {
			s.log.Warn("cannot take a listening worker's lease", "worker", name, "error", err)
		}
		return ok, err
	}
	if ok, _ := take(); !ok {
		return nil, nil
	}
	held, lost := context.WithCancel(ctx)
	go func() {
		defer lost()
		t := time.NewTicker(s.cfg.StepLease / 3)
		defer t.Stop()
		for {
			select {
			case <-held.Done():
				return
			case <-t.C:
				// A failed renewal keeps the worker: with the database
				// away nothing is dispatched anyway.
				if ok, err := take(); !ok && err == nil {
					s.log.Info("another server node has the listening worker now", "worker", name)
					return
				}
			}
		}
	}()
	return held, func() {
		lost()
		if err := s.db.DropLease(lease, s.cfg.Node); err != nil {
			s.log.Debug("cannot give a listening worker's lease up", "worker", name, "error", err)
		}
	}
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
}

// loadListening starts keeping the listening workers that other nodes
// registered since this one started.
func (s *Server) loadListening() {
	recs, err := s.db.ListWorkers()
	if err != nil {
		s.log.Warn("cannot read the workers", "error", err)
		return
	}
	kept := map[string]bool{}
	for _, rec := range recs {
		kept[rec.Name] = true
	}
	// Forgotten through another node: stop dialling it here too.
	s.mu.Lock()
	for name := range s.listening {
		if w := s.workers[name]; w != nil && !kept[name] {
			w.mu.Lock()
			if !w.forgotten {
				w.forgotten = true
				close(w.gone)
			}
			w.mu.Unlock()
			delete(s.workers, name)
			delete(s.listening, name)
			s.log.Info("worker forgotten through another server node", "worker", name)
		}
	}
	s.mu.Unlock()
	for _, rec := range recs {
		if rec.Address == "" {
			continue
		}
		s.mu.Lock()
		w := s.workers[rec.Name]
		if w == nil {
			w = newWorker(rec)
			s.workers[rec.Name] = w
		}
		s.mu.Unlock()
		if w.rec.Address != "" {
			s.listen(w)
		}
	}
}

// listen starts keepListening for w, once.
func (s *Server) listen(w *worker) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listening[w.rec.Name] {
		return
	}
	s.listening[w.rec.Name] = true
	go s.keepListening(w)
}
