package concurrency_test

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/batonhq/baton/concurrency"
)

func TestSessionBadInput(t *testing.T) {
	e := newEnv(t)
	if _, err := concurrency.NewSession(nil); !errors.Is(err, concurrency.ErrNilClient) {
		t.Fatalf("nil client: %v", err)
	}
	c := e.client()
	for _, ttl := range []int{0, -5} {
		if _, err := concurrency.NewSession(c, concurrency.WithTTL(ttl)); !errors.Is(err, concurrency.ErrInvalidTTL) {
			t.Fatalf("TTL %d: %v", ttl, err)
		}
	}
	for _, f := range []float64{0, -0.5, 1.01, math.NaN()} {
		if _, err := concurrency.NewSession(c, concurrency.WithLeaseTrust(f)); !errors.Is(err, concurrency.ErrInvalidLeaseTrust) {
			t.Fatalf("lease trust %v: %v", f, err)
		}
	}
	leases, err := c.Leases(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(leases.Leases) != 0 {
		t.Fatalf("bad input granted leases: %v", leases.Leases)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	if _, err := concurrency.NewSession(c, concurrency.WithContext(ctx)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func TestSessionTTLAndClose(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	s, err := concurrency.NewSession(c, concurrency.WithTTL(7))
	if err != nil {
		t.Fatal(err)
	}
	ttl, err := c.TimeToLive(e.ctx, s.Lease())
	if err != nil || ttl.GrantedTTL != 7 {
		t.Fatalf("granted TTL: %v %v", ttl, err)
	}
	m := concurrency.NewMutex(s, "close")
	if err := m.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	if s.Ctx().Err() == nil {
		t.Fatal("Ctx alive after Close")
	}
	if ks := e.keys("close"); len(ks) != 0 {
		t.Fatalf("Close left keys: %v", ks)
	}
}

func TestSessionDoneWhenLeaseRevoked(t *testing.T) {
	e := newEnv(t)
	s := e.session(concurrency.WithTTL(3))
	if _, err := e.client().Revoke(e.ctx, s.Lease()); err != nil {
		t.Fatal(err)
	}
	// The client learns of it at the next keep-alive, within TTL/3 plus
	// scheduling; the bound is for liveness only.
	select {
	case <-s.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("Done not closed after the lease was revoked")
	}
}

func TestSessionDefaultTTLIsEtcds(t *testing.T) {
	e := newEnv(t)
	s := e.session()
	ttl, err := e.client().TimeToLive(e.ctx, s.Lease())
	if err != nil || ttl.GrantedTTL != 60 {
		t.Fatalf("default TTL: %v %v", ttl, err)
	}
}
