package concurrency_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	etcdc "go.etcd.io/etcd/client/v3/concurrency"

	"github.com/batonhq/baton/concurrency"
)

func TestMutexFIFOHandoffOfFiveWaiters(t *testing.T) {
	e := newEnv(t)
	holder := concurrency.NewMutex(e.session(), "fifo")
	if err := holder.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	watcher := e.client()
	var order []int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 5 {
		m := concurrency.NewMutex(e.session(), "fifo")
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.Lock(e.ctx); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			if err := m.Unlock(e.ctx); err != nil {
				t.Error(err)
			}
		}()
		// Queue them one at a time so their order is known.
		waitKeys(t, e.ctx, watcher, "fifo", i+2)
	}
	if err := holder.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if fmt.Sprint(order) != "[0 1 2 3 4]" {
		t.Fatalf("handoff order %v, want FIFO", order)
	}
	if ks := e.keys("fifo"); len(ks) != 0 {
		t.Fatalf("keys left: %v", ks)
	}
}

func TestMutexFencingTokensIncrease(t *testing.T) {
	e := newEnv(t)
	var last int64
	for i := range 4 {
		m := concurrency.NewMutex(e.session(), "fence")
		if m.Rev() != -1 {
			t.Fatalf("Rev before Lock = %d, want -1", m.Rev())
		}
		if err := m.Lock(e.ctx); err != nil {
			t.Fatal(err)
		}
		if m.Rev() <= last {
			t.Fatalf("acquisition %d: token %d not above %d", i, m.Rev(), last)
		}
		last = m.Rev()
		r, err := e.client().Get(e.ctx, m.Key())
		if err != nil || len(r.Kvs) != 1 || r.Kvs[0].CreateRevision != m.Rev() {
			t.Fatalf("token %d is not the key's create revision: %v %v", m.Rev(), r, err)
		}
		if err := m.Unlock(e.ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMutexTryLockStormHasOneWinner(t *testing.T) {
	e := newEnv(t)
	const n = 12
	var wins, locked atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	ms := make([]*concurrency.Mutex, n)
	for i := range ms {
		ms[i] = concurrency.NewMutex(e.session(), "storm")
	}
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			switch err := m.TryLock(e.ctx); {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, concurrency.ErrLocked):
				locked.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if wins.Load() != 1 || locked.Load() != n-1 {
		t.Fatalf("wins %d, locked %d; want 1 and %d", wins.Load(), locked.Load(), n-1)
	}
	if ks := e.keys("storm"); len(ks) != 1 {
		t.Fatalf("keys after storm: %v, want only the winner's", ks)
	}
}

func TestMutexWaiterAheadDiesStillWaitsForHolder(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	holder := concurrency.NewMutex(e.session(), "dies")
	if err := holder.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	aheadSession := e.session()
	ahead := concurrency.NewMutex(aheadSession, "dies")
	aheadErr := lockAsync(e.ctx, ahead)
	waitKeys(t, e.ctx, admin, "dies", 2)
	me := concurrency.NewMutex(e.session(), "dies")
	meErr := lockAsync(e.ctx, me)
	waitKeys(t, e.ctx, admin, "dies", 3)

	// The waiter between the holder and us dies: its lease is revoked.
	if _, err := admin.Revoke(e.ctx, aheadSession.Lease()); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, aheadErr, "dead waiter's Lock"); !errors.Is(err, concurrency.ErrSessionExpired) {
		t.Fatalf("dead waiter: %v, want ErrSessionExpired", err)
	}
	waitKeys(t, e.ctx, admin, "dies", 2)
	// We must still be waiting for the holder.
	if _, err := admin.Put(e.ctx, "dies-sync", "x"); err != nil { // a round trip for events in flight
		t.Fatal(err)
	}
	mustNotReturn(t, meErr, "Lock behind a live holder")
	holderRev := holder.Rev()
	if err := holder.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, meErr, "Lock after holder's Unlock"); err != nil {
		t.Fatal(err)
	}
	if me.Rev() <= holderRev {
		t.Fatalf("token %d not above the holder's %d", me.Rev(), holderRev)
	}
}

// etcd #19597: a waiter whose own session expires kept waiting for its
// predecessors. Ours returns ErrSessionExpired as soon as its key goes,
// and never reports the lock taken (the Jepsen finding, etcd #11456: Lock
// returned after its wait without checking that its key was still there).
func TestMutexWaiterSessionExpiresPromptly(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	holder := concurrency.NewMutex(e.session(), "expire")
	if err := holder.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	s := e.session()
	m := concurrency.NewMutex(s, "expire")
	errc := lockAsync(e.ctx, m)
	waitKeys(t, e.ctx, admin, "expire", 2)
	if _, err := admin.Revoke(e.ctx, s.Lease()); err != nil {
		t.Fatal(err)
	}
	// The holder still holds: only our own expiry can end the wait.
	if err := recv(t, errc, "Lock of an expired waiter"); !errors.Is(err, concurrency.ErrSessionExpired) {
		t.Fatalf("got %v, want ErrSessionExpired", err)
	}
	if m.Key() != "" {
		t.Fatalf("failed Lock left Key %q", m.Key())
	}
}

// etcd #11456, the exact race Jepsen found: the holder's key and the
// waiter's own go at one revision (the waiter's lease expired as the
// holder let go). etcd's Lock took the holder's delete for its turn; ours
// sees that its own key is gone and fails.
func TestMutexWaiterKeyGoesWithHolders(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	holder := concurrency.NewMutex(e.session(), "jepsen")
	if err := holder.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	m := concurrency.NewMutex(e.session(), "jepsen")
	errc := lockAsync(e.ctx, m)
	waitKeys(t, e.ctx, admin, "jepsen", 2)
	ks := e.keys("jepsen")
	if _, err := admin.Txn(e.ctx).Then(clientv3.OpDelete(ks[0]), clientv3.OpDelete(ks[1])).Commit(); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, errc, "Lock whose key went"); !errors.Is(err, concurrency.ErrSessionExpired) {
		t.Fatalf("Lock whose key went with the holder's: %v, want ErrSessionExpired", err)
	}
	if m.Key() != "" {
		t.Fatalf("failed Lock left Key %q", m.Key())
	}
}

