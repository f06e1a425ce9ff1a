package concurrency_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/internal/testutil"
)

func acquireAsync(ctx context.Context, s *concurrency.Semaphore, n int64) <-chan error {
	return async(func() error { return s.Acquire(ctx, n) })
}

// Requests are served first come, first served: a small request that would
// fit waits behind a larger one that does not (so large requests are not
// starved), and one release can let several waiters in.
func TestSemaphoreFIFOWeighted(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	a := concurrency.NewSemaphore(e.session(), "sem", 4)
	if a.Limit() != 4 {
		t.Fatalf("Limit() = %d, want 4", a.Limit())
	}
	if err := a.Acquire(e.ctx, 3); err != nil {
		t.Fatal(err)
	}
	b := concurrency.NewSemaphore(e.session(), "sem", 4)
	eb := acquireAsync(e.ctx, b, 2)
	waitKeys(t, e.ctx, admin, "sem", 2)
	c := concurrency.NewSemaphore(e.session(), "sem", 4)
	ec := acquireAsync(e.ctx, c, 1)
	waitKeys(t, e.ctx, admin, "sem", 3)
	roundTrip(t, e.ctx, admin)
	mustNotReturn(t, eb, "Acquire(2) with 1 free")
	mustNotReturn(t, ec, "Acquire(1) behind a waiter")
	// One permit is free, but a request is waiting: TryAcquire refuses.
	d := concurrency.NewSemaphore(e.session(), "sem", 4)
	if err := d.TryAcquire(e.ctx, 1); !errors.Is(err, concurrency.ErrNoPermits) {
		t.Fatalf("TryAcquire behind waiters: %v", err)
	}
	if err := a.Release(e.ctx, 3); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []<-chan error{eb, ec} {
		if err := recv(t, ch, "Acquire after release"); err != nil {
			t.Fatal(err)
		}
	}
	if b.Held() != 2 || c.Held() != 1 {
		t.Fatalf("held %d and %d, want 2 and 1", b.Held(), c.Held())
	}
	if err := d.TryAcquire(e.ctx, 1); err != nil {
		t.Fatalf("TryAcquire of the last free permit: %v", err)
	}
	if err := d.TryAcquire(e.ctx, 1); !errors.Is(err, concurrency.ErrNoPermits) {
		t.Fatalf("TryAcquire with none free: %v", err)
	}
	if ks := e.keys("sem"); len(ks) != 3 {
		t.Fatalf("keys %v, want 3 grants", ks)
	}
}

// Property: with many clients acquiring random weights concurrently, the
// permits out never exceed the limit, and every grant has a distinct
// fencing token.
func TestSemaphoreNeverOverLimit(t *testing.T) {
	e := newEnv(t)
	const limit, clients, rounds = 3, 10, 6
	var out atomic.Int64
	var tokens sync.Map
	var wg sync.WaitGroup
	for i := range clients {
		s := concurrency.NewSemaphore(e.session(), "prop", limit)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 1))
			for range rounds {
				n := 1 + r.Int64N(limit)
				if err := s.Acquire(e.ctx, n); err != nil {
					t.Error(err)
					return
				}
				if now := out.Add(n); now > limit {
					t.Errorf("%d permits out, limit %d", now, limit)
				}
				if _, dup := tokens.LoadOrStore(s.Rev(), true); dup {
					t.Errorf("token %d granted twice", s.Rev())
				}
				out.Add(-n)
				if err := s.Release(e.ctx, n); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if ks := e.keys("prop"); len(ks) != 0 {
		t.Fatalf("keys left: %v", ks)
	}
}

// The permits of a holder whose session ends come back by themselves; its
// late Release reports the loss.
func TestSemaphoreHolderSessionEnds(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	hs := e.session()
	holder := concurrency.NewSemaphore(hs, "lost", 2)
	if err := holder.Acquire(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	w := concurrency.NewSemaphore(e.session(), "lost", 2)
	ew := acquireAsync(e.ctx, w, 1)
	waitKeys(t, e.ctx, admin, "lost", 2)
	if _, err := admin.Revoke(e.ctx, hs.Lease()); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, ew, "Acquire after the holder's session ended"); err != nil {
		t.Fatal(err)
	}
	if err := holder.Release(e.ctx, 2); !errors.Is(err, concurrency.ErrPermitsLost) {
		t.Fatalf("Release of lost permits: %v, want ErrPermitsLost", err)
	}
	if holder.Held() != 0 {
		t.Fatalf("held %d after Release", holder.Held())
	}
}

