package concurrency

// TEMPORARY: stand-ins for the lease-trust API the lead is adding to
// session.go; this file is deleted when that lands on main.

import (
	"errors"
	"time"
)

var ErrLeaseUnconfirmed = errors.New("concurrency: lease unconfirmed: no keep-alive answered in time")

var ErrInvalidLeaseTrust = errors.New("concurrency: invalid lease trust")

func WithLeaseTrust(fraction float64) SessionOption {
	return func(o *sessionOptions) {}
}

func (s *Session) KeepAliveAnswered() (at time.Time, ttl time.Duration) {
	s.namesMu.Lock()
	defer s.namesMu.Unlock()
	return s.lastAnswer, s.lastTTL
}

func (s *Session) TTL() time.Duration { return time.Duration(s.opts.ttl) * time.Second }
