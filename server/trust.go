package server

import (
	"fmt"

	"stevedore/transport"
)

// loadTrust adds the thumbprints trusted through the API, which are
// stored, to the configured ones in the server's trust list.
func (s *Server) loadTrust() error {
	tps, err := s.db.ListTrusted()
	if err != nil {
		return fmt.Errorf("trust: %w", err)
	}
	now := make(map[string]bool, len(tps))
	for _, tp := range tps {
		if err := s.cfg.Trust.Add(tp); err != nil {
			return err
		}
		now[tp] = true
	}
	// One distrusted through another node (several nodes on one
	// database) goes here too, connections and all.
	s.mu.Lock()
	var gone []string
	for tp := range s.stored {
		if !now[tp] {
			gone = append(gone, tp)
		}
	}
	s.stored = now
	s.mu.Unlock()
	for _, tp := range gone {
		s.dropTrust(tp)
	}
	return nil
}

// Trust admits polling agents with thumbprint from now on, durably.
// Idempotent.
func (s *Server) Trust(thumbprint string) (string, error) {
	tp, err := transport.ParseThumbprint(thumbprint)
	if err != nil {
		return "", err
	}
	if err := s.db.AddTrusted(tp); err != nil {
		return "", err
	}
	s.cfg.Trust.Add(tp)
	s.mu.Lock()
	s.stored[tp] = true
	s.mu.Unlock()
	s.log.Info("agent thumbprint trusted", "thumbprint", tp)
	return tp, nil
}

// Distrust stops admitting thumbprint and closes its open polling
// connections; its steps wait, as for any disconnected worker, until it is
// trusted again or they are cancelled. Idempotent. A thumbprint given
// with --trust comes back at the next start.
func (s *Server) Distrust(thumbprint string) error {
	tp, err := transport.ParseThumbprint(thumbprint)
	if err != nil {
		return err
	}
	if err := s.db.RemoveTrusted(tp); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.stored, tp)
	s.mu.Unlock()
	s.dropTrust(tp)
	return nil
}

// dropTrust stops admitting tp here and closes its polling connections.
func (s *Server) dropTrust(tp string) {
	s.cfg.Trust.Remove(tp)
	s.mu.Lock()
	for pc := range s.conns {
		if pc.Thumbprint == tp {
			pc.Client.Close()
		}
	}
	s.mu.Unlock()
	s.log.Info("agent thumbprint no longer trusted", "thumbprint", tp)
}

// Trusted lists the thumbprints admitted now.
func (s *Server) Trusted() []string { return s.cfg.Trust.List() }