// A waiter whose session ends returns ErrSessionExpired at once, and the
// waiter behind it is not let in early.
func TestSemaphoreWaiterSessionEnds(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	holder := concurrency.NewSemaphore(e.session(), "wexp", 1)
	if err := holder.Acquire(e.ctx, 1); err != nil {
		t.Fatal(err)
	}
	ws := e.session()
	w := concurrency.NewSemaphore(ws, "wexp", 1)
	ew := acquireAsync(e.ctx, w, 1)
	waitKeys(t, e.ctx, admin, "wexp", 2)
	behind := concurrency.NewSemaphore(e.session(), "wexp", 1)
	eb := acquireAsync(e.ctx, behind, 1)
	waitKeys(t, e.ctx, admin, "wexp", 3)
	if _, err := admin.Revoke(e.ctx, ws.Lease()); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, ew, "Acquire of an expired waiter"); !errors.Is(err, concurrency.ErrSessionExpired) {
		t.Fatalf("got %v, want ErrSessionExpired", err)
	}
	waitKeys(t, e.ctx, admin, "wexp", 2)
	roundTrip(t, e.ctx, admin)
	mustNotReturn(t, eb, "Acquire behind a live holder")
	if err := holder.Release(e.ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, eb, "Acquire after release"); err != nil {
		t.Fatal(err)
	}
}

// A waiter in the middle of the line gives up: the one behind it moves up
// and is let in when permits come back.
func TestSemaphoreCancelledWaiterInTheMiddle(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	holder := concurrency.NewSemaphore(e.session(), "mid", 2)
	if err := holder.Acquire(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	first := concurrency.NewSemaphore(e.session(), "mid", 2)
	e1 := acquireAsync(e.ctx, first, 2)
	waitKeys(t, e.ctx, admin, "mid", 2)
	ctx, cancel := context.WithCancel(e.ctx)
	middle := concurrency.NewSemaphore(e.session(), "mid", 2)
	em := acquireAsync(ctx, middle, 2)
	waitKeys(t, e.ctx, admin, "mid", 3)
	last := concurrency.NewSemaphore(e.session(), "mid", 2)
	el := acquireAsync(e.ctx, last, 1)
	waitKeys(t, e.ctx, admin, "mid", 4)
	cancel()
	if err := recv(t, em, "cancelled Acquire"); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	waitKeys(t, e.ctx, admin, "mid", 3)
	if err := holder.Release(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, e1, "first waiter"); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, e.ctx, admin)
	mustNotReturn(t, el, "Acquire with no permit free")
	if err := first.Release(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, el, "last waiter"); err != nil {
		t.Fatal(err)
	}
}

// Releasing part of a grant frees those permits at once, and the grant
// keeps its token.
func TestSemaphorePartialRelease(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	a := concurrency.NewSemaphore(e.session(), "part", 4)
	if err := a.Acquire(e.ctx, 3); err != nil {
		t.Fatal(err)
	}
	token := a.Rev()
	b := concurrency.NewSemaphore(e.session(), "part", 4)
	eb := acquireAsync(e.ctx, b, 2)
	waitKeys(t, e.ctx, admin, "part", 2)
	if err := a.Release(e.ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, eb, "Acquire after a partial release"); err != nil {
		t.Fatal(err)
	}
	if a.Held() != 2 || a.Rev() != token {
		t.Fatalf("after partial release: held %d token %d, want 2 and %d", a.Held(), a.Rev(), token)
	}
	if b.Rev() <= token {
		t.Fatalf("later grant's token %d not above %d", b.Rev(), token)
	}
	if err := a.Release(e.ctx, 3); !errors.Is(err, concurrency.ErrPermitsNotHeld) {
		t.Fatalf("Release of more than held: %v", err)
	}
	if a.Held() != 2 {
		t.Fatalf("a refused Release changed the holding to %d", a.Held())
	}
}

