package server

import (
	bolt "go.etcd.io/bbolt"

	"stevedore/transport"
)

// trustBucket holds the agent thumbprints trusted through the API; they
// join the configured ones at every start.
var trustBucket = []byte("trust")

// loadTrust adds the stored thumbprints to the server's trust list.
func (s *Server) loadTrust() error {
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(trustBucket).ForEach(func(k, _ []byte) error { return s.cfg.Trust.Add(string(k)) })
	})
}

// Trust admits polling agents with thumbprint from now on, durably.
// Idempotent.
func (s *Server) Trust(thumbprint string) (string, error) {
	tp, err := transport.ParseThumbprint(thumbprint)
	if err != nil {
		return "", err
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(trustBucket).Put([]byte(tp), []byte{1}) }); err != nil {
		return "", err
	}
	s.cfg.Trust.Add(tp)
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
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(trustBucket).Delete([]byte(tp)) }); err != nil {
		return err
	}
	s.cfg.Trust.Remove(tp)
	s.mu.Lock()
	for pc := range s.conns {
		if pc.Thumbprint == tp {
			pc.Client.Close()
		}
	}
	s.mu.Unlock()
	s.log.Info("agent thumbprint no longer trusted", "thumbprint", tp)
	return nil
}

// Trusted lists the thumbprints admitted now.
func (s *Server) Trusted() []string { return s.cfg.Trust.List() }
