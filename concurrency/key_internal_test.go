package concurrency

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/embedded"
	"github.com/batonhq/baton/internal/testutil"
)

// lostAnswer is a KV whose next transaction, while armed, that lose picks
// (by its Then operations) takes effect on the server but answers as if the
// connection dropped, as when the member that served it stops after
// applying it.
type lostAnswer struct {
	clientv3.KV
	lose  func(ops []clientv3.Op) bool
	after func() // run when an answer is lost, before the error returns
	armed atomic.Bool
	fired atomic.Bool
}

func (k *lostAnswer) Txn(ctx context.Context) clientv3.Txn {
	return &lostAnswerTxn{Txn: k.KV.Txn(ctx), k: k}
}

type lostAnswerTxn struct {
	clientv3.Txn
	k    *lostAnswer
	pick bool
}

func (t *lostAnswerTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.Txn = t.Txn.If(cs...)
	return t
}

func (t *lostAnswerTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.pick = t.pick || t.k.lose(ops)
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *lostAnswerTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t *lostAnswerTxn) Commit() (*clientv3.TxnResponse, error) {
	r, err := t.Txn.Commit()
	if err == nil && t.pick && t.k.armed.CompareAndSwap(true, false) {
		t.k.fired.Store(true)
		if t.k.after != nil {
			t.k.after()
		}
		return nil, status.Error(codes.Unavailable, "error reading from server: EOF (the test lost this answer)")
	}
	return r, err
}

// faultySession is a session on a client of srv whose transactions go
// through a lostAnswer that picks what lose says. The test fails unless an
// answer was lost by its end.
func faultySession(t *testing.T, srv *embedded.Server, lose func(ops []clientv3.Op) bool) (*Session, *lostAnswer) {
	c := testutil.Client(t, srv.Endpoints())
	k := &lostAnswer{KV: c.KV, lose: lose}
	c.KV = k
	s, err := NewSession(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		if !k.fired.Load() {
			t.Error("no request lost its answer")
		}
	})
	return s, k
}