func TestSemaphoreLimitMismatch(t *testing.T) {
	e := newEnv(t)
	a := concurrency.NewSemaphore(e.session(), "mis", 3)
	if err := a.Acquire(e.ctx, 1); err != nil {
		t.Fatal(err)
	}
	b := concurrency.NewSemaphore(e.session(), "mis", 4)
	if err := b.Acquire(e.ctx, 1); !errors.Is(err, concurrency.ErrLimitMismatch) {
		t.Fatalf("Acquire with another limit: %v", err)
	}
	if err := b.TryAcquire(e.ctx, 1); !errors.Is(err, concurrency.ErrLimitMismatch) {
		t.Fatalf("TryAcquire with another limit: %v", err)
	}
	if ks := e.keys("mis"); len(ks) != 1 {
		t.Fatalf("keys %v, want only the first client's", ks)
	}
}

func TestSemaphoreFencingTokensIncrease(t *testing.T) {
	e := newEnv(t)
	s := concurrency.NewSemaphore(e.session(), "fence", 2)
	if s.Rev() != -1 {
		t.Fatalf("Rev before Acquire = %d", s.Rev())
	}
	last := int64(0)
	for range 4 {
		if err := s.Acquire(e.ctx, 2); err != nil {
			t.Fatal(err)
		}
		if s.Rev() <= last {
			t.Fatalf("token %d not above %d", s.Rev(), last)
		}
		last = s.Rev()
		if err := s.Release(e.ctx, 2); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSemaphoreBadInput(t *testing.T) {
	e := newEnv(t)
	s := e.session()
	for _, c := range []struct {
		sem  *concurrency.Semaphore
		want error
	}{
		{concurrency.NewSemaphore(nil, "x", 1), concurrency.ErrNilSession},
		{concurrency.NewSemaphore(s, "", 1), concurrency.ErrEmptyPrefix},
		{concurrency.NewSemaphore(s, "x", 0), concurrency.ErrInvalidLimit},
		{concurrency.NewSemaphore(s, "x", -2), concurrency.ErrInvalidLimit},
	} {
		if err := c.sem.Acquire(e.ctx, 1); !errors.Is(err, c.want) {
			t.Errorf("Acquire: %v, want %v", err, c.want)
		}
		if err := c.sem.TryAcquire(e.ctx, 1); !errors.Is(err, c.want) {
			t.Errorf("TryAcquire: %v, want %v", err, c.want)
		}
		if err := c.sem.Release(e.ctx, 1); !errors.Is(err, c.want) {
			t.Errorf("Release: %v, want %v", err, c.want)
		}
	}
	sem := concurrency.NewSemaphore(s, "x", 3)
	for _, n := range []int64{0, -1, 4} {
		if err := sem.Acquire(e.ctx, n); !errors.Is(err, concurrency.ErrInvalidWeight) {
			t.Errorf("Acquire(%d): %v", n, err)
		}
		if err := sem.TryAcquire(e.ctx, n); !errors.Is(err, concurrency.ErrInvalidWeight) {
			t.Errorf("TryAcquire(%d): %v", n, err)
		}
	}
	if err := sem.Release(e.ctx, 0); !errors.Is(err, concurrency.ErrInvalidWeight) {
		t.Errorf("Release(0): %v", err)
	}
	if err := sem.Release(e.ctx, 1); !errors.Is(err, concurrency.ErrPermitsNotHeld) {
		t.Errorf("Release without Acquire: %v", err)
	}
	assertEmpty(t, e)
}

// On a 3-member cluster, clients keep acquiring and releasing while the
// raft leader is stopped and later restarted: the permits out never exceed
// the limit, and the semaphore keeps granting throughout.
func TestSemaphoreClusterMemberRestart(t *testing.T) {
	cl := testutil.Cluster(t)
	ctx := testCtx(t)
	const limit, workers = 2, 4
	var out atomic.Int64
	prog := newProgress()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sessions []*concurrency.Session
	for range workers {
		s := clusterSession(t, cl)
		sessions = append(sessions, s)
		sem := concurrency.NewSemaphore(s, "csem", limit)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				actx, cancel := context.WithTimeout(ctx, 3*time.Second)
				err := sem.Acquire(actx, 1)
				cancel()
				if err != nil {
					if errors.Is(err, concurrency.ErrLimitMismatch) || errors.Is(err, concurrency.ErrInvalidWeight) {
						t.Error(err)
						return
					}
					continue // a leader change or a timeout: try again
				}
				if n := out.Add(1); n > limit {
					t.Errorf("%d permits out, limit %d", n, limit)
				}
				out.Add(-1)
				prog.done()
				err = untilDone(ctx, func(ctx context.Context) error { return sem.Release(ctx, 1) }, func(err error) bool {
					return errors.Is(err, concurrency.ErrPermitsNotHeld) || errors.Is(err, concurrency.ErrPermitsLost)
				})
				if err != nil && !errors.Is(err, concurrency.ErrPermitsLost) { // lost: an earlier try landed
					t.Error(err)
					return
				}
			}
		}()
	}
	outage(t, cl, prog, 10)
	close(stop)
	wg.Wait()
	closeLeavesNoKeys(t, ctx, cl, sessions, "csem/")
}