// etcd #9715, #10111, #21128: error paths of Lock left the waiter's key
// behind.
func TestMutexCancelledWaitLeavesNoKey(t *testing.T) {
	e := newEnv(t)
	holder := concurrency.NewMutex(e.session(), "cancel")
	if err := holder.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"cancel", "deadline"} {
		t.Run(kind, func(t *testing.T) {
			ctx, cancel := context.WithCancel(e.ctx)
			if kind == "deadline" {
				ctx, cancel = context.WithTimeout(e.ctx, 2*time.Second)
			}
			defer cancel()
			m := concurrency.NewMutex(e.session(), "cancel")
			errc := lockAsync(ctx, m)
			waitKeys(t, e.ctx, e.client(), "cancel", 2)
			if kind == "cancel" {
				cancel()
			}
			err := recv(t, errc, "cancelled Lock")
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("got %v", err)
			}
			if ks := e.keys("cancel"); len(ks) != 1 || ks[0] != holder.Key() {
				t.Fatalf("keys %v, want only the holder's", ks)
			}
			// The Mutex is usable again.
			if err := m.TryLock(e.ctx); !errors.Is(err, concurrency.ErrLocked) {
				t.Fatalf("TryLock after cancel: %v", err)
			}
		})
	}
}

func TestMutexAlreadyCancelledContextWritesNothing(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	m := concurrency.NewMutex(e.session(), "precancel")
	if err := m.Lock(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock: %v", err)
	}
	if err := m.TryLock(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("TryLock: %v", err)
	}
	if ks := e.keys("precancel"); len(ks) != 0 {
		t.Fatalf("keys written: %v", ks)
	}
}

// etcd #22082: Unlock deleted the key unconditionally, so a late Unlock of
// an old acquisition removed a newer acquisition's key.
func TestMutexUnlockDeletesOnlyOwnAcquisition(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	s := e.session()
	m := concurrency.NewMutex(s, "guarded")
	if err := m.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	key, rev := m.Key(), m.Rev()
	// Someone removes the key, and the same session's key name is taken
	// again by a newer acquisition (here written directly, as etcd's
	// Mutex on the same session would).
	if _, err := admin.Delete(e.ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Put(e.ctx, key, "newer", clientv3.WithLease(s.Lease())); err != nil {
		t.Fatal(err)
	}
	if err := m.Unlock(e.ctx); !errors.Is(err, concurrency.ErrLockLost) {
		t.Fatalf("Unlock of a lost lock: %v, want ErrLockLost", err)
	}
	r, err := admin.Get(e.ctx, key)
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "newer" || r.Kvs[0].CreateRevision == rev {
		t.Fatalf("newer acquisition's key was touched: %v %v", r, err)
	}
	if err := m.Unlock(e.ctx); !errors.Is(err, concurrency.ErrLockReleased) {
		t.Fatalf("second Unlock: %v, want ErrLockReleased", err)
	}
}

// etcd #11360: two Mutex values on one Session both "held" the lock; with
// WithExclusive they exclude each other.
func TestMutexTwoHandlesOnOneSessionExclude(t *testing.T) {
	e := newEnv(t)
	s := e.session()
	a, b := concurrency.NewMutex(s, "handles", concurrency.WithExclusive()), concurrency.NewMutex(s, "handles", concurrency.WithExclusive())
	if err := a.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.TryLock(e.ctx); !errors.Is(err, concurrency.ErrLocked) {
		t.Fatalf("second handle TryLock: %v, want ErrLocked", err)
	}
	errc := lockAsync(e.ctx, b)
	waitKeys(t, e.ctx, e.client(), "handles", 2)
	mustNotReturn(t, errc, "second handle's Lock")
	if a.Key() == "" || a.Key() == e.keys("handles")[1] {
		t.Fatalf("handles share a key: %v", e.keys("handles"))
	}
	if err := a.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, errc, "second handle's Lock"); err != nil {
		t.Fatal(err)
	}
	if err := b.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
}

