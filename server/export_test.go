package server

import "time"

// SetKeyClock makes the API keys' times (creation, last use) come from now.
func SetKeyClock(s *Server, now func() time.Time) {
	s.auth.mu.Lock()
	s.auth.now = now
	s.auth.mu.Unlock()
}
