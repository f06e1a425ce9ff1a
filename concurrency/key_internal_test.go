package concurrency

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/internal/testutil"
)

// lostJoin is a KV whose first transaction that puts a key takes effect on
// the server but answers as if the connection dropped, as when the member
// that served it stops after applying it.
type lostJoin struct {
	clientv3.KV
	fired atomic.Bool
}

func (k *lostJoin) Txn(ctx context.Context) clientv3.Txn {
	return &lostJoinTxn{Txn: k.KV.Txn(ctx), k: k}
}

type lostJoinTxn struct {
	clientv3.Txn
	k    *lostJoin
	puts bool
}

func (t *lostJoinTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.Txn = t.Txn.If(cs...)
	return t
}

func (t *lostJoinTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	for _, op := range ops {
		t.puts = t.puts || op.IsPut()
	}
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *lostJoinTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t *lostJoinTxn) Commit() (*clientv3.TxnResponse, error) {
	r, err := t.Txn.Commit()
	if err == nil && t.puts && t.k.fired.CompareAndSwap(false, true) {
		return nil, status.Error(codes.Unavailable, "error reading from server: EOF (the test lost this answer)")
	}
	return r, err
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
		c := testutil.Client(t, srv.Endpoints())
		k := &lostJoin{KV: c.KV}
		c.KV = k
		s, err := NewSession(c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			s.Close()
			if !k.fired.Load() {
				t.Error("no joining request lost its answer")
			}
		})
		return s
	}
	count := func(t *testing.T, pfx string) int64 {
		t.Helper()
		r, err := admin.Get(ctx, pfx, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return r.Count
	}
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