// countKeys is the number of keys under pfx.
func countKeys(t *testing.T, ctx context.Context, c *clientv3.Client, pfx string) int64 {
	t.Helper()
	r, err := c.Get(ctx, pfx, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return r.Count
}

// A joining request that took effect but whose answer was lost (the member
// that served it stopped) is repeated, and the repeat finds the key the
// first one put: the call goes on with that one key instead of failing.
// TestClusterLeaderKilledWhileLockHeld failed once with such an error
// ("rpc error: code = Unavailable desc = error reading from server: EOF")
// from the waiter's Lock.
func TestJoinAnswerLostIsRepeated(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := testutil.Server(t)
	admin := testutil.Client(t, srv.Endpoints())
	faulty := func(t *testing.T) *Session {
		s, k := faultySession(t, srv, func(ops []clientv3.Op) bool {
			return slices.ContainsFunc(ops, clientv3.Op.IsPut)
		})
		k.armed.Store(true) // the first join
		return s
	}
	count := func(t *testing.T, pfx string) int64 { return countKeys(t, ctx, admin, pfx) }
	t.Run("Mutex", func(t *testing.T) {
		m := NewMutex(faulty(t), "lost-mutex")
		if err := m.Lock(ctx); err != nil {
			t.Fatalf("Lock: %v", err)
		}
		if n := count(t, "lost-mutex/"); n != 1 {
			t.Fatalf("%d keys, want the one of the holder", n)
		}
		if err := m.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Semaphore", func(t *testing.T) {
		sm := NewSemaphore(faulty(t), "lost-sem", 2)
		if err := sm.Acquire(ctx, 2); err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		if n := count(t, "lost-sem/"); n != 1 {
			t.Fatalf("%d keys, want the one of the holder", n)
		}
		if err := sm.Release(ctx, 2); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("DoubleBarrier", func(t *testing.T) {
		b := NewDoubleBarrier(faulty(t), "lost-db", 1)
		if err := b.Enter(ctx); err != nil {
			t.Fatalf("Enter: %v", err)
		}
		if n := count(t, "lost-db/waiters/"); n != 1 {
			t.Fatalf("%d participant keys, want 1", n)
		}
		if err := b.Leave(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// A release that took effect but whose answer was lost is repeated, and
// the repeat, finding the key gone, reports the release done: not the lost
// answer's error, and not a lost hold. RWMutex and Semaphore used to send
// their release once and return gRPC's Unavailable.
func TestReleaseAnswerLostIsRepeated(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := testutil.Server(t)
	admin := testutil.Client(t, srv.Endpoints())
	// A release deletes a key, or (Semaphore) runs a transaction per grant.
	releases := func(ops []clientv3.Op) bool {
		return slices.ContainsFunc(ops, func(op clientv3.Op) bool { return op.IsDelete() || op.IsTxn() })
	}
	type held struct {
		name    string
		pfx     string
		acquire func(s *Session) (release func(context.Context) error, err error)
		left    int64 // keys left under pfx after the release
	}
	for _, h := range []held{
		{"Mutex", "lost-rel-mutex", func(s *Session) (func(context.Context) error, error) {
			m := NewMutex(s, "lost-rel-mutex")
			return m.Unlock, m.Lock(ctx)
		}, 0},
		{"RWMutex/read", "lost-rel-rw", func(s *Session) (func(context.Context) error, error) {
			rw := NewRWMutex(s, "lost-rel-rw")
			return rw.RUnlock, rw.RLock(ctx)
		}, 0},
		{"RWMutex/write", "lost-rel-rw", func(s *Session) (func(context.Context) error, error) {
			rw := NewRWMutex(s, "lost-rel-rw")
			return rw.Unlock, rw.Lock(ctx)
		}, 0},
		{"Election", "lost-rel-el", func(s *Session) (func(context.Context) error, error) {
			e := NewElection(s, "lost-rel-el")
			return e.Resign, e.Campaign(ctx, "v")
		}, 0},
		{"Semaphore", "lost-rel-sem", func(s *Session) (func(context.Context) error, error) {
			sm := NewSemaphore(s, "lost-rel-sem", 3)
			if err := sm.Acquire(ctx, 1); err != nil {
				return nil, err
			}
			return func(ctx context.Context) error { return sm.Release(ctx, 3) }, sm.Acquire(ctx, 2)
		}, 0},
		// A release in part rewrites the grant's key: its repeat succeeds
		// again, and the grant keeps the rest.
		{"Semaphore/part", "lost-rel-part", func(s *Session) (func(context.Context) error, error) {
			sm := NewSemaphore(s, "lost-rel-part", 3)
			return func(ctx context.Context) error {
				if err := sm.Release(ctx, 1); err != nil {
					return err
				}
				if h := sm.Held(); h != 1 {
					return fmt.Errorf("Held() = %d after releasing 1 of 2, want 1", h)
				}
				return nil
			}, sm.Acquire(ctx, 2)
		}, 1},
		// WithPermits releases on its own: its error is the release's.
		{"WithPermits", "lost-rel-wp", func(s *Session) (func(context.Context) error, error) {
			sm := NewSemaphore(s, "lost-rel-wp", 1)
			k := s.Client().KV.(*lostAnswer)
			return nil, WithPermits(ctx, sm, 1, func(context.Context) error {
				k.armed.Store(true)
				return nil
			})
		}, 0},
	} {
		t.Run(h.name, func(t *testing.T) {
			s, k := faultySession(t, srv, releases)
			release, err := h.acquire(s)
			if err != nil {
				t.Fatalf("acquire: %v", err)
			}
			if release != nil {
				k.armed.Store(true)
				if err := release(ctx); err != nil {
					t.Fatalf("release: %v; want nil", err)
				}
			}
			if n := countKeys(t, ctx, admin, h.pfx+"/"); n != h.left {
				t.Fatalf("%d keys left under %s, want %d", n, h.pfx, h.left)
			}
		})
	}
}

// A release in part whose answer is lost while the grant's session ends
// is not taken for done: the repeat's rewrite finds the grant gone, and
// Release reports the permits lost instead of keeping a grant that is not
// there.
func TestReleaseInPartAnswerLostGrantGone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := testutil.Server(t)
	admin := testutil.Client(t, srv.Endpoints())
	s, k := faultySession(t, srv, func(ops []clientv3.Op) bool {
		return slices.ContainsFunc(ops, clientv3.Op.IsTxn)
	})
	sm := NewSemaphore(s, "lost-part-gone", 3)
	if err := sm.Acquire(ctx, 2); err != nil {
		t.Fatal(err)
	}
	k.after = func() {
		if _, err := admin.Revoke(ctx, s.Lease()); err != nil {
			t.Error(err)
		}
	}
	k.armed.Store(true)
	if err := sm.Release(ctx, 1); !errors.Is(err, ErrPermitsLost) {
		t.Fatalf("Release: %v; want ErrPermitsLost", err)
	}
	if h := sm.Held(); h != 0 {
		t.Fatalf("Held() = %d after the grant went, want 0", h)
	}
}
