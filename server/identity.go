package server

import (
	"bytes"
	"fmt"

	"stevedore/transport"
)

// KeepIdentity returns the identity kept in the store under name, sealed
// with the master key; the first time, it keeps local's. So every node on
// a shared database presents the one certificate agents pin, and a new
// container given the same database and master key presents the old one,
// whatever its data dir holds.
func (s *Server) KeepIdentity(name string, local *transport.Identity) (*transport.Identity, error) {
	plain, err := local.PEM()
	if err != nil {
		return nil, err
	}
	sealed, err := s.keys.Seal(plain)
	if err != nil {
		return nil, err
	}
	kept, err := s.db.KeepSetting("identity/"+name, sealed)
	if err != nil {
		return nil, err
	}
	if bytes.Equal(kept, sealed) {
		return local, nil
	}
	if plain, err = s.keys.Open(kept); err != nil {
		return nil, fmt.Errorf("the %s identity kept in the database does not open with this master key (is MASTER_KEY the one the database was made with?): %w", name, err)
	}
	return transport.ParseIdentity(plain)
}

// Identity is the identity the server presents: the one its store keeps.
func (s *Server) Identity() *transport.Identity { return s.cfg.Identity }