// etcd #6278/#16156 family: a semaphore on "sem" must not count the keys
// of one on "sem2" (its keys live under "sem/").
func TestSemaphorePrefixSibling(t *testing.T) {
	e := newEnv(t)
	other := concurrency.NewSemaphore(e.session(), "sib2", 1)
	if err := other.Acquire(e.ctx, 1); err != nil {
		t.Fatal(err)
	}
	s := concurrency.NewSemaphore(e.session(), "sib", 1)
	if err := s.TryAcquire(e.ctx, 1); err != nil {
		t.Fatalf("semaphore on sib blocked by sib2: %v", err)
	}
}

// WithPermits holds its own grant while f runs and gives back that grant,
// not the youngest; a grant whose key goes under f ends f's context with
// ErrPermitsLost, which WithPermits returns.
func TestSemaphoreWithPermits(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	sm := concurrency.NewSemaphore(e.session(), "sem-with", 3)
	err := concurrency.WithPermits(e.ctx, sm, 2, func(ctx context.Context) error {
		if sm.Held() != 2 {
			t.Errorf("held %d inside f, want 2", sm.Held())
		}
		// Another grant of the same Semaphore, younger than ours: it
		// stays when WithPermits releases.
		return sm.Acquire(ctx, 1)
	})
	if err != nil {
		t.Fatal(err)
	}
	if sm.Held() != 1 {
		t.Fatalf("held %d after WithPermits, want the other grant's 1", sm.Held())
	}
	if err := sm.Release(e.ctx, 1); err != nil {
		t.Fatal(err)
	}
	err = concurrency.WithPermits(e.ctx, sm, 1, func(ctx context.Context) error {
		r, err := admin.Get(e.ctx, "sem-with/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil || len(r.Kvs) != 1 {
			t.Fatalf("grant keys: %v %v", r, err)
		}
		if _, err := admin.Delete(e.ctx, string(r.Kvs[0].Key)); err != nil {
			t.Fatal(err)
		}
		<-ctx.Done()
		if !errors.Is(context.Cause(ctx), concurrency.ErrPermitsLost) {
			t.Errorf("f's context ended with %v, want ErrPermitsLost", context.Cause(ctx))
		}
		return nil
	})
	if !errors.Is(err, concurrency.ErrPermitsLost) {
		t.Fatalf("WithPermits with the key deleted under f: %v, want ErrPermitsLost", err)
	}
	if sm.Held() != 0 || sm.Rev() != -1 {
		t.Fatalf("after a lost grant: held %d rev %d", sm.Held(), sm.Rev())
	}
}

