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

func TestRWMutexReadersShareWaitingWriterBlocksNewReaders(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	r1 := concurrency.NewRWMutex(e.session(), "rw")
	r2 := concurrency.NewRWMutex(e.session(), "rw")
	if err := r1.RLock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := r2.TryRLock(e.ctx); err != nil {
		t.Fatalf("second reader: %v", err)
	}
	w := concurrency.NewRWMutex(e.session(), "rw")
	if err := w.TryLock(e.ctx); !errors.Is(err, concurrency.ErrLocked) {
		t.Fatalf("TryLock while read-locked: %v", err)
	}
	ew := async(func() error { return w.Lock(e.ctx) })
	waitKeys(t, e.ctx, admin, "rw", 3)
	r3 := concurrency.NewRWMutex(e.session(), "rw")
	if err := r3.TryRLock(e.ctx); !errors.Is(err, concurrency.ErrLocked) {
		t.Fatalf("TryRLock behind a waiting writer: %v", err)
	}
	er3 := async(func() error { return r3.RLock(e.ctx) })
	waitKeys(t, e.ctx, admin, "rw", 4)
	roundTrip(t, e.ctx, admin)
	mustNotReturn(t, ew, "Lock while read-locked")
	mustNotReturn(t, er3, "RLock behind a waiting writer")
	if err := r1.RUnlock(e.ctx); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, e.ctx, admin)
	mustNotReturn(t, ew, "Lock with one reader left")
	if err := r2.RUnlock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, ew, "Lock after the readers left"); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, e.ctx, admin)
	mustNotReturn(t, er3, "RLock while write-locked")
	if err := w.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, er3, "RLock after Unlock"); err != nil {
		t.Fatal(err)
	}
	if err := r3.RUnlock(e.ctx); err != nil {
		t.Fatal(err)
	}
}