func TestMutexIsSafeForConcurrentGoroutines(t *testing.T) {
	e := newEnv(t)
	m := concurrency.NewMutex(e.session(), "goroutines", concurrency.WithExclusive())
	var inside atomic.Int32
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				if err := m.Lock(e.ctx); err != nil {
					t.Error(err)
					return
				}
				if inside.Add(1) != 1 {
					t.Error("two goroutines inside one Mutex")
				}
				inside.Add(-1)
				if err := m.Unlock(e.ctx); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestMutexGuardCommitsOnlyWhileHeld(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	m := concurrency.NewMutex(e.session(), "guard")
	if _, err := m.Guard(e.ctx, clientv3.OpPut("guarded", "x")); !errors.Is(err, concurrency.ErrLockReleased) {
		t.Fatalf("Guard before Lock: %v", err)
	}
	if err := m.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Guard(e.ctx, clientv3.OpPut("guarded", "1")); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Delete(e.ctx, m.Key()); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Guard(e.ctx, clientv3.OpPut("guarded", "2")); !errors.Is(err, concurrency.ErrLockLost) {
		t.Fatalf("Guard after loss: %v, want ErrLockLost", err)
	}
	r, _ := admin.Get(e.ctx, "guarded")
	if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "1" {
		t.Fatalf("guarded value: %v", r.Kvs)
	}
}

func TestWithLockSignalsLoss(t *testing.T) {
	for _, how := range []string{"key deleted", "session revoked"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t)
			admin := e.client()
			s := e.session()
			m := concurrency.NewMutex(s, "loss")
			inside := make(chan struct{})
			errc := make(chan error, 1)
			var cause error
			go func() {
				errc <- concurrency.WithLock(e.ctx, m, func(ctx context.Context) error {
					close(inside)
					<-ctx.Done()
					cause = context.Cause(ctx)
					return nil
				})
			}()
			<-inside
			var err error
			if how == "key deleted" {
				_, err = admin.Delete(e.ctx, m.Key())
			} else {
				_, err = admin.Revoke(e.ctx, s.Lease())
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := recv(t, errc, "WithLock"); !errors.Is(err, concurrency.ErrLockLost) {
				t.Fatalf("WithLock: %v, want ErrLockLost", err)
			}
			if !errors.Is(cause, concurrency.ErrLockLost) {
				t.Fatalf("cause %v, want ErrLockLost", cause)
			}
		})
	}
}

func TestWithLockKeepsCallerCauseAndReleases(t *testing.T) {
	e := newEnv(t)
	m := concurrency.NewMutex(e.session(), "withlock")
	sentinel := errors.New("f failed")
	mine := errors.New("caller gave up")
	ctx, cancel := context.WithCancelCause(e.ctx)
	err := concurrency.WithLock(ctx, m, func(fctx context.Context) error {
		if m.Rev() <= 0 {
			t.Error("no token inside WithLock")
		}
		cancel(mine)
		<-fctx.Done()
		if c := context.Cause(fctx); !errors.Is(c, mine) {
			t.Errorf("cause %v, want the caller's", c)
		}
		return sentinel
	})
	if !errors.Is(err, sentinel) {
		t.Fatalf("WithLock: %v, want f's error", err)
	}
	if ks := e.keys("withlock"); len(ks) != 0 {
		t.Fatalf("lock not released after a cancelled ctx: %v", ks)
	}
}

