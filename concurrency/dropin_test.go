package concurrency_test

// Tests of the behaviours that etcd's own tests of its package pin down,
// so that code written against etcd's package keeps working after the
// import path changes: several handles on one session are one participant
// (TestMutexSessionRelock, TestElectionSessionRecampaign), Orphan ends the
// renewal and not the lease (TestElectionWithAuthEnabled), and cleanup ends
// with the client (TestElectionOnSessionRestart's leak check).

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/internal/testutil"
)

// shortCtx bounds a call that must not wait: a hang becomes a failure with
// the call's name instead of a stalled test.
func shortCtx(t *testing.T, parent context.Context) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(parent, 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestMutexSecondHandleOnHoldingSessionHoldsAtOnce(t *testing.T) {
	e := newEnv(t)
	s := e.session()
	a, b := concurrency.NewMutex(s, "relock"), concurrency.NewMutex(s, "relock")
	if err := a.Lock(shortCtx(t, e.ctx)); err != nil {
		t.Fatal(err)
	}
	if err := b.Lock(shortCtx(t, e.ctx)); err != nil {
		t.Fatalf("second handle on the holding session: %v (etcd's holds at once)", err)
	}
	if err := b.TryLock(shortCtx(t, e.ctx)); err != nil {
		t.Fatalf("TryLock of a handle that holds: %v", err)
	}
	if err := a.Lock(shortCtx(t, e.ctx)); err != nil {
		t.Fatalf("Lock again on a handle that holds: %v", err)
	}
	if a.Key() != b.Key() || a.Rev() != b.Rev() || len(e.keys("relock")) != 1 {
		t.Fatalf("handles hold (%s, %d) and (%s, %d), keys %v; want one shared key",
			a.Key(), a.Rev(), b.Key(), b.Rev(), e.keys("relock"))
	}
	// Unlock on one releases the session's lock: the other's hold context
	// sees the loss, and its own Unlock is no error, as etcd's.
	hold, cancel := b.HoldContext(e.ctx)
	defer cancel()
	if err := a.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-hold.Done():
		if !errors.Is(context.Cause(hold), concurrency.ErrLockLost) {
			t.Fatalf("cause %v, want ErrLockLost", context.Cause(hold))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the other handle's hold context did not end after Unlock")
	}
	if err := b.Unlock(e.ctx); err != nil {
		t.Fatalf("Unlock of the other handle after the session released: %v, want nil", err)
	}
	if ks := e.keys("relock"); len(ks) != 0 {
		t.Fatalf("keys left: %v", ks)
	}
	// Another session gets the lock now.
	if err := concurrency.NewMutex(e.session(), "relock").TryLock(e.ctx); err != nil {
		t.Fatal(err)
	}
}

func TestMutexHandlesOfAWaitingSessionKeepItsPlace(t *testing.T) {
	e := newEnv(t)
	holder := concurrency.NewMutex(e.session(), "place")
	if err := holder.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	s := e.session()
	a, b := concurrency.NewMutex(s, "place"), concurrency.NewMutex(s, "place")
	errA := lockAsync(e.ctx, a)
	waitKeys(t, e.ctx, e.client(), "place", 2)
	bctx, bcancel := context.WithCancel(e.ctx)
	errB := lockAsync(bctx, b)
	third := lockAsync(e.ctx, concurrency.NewMutex(e.session(), "place"))
	waitKeys(t, e.ctx, e.client(), "place", 3)
	if err := b.TryLock(e.ctx); !errors.Is(err, concurrency.ErrLocked) {
		t.Fatalf("TryLock while the session waits: %v, want ErrLocked", err)
	}
	// b gives up: a still waits with the session's key, in its place.
	bcancel()
	if err := recv(t, errB, "cancelled Lock"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Lock: %v", err)
	}
	if ks := e.keys("place"); len(ks) != 3 {
		t.Fatalf("a cancelled handle took the waiting session's key: %v", ks)
	}
	mustNotReturn(t, errA, "waiting handle")
	if err := holder.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, errA, "waiting handle"); err != nil {
		t.Fatal(err)
	}
	mustNotReturn(t, third, "the later session")
	if err := a.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, third, "the later session"); err != nil {
		t.Fatal(err)
	}
}

