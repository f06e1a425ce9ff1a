package concurrency_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/concurrency"
)

// A Release of more than 100 grants takes several transactions. When a
// later one fails, the grants the earlier ones released must leave the
// Semaphore: Held and Rev count only what is still held, and a retry
// releases the rest (issue 11: the earlier grants stayed behind with no
// permits, as phantoms).
func TestSemaphoreReleaseOfManyGrantsFailingHalfway(t *testing.T) {
	e := newEnv(t)
	var releases, failAt atomic.Int64
	failAt.Store(-1)
	c := stmDial(t, e.eps, func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if r, ok := req.(*pb.TxnRequest); ok && len(r.Compare) == 0 && len(r.Success) > 0 && r.Success[0].GetRequestTxn() != nil {
			if releases.Add(1) == failAt.Load() {
				return status.Error(codes.FailedPrecondition, "test: the second release transaction fails")
			}
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	s, err := concurrency.NewSession(c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sem := concurrency.NewSemaphore(s, "many", 500)
	const grants = 150
	revs := make([]int64, grants)
	for i := range grants {
		if err := sem.Acquire(e.ctx, 1); err != nil {
			t.Fatal(err)
		}
		revs[i] = sem.Rev()
	}
	failAt.Store(releases.Load() + 2)
	if err := sem.Release(e.ctx, grants); err == nil {
		t.Fatal("Release succeeded although its second transaction failed")
	}
	// The first transaction released the 100 youngest grants.
	if got := sem.Held(); got != grants-100 {
		t.Fatalf("Held after a half-failed Release = %d, want %d", got, grants-100)
	}
	if got, want := sem.Rev(), revs[grants-101]; got != want {
		t.Fatalf("Rev = %d, want %d: the youngest grant still held", got, want)
	}
	keys, err := e.client().Get(e.ctx, "many/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if keys.Count != grants-100 {
		t.Fatalf("%d keys on the server, want %d", keys.Count, grants-100)
	}
	if err := sem.Release(e.ctx, grants); err == nil {
		t.Fatal("releasing more than held succeeded")
	}
	if err := sem.Release(e.ctx, grants-100); err != nil {
		t.Fatalf("retrying the rest: %v", err)
	}
	if got := sem.Held(); got != 0 {
		t.Fatalf("Held = %d after releasing everything", got)
	}
	keys, err = e.client().Get(e.ctx, "many/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if keys.Count != 0 {
		t.Fatalf("%d keys left on the server", keys.Count)
	}
	if !errors.Is(sem.Release(e.ctx, 1), concurrency.ErrPermitsNotHeld) {
		t.Fatal("a Release with nothing held is not ErrPermitsNotHeld")
	}
}