// A fleet in the middle of a migration runs baton and etcd's Mutex on the
// same prefix: they must exclude each other, in both orders.
func TestMutexExcludesEtcdMutex(t *testing.T) {
	e := newEnv(t)
	es, err := etcdc.NewSession(e.client())
	if err != nil {
		t.Fatal(err)
	}
	defer es.Close()
	theirs := etcdc.NewMutex(es, "mixed")
	ours := concurrency.NewMutex(e.session(), "mixed")

	if err := theirs.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := ours.TryLock(e.ctx); !errors.Is(err, concurrency.ErrLocked) {
		t.Fatalf("baton TryLock while etcd holds: %v", err)
	}
	errc := lockAsync(e.ctx, ours)
	waitKeys(t, e.ctx, e.client(), "mixed", 2)
	mustNotReturn(t, errc, "baton Lock while etcd holds")
	if err := theirs.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, errc, "baton Lock"); err != nil {
		t.Fatal(err)
	}

	if err := theirs.TryLock(e.ctx); !errors.Is(err, etcdc.ErrLocked) {
		t.Fatalf("etcd TryLock while baton holds: %v", err)
	}
	theirErr := make(chan error, 1)
	go func() { theirErr <- theirs.Lock(e.ctx) }()
	waitKeys(t, e.ctx, e.client(), "mixed", 2)
	mustNotReturn(t, theirErr, "etcd Lock while baton holds")
	if err := ours.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, theirErr, "etcd Lock"); err != nil {
		t.Fatal(err)
	}
	if err := theirs.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
}

// etcd #6278: a lock on "xy" was blocked by keys of a lock on "xyz".
func TestMutexPrefixCollision(t *testing.T) {
	e := newEnv(t)
	xyz := concurrency.NewMutex(e.session(), "xyz")
	if err := xyz.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	xy := concurrency.NewMutex(e.session(), "xy")
	if err := xy.TryLock(e.ctx); err != nil {
		t.Fatalf("lock on xy blocked by xyz: %v", err)
	}
}

func TestMutexResumesWithSameLease(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	s1, err := concurrency.NewSession(c)
	if err != nil {
		t.Fatal(err)
	}
	m1 := concurrency.NewMutex(s1, "resume")
	if err := m1.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	// The process "restarts": it stops keeping the lease alive without
	// revoking it, and a new session adopts the lease.
	s1.Orphan()
	s2 := e.session(concurrency.WithLease(s1.Lease()))
	m2 := concurrency.NewMutex(s2, "resume")
	if err := m2.TryLock(e.ctx); err != nil {
		t.Fatalf("resumed TryLock: %v", err)
	}
	if m2.Key() != m1.Key() || m2.Rev() != m1.Rev() {
		t.Fatalf("resumed (%s, %d), held (%s, %d)", m2.Key(), m2.Rev(), m1.Key(), m1.Rev())
	}
	other := concurrency.NewMutex(e.session(), "resume")
	if err := other.TryLock(e.ctx); !errors.Is(err, concurrency.ErrLocked) {
		t.Fatalf("other TryLock while resumed holder holds: %v", err)
	}
	if err := m2.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
}