// A Semaphore's grants speak the holder's vocabulary: Key, Rev, IsOwner,
// Guard and HoldContext are those of the youngest grant; Guard refuses
// with ErrPermitsNotHeld when nothing is held (before the first Acquire and
// after the release) and with ErrPermitsLost, committing nothing, once the
// grant went with its session; a session that expires ends HoldContext
// with cause ErrPermitsLost.
func TestSemaphoreGuardHoldContext(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	put := func(v string) clientv3.Op { return clientv3.OpPut("semguard-resource", v) }
	s := e.session(concurrency.WithTTL(2))
	sem := concurrency.NewSemaphore(s, "semguard", 3)
	if _, err := sem.Guard(e.ctx, put("early")); !errors.Is(err, concurrency.ErrPermitsNotHeld) {
		t.Fatalf("Guard before Acquire: %v, want ErrPermitsNotHeld", err)
	}
	if hctx, cancel := sem.HoldContext(e.ctx); !errors.Is(context.Cause(hctx), concurrency.ErrPermitsNotHeld) {
		t.Fatalf("HoldContext before Acquire: cause %v, want ErrPermitsNotHeld", context.Cause(hctx))
	} else {
		cancel()
	}
	if sem.Rev() != -1 || sem.Key() != "" {
		t.Fatalf("before Acquire: Rev %d Key %q, want -1 and none", sem.Rev(), sem.Key())
	}

	if err := sem.Acquire(e.ctx, 1); err != nil {
		t.Fatal(err)
	}
	first, firstKey := sem.Rev(), sem.Key()
	if first <= 0 || firstKey == "" || sem.Header() == nil || sem.Header().Revision < first {
		t.Fatalf("after Acquire: Rev %d Key %q Header %v", first, firstKey, sem.Header())
	}
	if err := sem.Acquire(e.ctx, 1); err != nil {
		t.Fatal(err)
	}
	if sem.Rev() <= first || sem.Key() == firstKey {
		t.Fatalf("second grant: Rev %d Key %q, want the younger grant's (first %d %q)", sem.Rev(), sem.Key(), first, firstKey)
	}
	if err := sem.Release(e.ctx, 1); err != nil { // the youngest goes
		t.Fatal(err)
	}
	if sem.Rev() != first || sem.Key() != firstKey {
		t.Fatalf("after releasing the younger grant: Rev %d Key %q, want %d %q", sem.Rev(), sem.Key(), first, firstKey)
	}
	if _, err := sem.Guard(e.ctx, put("held")); err != nil {
		t.Fatalf("Guard while held: %v", err)
	}
	if r, err := admin.Txn(e.ctx).If(sem.IsOwner()).Commit(); err != nil || !r.Succeeded {
		t.Fatalf("IsOwner while held: %v %v", r, err)
	}

	hctx, cancel := sem.HoldContext(e.ctx)
	defer cancel()
	s.Orphan() // the lease expires within its TTL
	select {
	case <-hctx.Done():
	case <-e.ctx.Done():
		t.Fatal("HoldContext still open after the session's lease expired")
	}
	if !errors.Is(context.Cause(hctx), concurrency.ErrPermitsLost) {
		t.Fatalf("cause %v, want ErrPermitsLost", context.Cause(hctx))
	}
	// The context may end as the trust window lapses, before the server
	// expires the lease: Guard is refused once the grant's key is gone.
	waitKeys(t, e.ctx, admin, "semguard", 0)
	if _, err := sem.Guard(e.ctx, put("lost")); !errors.Is(err, concurrency.ErrPermitsLost) {
		t.Fatalf("Guard after the grant expired: %v, want ErrPermitsLost", err)
	}
	if r, err := admin.Get(e.ctx, "semguard-resource"); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "held" {
		t.Fatalf("resource after a refused Guard: %v %v, want \"held\"", r, err)
	}
	if err := sem.Release(e.ctx, 1); !errors.Is(err, concurrency.ErrPermitsLost) {
		t.Fatalf("Release of the expired grant: %v, want ErrPermitsLost", err)
	}

	// Guard refuses after a release, with the "not held" error.
	sem2 := concurrency.NewSemaphore(e.session(), "semguard", 3)
	if err := sem2.Acquire(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := sem2.Release(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := sem2.Guard(e.ctx, put("released")); !errors.Is(err, concurrency.ErrPermitsNotHeld) {
		t.Fatalf("Guard after Release: %v, want ErrPermitsNotHeld", err)
	}
	if sem2.Rev() != -1 || sem2.Key() != "" {
		t.Fatalf("after Release: Rev %d Key %q, want -1 and none", sem2.Rev(), sem2.Key())
	}
}