// A configuration that would make a session queue behind itself is an
// error, never a silent deadlock.
func TestMutexMixedHandleKindsAreRefused(t *testing.T) {
	e := newEnv(t)
	s := e.session()
	own := concurrency.NewMutex(s, "mixed", concurrency.WithExclusive())
	if err := own.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := concurrency.NewMutex(s, "mixed").Lock(shortCtx(t, e.ctx)); !errors.Is(err, concurrency.ErrWaitsOnItself) {
		t.Fatalf("default handle behind an exclusive one of its session: %v, want ErrWaitsOnItself", err)
	}
	if err := own.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
	shared := concurrency.NewMutex(s, "mixed")
	if err := shared.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := concurrency.NewMutex(s, "mixed", concurrency.WithExclusive()).Lock(shortCtx(t, e.ctx)); !errors.Is(err, concurrency.ErrWaitsOnItself) {
		t.Fatalf("exclusive handle behind the session's shared key: %v, want ErrWaitsOnItself", err)
	}
	if ks := e.keys("mixed"); len(ks) != 1 {
		t.Fatalf("refused calls wrote keys: %v", ks)
	}
}

func TestElectionSecondHandleOnLeadingSessionProclaims(t *testing.T) {
	e := newEnv(t)
	s := e.session()
	first := concurrency.NewElection(s, "recampaign")
	if err := first.Campaign(shortCtx(t, e.ctx), "abc"); err != nil {
		t.Fatal(err)
	}
	second := concurrency.NewElection(s, "recampaign")
	if err := second.Campaign(shortCtx(t, e.ctx), "def"); err != nil {
		t.Fatalf("second Campaign on the leading session: %v (etcd's proclaims)", err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	select {
	case r := <-first.Observe(ctx):
		if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "def" {
			t.Fatalf("leader %v, want value def", r)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Observe returned nothing")
	}
	if first.Rev() != second.Rev() || first.Key() != second.Key() {
		t.Fatalf("leaderships (%s, %d) and (%s, %d), want one", first.Key(), first.Rev(), second.Key(), second.Rev())
	}
	// Resign on one ends the session's leadership, for both.
	hold, hcancel := first.HoldContext(e.ctx)
	defer hcancel()
	if err := second.Resign(e.ctx); err != nil {
		t.Fatal(err)
	}
	<-hold.Done()
	if !errors.Is(context.Cause(hold), concurrency.ErrLeadershipLost) {
		t.Fatalf("cause %v, want ErrLeadershipLost", context.Cause(hold))
	}
	if err := first.Resign(e.ctx); err != nil {
		t.Fatalf("Resign after the session resigned: %v, want nil", err)
	}
	if _, err := first.Leader(e.ctx); !errors.Is(err, concurrency.ErrElectionNoLeader) {
		t.Fatalf("Leader after Resign: %v", err)
	}
}

// etcd's TestElectionWithAuthEnabled orphans its sessions and then
// campaigns: the waiter must wait for the leader's lease to expire and then
// lead, its own lease being alive (only no longer renewed).
func TestOrphanedWaiterWaitsForItsTurn(t *testing.T) {
	e := newEnv(t)
	leaderSession := e.session(concurrency.WithTTL(2))
	if err := concurrency.NewElection(leaderSession, "orphan").Campaign(e.ctx, "first"); err != nil {
		t.Fatal(err)
	}
	m := concurrency.NewMutex(leaderSession, "orphan-lock")
	if err := m.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	leaderSession.Orphan()

	waiter := e.session(concurrency.WithTTL(30))
	waiter.Orphan()
	select {
	case <-waiter.Done():
	default:
		t.Fatal("Done is open after Orphan; etcd closes it")
	}
	errE := campaignAsync(e.ctx, concurrency.NewElection(waiter, "orphan"), "second")
	errM := lockAsync(e.ctx, concurrency.NewMutex(waiter, "orphan-lock"))
	if err := recv(t, errE, "Campaign on an orphaned session"); err != nil {
		t.Fatalf("Campaign on an orphaned session: %v, want leadership once the leader's lease expires", err)
	}
	if err := recv(t, errM, "Lock on an orphaned session"); err != nil {
		t.Fatalf("Lock on an orphaned session: %v", err)
	}
	r, err := concurrency.NewElection(e.session(), "orphan").Leader(e.ctx)
	if err != nil || string(r.Kvs[0].Value) != "second" {
		t.Fatalf("leader %v, %v; want second", r, err)
	}
}

// A holder on an orphaned session holds until its lease runs out: its hold
// context is not cancelled by Orphan, and is by the expiry.
func TestOrphanedHolderSeesLossAtExpiry(t *testing.T) {
	e := newEnv(t)
	s := e.session(concurrency.WithTTL(3))
	m := concurrency.NewMutex(s, "orphan-hold")
	if err := m.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	hold, cancel := m.HoldContext(e.ctx)
	defer cancel()
	orphaned := time.Now()
	s.Orphan()
	if _, err := m.Guard(e.ctx, clientv3.OpPut("orphan-hold-resource", "x")); err != nil {
		t.Fatalf("Guard right after Orphan: %v, want the lock still held", err)
	}
	select {
	case <-hold.Done():
		t.Fatalf("hold context ended at Orphan (%v), with the lease alive", context.Cause(hold))
	default:
	}
	select {
	case <-hold.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("hold context still open 30 s after Orphan with a 3 s TTL")
	}
	if !errors.Is(context.Cause(hold), concurrency.ErrLockLost) {
		t.Fatalf("cause %v, want ErrLockLost", context.Cause(hold))
	}
	t.Logf("loss seen %v after Orphan (TTL 3 s)", time.Since(orphaned).Round(time.Millisecond))
}

// etcd's TestElectionOnSessionRestart failed on leaked goroutines: a
// Campaign cancelled just before its client closed went on retrying its
// cleanup for seconds. Cleanup must end with the client.
func TestCleanupEndsWhenTheClientCloses(t *testing.T) {
	srv := testutil.Server(t)
	ctx := testCtx(t)
	holderClient := testutil.Client(t, srv.Endpoints())
	hs, err := concurrency.NewSession(holderClient)
	if err != nil {
		t.Fatal(err)
	}
	if err := concurrency.NewElection(hs, "closing").Campaign(ctx, "leader"); err != nil {
		t.Fatal(err)
	}
	if err := concurrency.NewMutex(hs, "closing-lock").Lock(ctx); err != nil {
		t.Fatal(err)
	}

	for _, kind := range []string{"Campaign", "Lock"} {
		t.Run(kind, func(t *testing.T) {
			before := goleak.IgnoreCurrent()
			c, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				t.Fatal(err)
			}
			s, err := concurrency.NewSession(c)
			if err != nil {
				t.Fatal(err)
			}
			wctx, cancel := context.WithCancel(ctx)
			errc := make(chan error, 1)
			go func() {
				if kind == "Campaign" {
					errc <- concurrency.NewElection(s, "closing").Campaign(wctx, "waiter")
				} else {
					errc <- concurrency.NewMutex(s, "closing-lock").Lock(wctx)
				}
			}()
			pfx := "closing"
			if kind == "Lock" {
				pfx = "closing-lock"
			}
			waitKeys(t, ctx, holderClient, pfx, 2)
			cancel()
			closed := time.Now()
			c.Close()
			select {
			case err := <-errc:
				took := time.Since(closed)
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("%s: %v, want context.Canceled", kind, err)
				}
				t.Logf("%s returned %v after the client closed", kind, took.Round(time.Microsecond))
				// Generous for a busy machine; the old cleanup took 2.6 s
				// and more (its own 5 s timeout).
				if took > time.Second {
					t.Fatalf("%s returned %v after the client closed, want at once", kind, took)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("%s did not return after the client closed", kind)
			}
			goleak.VerifyNone(t, append(testutil.LeakOptions(), before)...)
		})
	}
}