func TestMutexBadInput(t *testing.T) {
	e := newEnv(t)
	if err := concurrency.NewMutex(nil, "p").Lock(e.ctx); !errors.Is(err, concurrency.ErrNilSession) {
		t.Fatalf("nil session: %v", err)
	}
	s := e.session()
	empty := concurrency.NewMutex(s, "")
	if err := empty.Lock(e.ctx); !errors.Is(err, concurrency.ErrEmptyPrefix) {
		t.Fatalf("empty prefix Lock: %v", err)
	}
	if err := empty.TryLock(e.ctx); !errors.Is(err, concurrency.ErrEmptyPrefix) {
		t.Fatalf("empty prefix TryLock: %v", err)
	}
	if err := concurrency.NewMutex(s, "p").Unlock(e.ctx); !errors.Is(err, concurrency.ErrLockReleased) {
		t.Fatalf("Unlock without Lock: %v", err)
	}
	r, err := e.client().Get(e.ctx, "", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || r.Count != 0 {
		t.Fatalf("bad input wrote keys: %v %v", r, err)
	}
}

func TestLockerDocumentedBehaviour(t *testing.T) {
	e := newEnv(t)
	s := e.session()
	l := concurrency.NewLocker(s, "locker")
	l.Lock()
	if ks := e.keys("locker"); len(ks) != 1 {
		t.Fatalf("keys %v", ks)
	}
	// A lost lock is not a panic on Unlock: nothing is left to release.
	if _, err := e.client().Delete(e.ctx, e.keys("locker")[0]); err != nil {
		t.Fatal(err)
	}
	l.Unlock()
	// Lock on an ended session panics with the error, as documented.
	s.Orphan()
	defer func() {
		if r := recover(); r == nil {
			t.Fatal("Lock on an ended session did not panic")
		}
	}()
	l.Lock()
}

func TestHoldContext(t *testing.T) {
	e := newEnv(t)
	m := concurrency.NewMutex(e.session(), "hold")
	ctx, cancel := m.HoldContext(e.ctx)
	<-ctx.Done()
	if !errors.Is(context.Cause(ctx), concurrency.ErrLockReleased) {
		t.Fatalf("not held: cause %v", context.Cause(ctx))
	}
	cancel()
	if err := m.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = m.HoldContext(e.ctx)
	defer cancel()
	if ctx.Err() != nil {
		t.Fatal("held lock's context already done")
	}
	if _, err := e.client().Delete(e.ctx, m.Key()); err != nil {
		t.Fatal(err)
	}
	<-ctx.Done()
	if !errors.Is(context.Cause(ctx), concurrency.ErrLockLost) {
		t.Fatalf("cause %v", context.Cause(ctx))
	}

	el := concurrency.NewElection(e.session(), "hold-el")
	if err := el.Campaign(e.ctx, "v"); err != nil {
		t.Fatal(err)
	}
	ectx, ecancel := el.HoldContext(e.ctx)
	defer ecancel()
	if _, err := e.client().Delete(e.ctx, el.Key()); err != nil {
		t.Fatal(err)
	}
	<-ectx.Done()
	if !errors.Is(context.Cause(ectx), concurrency.ErrLeadershipLost) {
		t.Fatalf("election cause %v", context.Cause(ectx))
	}
}

// Waiters that give up while others queue behind them make the queue
// change under every waiter at once: each must follow its new predecessor
// without missing a departure, and nobody may hang or overlap. (A waiter
// once took a read's header revision, the store's current one, for the
// revision of a read made at an older revision, and missed the departure
// of a predecessor that left in between.)
func TestMutexChurnOfGivingUpWaiters(t *testing.T) {
	e := newEnv(t)
	const workers = 8
	deadline := time.Now().Add(3 * time.Second)
	var inside atomic.Int32
	var acquired, gaveUp atomic.Int64
	var wg sync.WaitGroup
	for i := range workers {
		m := concurrency.NewMutex(e.session(), "churn")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; time.Now().Before(deadline); n++ {
				// Odd workers give up quickly, so they leave from the
				// middle of the queue; even ones wait it out.
				wait := 20 * time.Second
				if i%2 == 1 {
					wait = time.Duration(1+n%5) * time.Millisecond
				}
				ctx, cancel := context.WithTimeout(e.ctx, wait)
				err := m.Lock(ctx)
				cancel()
				if err != nil {
					// A patient waiter must never time out: the queue
					// ahead of it is a few short critical sections.
					if i%2 == 0 || !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("worker %d: %v", i, err)
						return
					}
					gaveUp.Add(1)
					continue
				}
				if inside.Add(1) != 1 {
					t.Error("two holders")
				}
				acquired.Add(1)
				inside.Add(-1)
				if err := m.Unlock(e.ctx); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(45 * time.Second):
		t.Fatalf("waiters hung: %d acquisitions, %d gave up", acquired.Load(), gaveUp.Load())
	}
	if acquired.Load() == 0 {
		t.Fatal("nobody acquired")
	}
	if ks := e.keys("churn"); len(ks) != 0 {
		t.Fatalf("keys left: %v", ks)
	}
	t.Logf("%d acquisitions, %d gave up", acquired.Load(), gaveUp.Load())
}

func TestMutexConcurrentUnlocksReleaseOnce(t *testing.T) {
	e := newEnv(t)
	m := concurrency.NewMutex(e.session(), "double-unlock")
	if err := m.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- m.Unlock(e.ctx) }()
	}
	var ok, released int
	for range 2 {
		switch err := recv(t, errs, "Unlock"); {
		case err == nil:
			ok++
		case errors.Is(err, concurrency.ErrLockReleased), errors.Is(err, concurrency.ErrLockLost):
			released++
		default:
			t.Fatal(err)
		}
	}
	if ok != 1 || released != 1 {
		t.Fatalf("%d successful Unlocks and %d refused, want 1 and 1", ok, released)
	}
	// The Mutex is free for the next Lock.
	if err := m.TryLock(e.ctx); err != nil {
		t.Fatal(err)
	}
}
