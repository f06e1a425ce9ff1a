package concurrency

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The default RenewDeadline is 2/3 of the TTL, but leaves a keep-alive
// cycle and a raft election (TTL/3 + 1.5 s) and is at most the TTL; an
// explicit one sets the fraction as given, and the TTL is rounded up.
func TestLeaderElectorLeaseTrust(t *testing.T) {
	start := func(ctx context.Context, l *Leadership) {}
	for _, tc := range []struct {
		ttl, renew time.Duration
		secs       int
		trust      float64
	}{
		{0, 0, 15, 2.0 / 3},
		{2 * time.Second, 0, 2, 1},
		{3 * time.Second, 0, 3, 2.5 / 3},
		{5 * time.Second, 0, 5, 2.0 / 3},
		{60 * time.Second, 0, 60, 2.0 / 3},
		{2500 * time.Millisecond, 0, 3, 2.5 / 3},
		{10 * time.Second, 9 * time.Second, 10, 0.9},
	} {
		le, err := NewLeaderElector(LeaderElectionConfig{Client: &clientv3.Client{}, Prefix: "/p", TTL: tc.ttl, RenewDeadline: tc.renew,
			Callbacks: LeaderCallbacks{OnStartedLeading: start}})
		if err != nil {
			t.Fatal(err)
		}
		if le.ttl != tc.secs || math.Abs(le.trust-tc.trust) > 1e-9 {
			t.Errorf("TTL %v, RenewDeadline %v: %d s, trust %v; want %d s, %v", tc.ttl, tc.renew, le.ttl, le.trust, tc.secs, tc.trust)
		}
	}
}

// Check fails a leader whose session has had no keep-alive answer for
// longer than the TTL plus the tolerance. Lease trust normally ends the
// term first; this is the backstop for a leader whose step-down is stuck.
func TestLeaderElectorCheckStaleKeepAlive(t *testing.T) {
	le := &LeaderElector{cfg: LeaderElectionConfig{Prefix: "/p"}}
	s := &Session{lastAnswer: time.Now().Add(-8 * time.Second), lastTTL: 5 * time.Second}
	if err := le.Check(0); err != nil {
		t.Errorf("Check of an elector that never led: %v", err)
	}
	le.open, le.leading, le.sess = true, true, s
	if err := le.Check(time.Minute); err != nil {
		t.Errorf("Check within the tolerance: %v", err)
	}
	err := le.Check(2 * time.Second)
	if !errors.Is(err, ErrWedgedLeader) || !strings.Contains(err.Error(), "no keep-alive answered for 8") {
		t.Errorf("Check 8 s after the last answer, TTL 5 s, tolerance 2 s: %v, want ErrWedgedLeader", err)
	}
}