// Property: with readers and writers hammering one RWMutex (90% reads), a
// writer is never inside together with anyone else.
func TestRWMutexReadersNeverOverlapAWriter(t *testing.T) {
	e := newEnv(t)
	const clients, rounds = 8, 25
	var readers, writers atomic.Int32
	var reads, writes atomic.Int32
	var wg sync.WaitGroup
	for i := range clients {
		rw := concurrency.NewRWMutex(e.session(), "prop")
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 7))
			for range rounds {
				if r.IntN(10) == 0 {
					if err := rw.Lock(e.ctx); err != nil {
						t.Error(err)
						return
					}
					if w := writers.Add(1); w != 1 || readers.Load() != 0 {
						t.Errorf("writer inside with %d writers, %d readers", w, readers.Load())
					}
					writes.Add(1)
					writers.Add(-1)
					if err := rw.Unlock(e.ctx); err != nil {
						t.Error(err)
						return
					}
				} else {
					if err := rw.RLock(e.ctx); err != nil {
						t.Error(err)
						return
					}
					readers.Add(1)
					if writers.Load() != 0 {
						t.Error("reader inside with a writer")
					}
					reads.Add(1)
					readers.Add(-1)
					if err := rw.RUnlock(e.ctx); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if reads.Load()+writes.Load() != clients*rounds {
		t.Fatalf("%d reads + %d writes, want %d", reads.Load(), writes.Load(), clients*rounds)
	}
	if ks := e.keys("prop"); len(ks) != 0 {
		t.Fatalf("keys left: %v", ks)
	}
}

// etcd #16221: a writer waiting behind the holder whose session was
// revoked went on to "take" the lock when the holder unlocked, beside the
// writer behind it. Ours returns ErrSessionExpired as soon as its key goes,
// and only the live writer gets the lock.
func TestRWMutexRevokedWaiterNeverLetsTwoWritersIn(t *testing.T) {
	for _, second := range []string{"writer", "reader"} {
		t.Run(second, func(t *testing.T) {
			e := newEnv(t)
			admin := e.client()
			m1 := concurrency.NewRWMutex(e.session(), "w16221")
			if err := m1.Lock(e.ctx); err != nil {
				t.Fatal(err)
			}
			s2 := e.session()
			m2 := concurrency.NewRWMutex(s2, "w16221")
			e2 := async(func() error { return m2.Lock(e.ctx) })
			waitKeys(t, e.ctx, admin, "w16221", 2)
			m3 := concurrency.NewRWMutex(e.session(), "w16221")
			e3 := async(func() error {
				if second == "reader" {
					return m3.RLock(e.ctx)
				}
				return m3.Lock(e.ctx)
			})
			waitKeys(t, e.ctx, admin, "w16221", 3)

			if _, err := admin.Revoke(e.ctx, s2.Lease()); err != nil {
				t.Fatal(err)
			}
			if err := recv(t, e2, "Lock of the revoked waiter"); !errors.Is(err, concurrency.ErrSessionExpired) {
				t.Fatalf("revoked waiter: %v, want ErrSessionExpired", err)
			}
			roundTrip(t, e.ctx, admin)
			mustNotReturn(t, e3, "lock behind a live writer")
			if err := m1.Unlock(e.ctx); err != nil {
				t.Fatal(err)
			}
			if err := recv(t, e3, "lock after Unlock"); err != nil {
				t.Fatal(err)
			}
			if m2.Key() != "" {
				t.Fatalf("revoked waiter holds %q", m2.Key())
			}
			if ks := e.keys("w16221"); len(ks) != 1 || ks[0] != m3.Key() {
				t.Fatalf("keys %v, want only %q", ks, m3.Key())
			}
		})
	}
}

// A holder whose session ends loses the lock (its Unlock says so), and the
// next waiter gets it.
func TestRWMutexHolderSessionEnds(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	hs := e.session()
	h := concurrency.NewRWMutex(hs, "hexp")
	if err := h.RLock(e.ctx); err != nil {
		t.Fatal(err)
	}
	w := concurrency.NewRWMutex(e.session(), "hexp")
	ew := async(func() error { return w.Lock(e.ctx) })
	waitKeys(t, e.ctx, admin, "hexp", 2)
	if _, err := admin.Revoke(e.ctx, hs.Lease()); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, ew, "Lock after the reader's session ended"); err != nil {
		t.Fatal(err)
	}
	if err := h.RUnlock(e.ctx); !errors.Is(err, concurrency.ErrLockLost) {
		t.Fatalf("RUnlock of a lost read lock: %v, want ErrLockLost", err)
	}
	if err := w.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRWMutexCancelledWaitLeavesNoKey(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	h := concurrency.NewRWMutex(e.session(), "rcancel")
	if err := h.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	r := concurrency.NewRWMutex(e.session(), "rcancel")
	er := async(func() error { return r.RLock(ctx) })
	waitKeys(t, e.ctx, admin, "rcancel", 2)
	cancel()
	if err := recv(t, er, "cancelled RLock"); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	if ks := e.keys("rcancel"); len(ks) != 1 || ks[0] != h.Key() {
		t.Fatalf("keys %v, want only the holder's", ks)
	}
	if err := r.RUnlock(e.ctx); !errors.Is(err, concurrency.ErrNotRLocked) {
		t.Fatalf("RUnlock after a failed RLock: %v", err)
	}
}

func TestRWMutexBadInput(t *testing.T) {
	e := newEnv(t)
	s := e.session()
	for _, c := range []struct {
		rw   *concurrency.RWMutex
		want error
	}{
		{concurrency.NewRWMutex(nil, "x"), concurrency.ErrNilSession},
		{concurrency.NewRWMutex(s, ""), concurrency.ErrEmptyPrefix},
	} {
		for name, f := range map[string]func() error{
			"RLock": func() error { return c.rw.RLock(e.ctx) }, "Lock": func() error { return c.rw.Lock(e.ctx) },
			"TryRLock": func() error { return c.rw.TryRLock(e.ctx) }, "TryLock": func() error { return c.rw.TryLock(e.ctx) },
			"RUnlock": func() error { return c.rw.RUnlock(e.ctx) }, "Unlock": func() error { return c.rw.Unlock(e.ctx) },
		} {
			if err := f(); !errors.Is(err, c.want) {
				t.Errorf("%s: %v, want %v", name, err, c.want)
			}
		}
	}
	rw := concurrency.NewRWMutex(s, "x")
	if err := rw.RUnlock(e.ctx); !errors.Is(err, concurrency.ErrNotRLocked) {
		t.Fatalf("RUnlock without RLock: %v", err)
	}
	if err := rw.Unlock(e.ctx); !errors.Is(err, concurrency.ErrNotLocked) {
		t.Fatalf("Unlock without Lock: %v", err)
	}
	assertEmpty(t, e)
	if err := rw.RLock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := rw.Unlock(e.ctx); !errors.Is(err, concurrency.ErrNotLocked) {
		t.Fatalf("Unlock of a read lock: %v", err)
	}
	if err := rw.TryLock(e.ctx); !errors.Is(err, concurrency.ErrLocked) {
		t.Fatalf("TryLock on an RWMutex that holds a read lock: %v", err)
	}
	if err := rw.RUnlock(e.ctx); err != nil {
		t.Fatal(err)
	}
}

// etcd #6278/#16156 family: a write lock on "rwx" does not block "rw".
// Two racing unlocks of one acquisition release it once; the second used
// to take the next acquisition's token or block forever (issue 11).
func TestRWMutexConcurrentUnlocksReleaseOnce(t *testing.T) {
	e := newEnv(t)
	rw := concurrency.NewRWMutex(e.session(), "double-unlock-rw")
	for _, write := range []bool{true, false} {
		lock, unlock, notHeld := rw.RLock, rw.RUnlock, concurrency.ErrNotRLocked
		if write {
			lock, unlock, notHeld = rw.Lock, rw.Unlock, concurrency.ErrNotLocked
		}
		if err := lock(e.ctx); err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, 2)
		for range 2 {
			go func() { errs <- unlock(e.ctx) }()
		}
		var ok, refused int
		for range 2 {
			switch err := recv(t, errs, "unlock"); {
			case err == nil:
				ok++
			case errors.Is(err, notHeld):
				refused++
			default:
				t.Fatal(err)
			}
		}
		if ok != 1 || refused != 1 {
			t.Fatalf("write=%v: %d unlocks succeeded and %d were refused, want 1 and 1", write, ok, refused)
		}
		// The RWMutex is free for the next lock, which a stray token
		// taken by the second unlock would have broken.
		ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		err := lock(ctx)
		cancel()
		if err != nil {
			t.Fatalf("write=%v: lock after the racing unlocks: %v", write, err)
		}
		if err := unlock(e.ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRWMutexPrefixSibling(t *testing.T) {
	e := newEnv(t)
	other := concurrency.NewRWMutex(e.session(), "rwx")
	if err := other.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	rw := concurrency.NewRWMutex(e.session(), "rw")
	if err := rw.TryLock(e.ctx); err != nil {
		t.Fatalf("write lock on rw blocked by rwx: %v", err)
	}
	if err := rw.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := rw.TryRLock(e.ctx); err != nil {
		t.Fatalf("read lock on rw blocked by rwx: %v", err)
	}
}

// On a 3-member cluster, two writers and three readers keep locking while
// the raft leader is stopped and later restarted: a writer never shares
// the lock, and it keeps being granted throughout. Each worker keeps to
// one kind of lock, as a handle in an application does.
func TestRWMutexClusterMemberRestart(t *testing.T) {
	cl := testutil.Cluster(t)
	ctx := testCtx(t)
	var (
		mu               sync.Mutex
		readers, writers int
	)
	// hold records a holder for its time in the lock, a round trip to the
	// cluster, and reports a holder let in beside a writer, or a writer
	// beside anyone.
	hold := func(c *clientv3.Client, write bool) {
		n := &readers
		if write {
			n = &writers
		}
		mu.Lock()
		if writers > 0 || (write && readers > 0) {
			t.Errorf("a holder (writer: %v) let in beside %d readers and %d writers", write, readers, writers)
		}
		*n++
		mu.Unlock()
		gctx, cancel := context.WithTimeout(ctx, time.Second)
		_, _ = c.Get(gctx, "crw-probe") // may fail during the outage
		cancel()
		mu.Lock()
		*n--
		mu.Unlock()
	}
	misuse := func(err error) bool {
		return errors.Is(err, concurrency.ErrNotLocked) || errors.Is(err, concurrency.ErrNotRLocked)
	}
	prog := newProgress()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sessions []*concurrency.Session
	for i := range 5 {
		s := clusterSession(t, cl)
		sessions = append(sessions, s)
		rw := concurrency.NewRWMutex(s, "crw")
		write := i < 2
		lock, unlock := rw.RLock, rw.RUnlock
		if write {
			lock, unlock = rw.Lock, rw.Unlock
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				err := lock(lctx)
				cancel()
				if err != nil {
					if misuse(err) {
						t.Error(err)
						return
					}
					continue // a leader change or a timeout: try again
				}
				hold(s.Client(), write)
				prog.done()
				err = untilDone(ctx, unlock, func(err error) bool {
					return misuse(err) || errors.Is(err, concurrency.ErrLockLost)
				})
				if err != nil && !errors.Is(err, concurrency.ErrLockLost) { // lost: an earlier try landed
					t.Error(err)
					return
				}
			}
		}()
	}
	outage(t, cl, prog, 20)
	close(stop)
	wg.Wait()
	closeLeavesNoKeys(t, ctx, cl, sessions, "crw/")
}

// An RWMutex hands out the holder API and the errors of a Mutex in either
// mode: Guard
// commits only while held, HoldContext and WithWLock/WithRLock see the
// loss of the key, "not held" is ErrLockReleased, and Rev is -1 when
// nothing is held, as for every type.
func TestRWMutexGuardHoldContextAndWith(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	rw := concurrency.NewRWMutex(e.session(), "rw-hold")
	if _, err := rw.Guard(e.ctx, clientv3.OpPut("rw-hold-data", "x")); !errors.Is(err, concurrency.ErrLockReleased) {
		t.Fatalf("Guard while not held: %v, want ErrLockReleased", err)
	}
	hctx, cancel := rw.HoldContext(e.ctx)
	if !errors.Is(context.Cause(hctx), concurrency.ErrLockReleased) {
		t.Fatalf("HoldContext while not held: cause %v", context.Cause(hctx))
	}
	cancel()
	if rw.Rev() != -1 || rw.Key() != "" {
		t.Fatalf("not held: key %q rev %d, want \"\" and -1", rw.Key(), rw.Rev())
	}
	// One "not held" for the type: the unlock errors of either mode match
	// Guard's.
	if err := rw.RUnlock(e.ctx); !errors.Is(err, concurrency.ErrNotRLocked) || !errors.Is(err, concurrency.ErrLockReleased) {
		t.Fatalf("RUnlock while not held: %v, want ErrNotRLocked matching ErrLockReleased", err)
	}
	if err := rw.Unlock(e.ctx); !errors.Is(err, concurrency.ErrNotLocked) || !errors.Is(err, concurrency.ErrLockReleased) || errors.Is(err, concurrency.ErrNotRLocked) {
		t.Fatalf("Unlock while not held: %v, want ErrNotLocked matching ErrLockReleased", err)
	}
	for _, write := range []bool{false, true} {
		lock, unlock := rw.RLock, rw.RUnlock
		if write {
			lock, unlock = rw.Lock, rw.Unlock
		}
		if err := lock(e.ctx); err != nil {
			t.Fatal(err)
		}
		if rw.Header() == nil || rw.Header().Revision < rw.Rev() {
			t.Fatalf("write %v: header %v for token %d", write, rw.Header(), rw.Rev())
		}
		if _, err := rw.Guard(e.ctx, clientv3.OpPut("rw-hold-data", "x")); err != nil {
			t.Fatalf("write %v: Guard while held: %v", write, err)
		}
		r, err := admin.Txn(e.ctx).If(rw.IsOwner()).Commit()
		if err != nil || !r.Succeeded {
			t.Fatalf("write %v: IsOwner while held: %v %v", write, r, err)
		}
		hctx, cancel := rw.HoldContext(e.ctx)
		if _, err := admin.Delete(e.ctx, rw.Key()); err != nil {
			t.Fatal(err)
		}
		<-hctx.Done()
		cancel()
		if !errors.Is(context.Cause(hctx), concurrency.ErrLockLost) {
			t.Fatalf("write %v: HoldContext cause %v, want ErrLockLost", write, context.Cause(hctx))
		}
		if _, err := rw.Guard(e.ctx, clientv3.OpPut("rw-hold-data", "y")); !errors.Is(err, concurrency.ErrLockLost) {
			t.Fatalf("write %v: Guard after the key went: %v, want ErrLockLost", write, err)
		}
		if err := unlock(e.ctx); !errors.Is(err, concurrency.ErrLockLost) {
			t.Fatalf("write %v: unlock after the key went: %v", write, err)
		}
	}
	for _, with := range []func(context.Context, *concurrency.RWMutex, func(context.Context) error) error{concurrency.WithRLock, concurrency.WithWLock} {
		ran := false
		if err := with(e.ctx, rw, func(ctx context.Context) error {
			ran = rw.Rev() > 0
			return nil
		}); err != nil || !ran {
			t.Fatalf("With: %v, ran holding: %v", err, ran)
		}
		err := with(e.ctx, rw, func(ctx context.Context) error {
			if _, err := admin.Delete(e.ctx, rw.Key()); err != nil {
				return err
			}
			<-ctx.Done()
			return nil
		})
		if !errors.Is(err, concurrency.ErrLockLost) {
			t.Fatalf("With, key deleted under f: %v, want ErrLockLost", err)
		}
	}
	if rw.Rev() != -1 {
		t.Fatalf("released: rev %d, want -1", rw.Rev())
	}
	el := concurrency.NewElection(e.session(), "rw-hold-el")
	sm := concurrency.NewSemaphore(e.session(), "rw-hold-sem", 1)
	m := concurrency.NewMutex(e.session(), "rw-hold-mu")
	if el.Rev() != -1 || sm.Rev() != -1 || m.Rev() != -1 {
		t.Fatalf("nothing held: Election %d, Semaphore %d, Mutex %d, want -1 each", el.Rev(), sm.Rev(), m.Rev())
	}
}
