package concurrency

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/batonhq/baton/internal/testutil"
)

func TestSTMBackoffBounds(t *testing.T) {
	base, maxDelay := 2*time.Millisecond, 100*time.Millisecond
	if d := stmBackoff(base, maxDelay, 1); d != 0 {
		t.Fatalf("first conflict: %v, want an immediate retry", d)
	}
	if d := stmBackoff(0, 0, 5); d != 0 {
		t.Fatalf("disabled backoff slept %v", d)
	}
	for n := 2; n < 80; n++ {
		bound := maxDelay
		if s := n - 2; s < 10 {
			bound = min(maxDelay, base<<s)
		}
		var top time.Duration
		for range 200 {
			d := stmBackoff(base, maxDelay, n)
			if d < 0 || d > bound {
				t.Fatalf("conflict %d: %v outside [0, %v]", n, d, bound)
			}
			top = max(top, d)
		}
		// Jittered, but spread over the window: 200 draws all in its
		// lower half would be a broken generator.
		if top < bound/2 {
			t.Fatalf("conflict %d: 200 draws all below %v, window %v", n, top, bound)
		}
	}
}

// TestSTMBackoffSleepsAndHonoursAbort forces three conflicts in a row and
// checks the pauses between attempts: none before the second attempt, one
// before each later one, and an abort context that ends during a pause
// ends the transaction with nothing written.
func TestSTMBackoffSleepsAndHonoursAbort(t *testing.T) {
	srv := testutil.Server(t)
	c := testutil.Client(t, srv.Endpoints())
	other := testutil.Client(t, srv.Endpoints())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var mu sync.Mutex
	var pauses []time.Duration
	abortOnPause := 0 // end the abort context at this pause (1-based); 0: never
	actx, acancel := context.WithCancel(ctx)
	defer acancel()
	hook := func(so *stmOptions) {
		so.sleep = func(ctx context.Context, d time.Duration) error {
			mu.Lock()
			pauses = append(pauses, d)
			n := len(pauses)
			mu.Unlock()
			if n == abortOnPause {
				acancel()
				return ctx.Err()
			}
			return nil
		}
	}
	run := func(conflicts int) (attempts int, err error) {
		_, err = NewSTM(c, func(s STM) error {
			attempts++
			v := s.Get("bo/k")
			if attempts <= conflicts {
				// Another writer changes the key under every attempt.
				if _, err := other.Put(ctx, "bo/k", v+"x"); err != nil {
					return err
				}
			}
			s.Put("bo/k", v+"!")
			return nil
		}, hook, WithAbortContext(actx), WithRetryBackoff(time.Millisecond, 8*time.Millisecond))
		return attempts, err
	}

	attempts, err := run(3)
	if err != nil || attempts != 4 {
		t.Fatalf("%d attempts, err %v; want 4 and nil", attempts, err)
	}
	if len(pauses) != 2 || pauses[0] > time.Millisecond || pauses[1] > 2*time.Millisecond {
		t.Fatalf("pauses %v, want two, within 1ms and 2ms", pauses)
	}

	pauses, abortOnPause = nil, 1
	r, err := other.Get(ctx, "bo/k")
	if err != nil {
		t.Fatal(err)
	}
	before := r.Header.Revision
	attempts, err = run(2)
	if !errors.Is(err, context.Canceled) || attempts != 2 {
		t.Fatalf("%d attempts, err %v; want 2 and context.Canceled", attempts, err)
	}
	r, err = other.Get(ctx, "bo/k", clientv3.WithSerializable())
	if err != nil {
		t.Fatal(err)
	}
	// The other writer's two puts, nothing of ours.
	if r.Header.Revision != before+2 {
		t.Fatalf("revision %d, want %d: the aborted transaction wrote", r.Header.Revision, before+2)
	}
}

// TestSTMReadOnlyAfterBackoffIsValidated: after a pause the next attempt
// reads its snapshot serializably, which may be stale, so an attempt that
// turns out read-only is checked with a compare-only Txn before NewSTM
// returns its reads as current.
func TestSTMReadOnlyAfterBackoffIsValidated(t *testing.T) {
	srv := testutil.Server(t)
	var validations atomic.Int64
	c := testutil.Client(t, srv.Endpoints())
	vc, err := clientv3.New(clientv3.Config{
		Endpoints: srv.Endpoints(),
		Logger:    zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if r, ok := req.(*pb.TxnRequest); ok && len(r.Compare) > 0 && len(r.Success) == 0 {
				validations.Add(1)
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	noSleep := func(so *stmOptions) { so.sleep = func(context.Context, time.Duration) error { return nil } }

	attempts := 0
	var last string
	_, err = NewSTM(vc, func(s STM) error {
		attempts++
		last = s.Get("rov/k")
		switch attempts {
		case 1, 2:
			// Conflict twice, so that a pause comes before attempt 3.
			if _, err := c.Put(ctx, "rov/k", last+"x"); err != nil {
				return err
			}
			s.Put("rov/k", last+"!")
		case 3:
			// Read-only from here on; make this attempt's snapshot stale.
			if _, err := c.Put(ctx, "rov/k", "changed"); err != nil {
				return err
			}
		}
		return nil
	}, noSleep)
	if err != nil {
		t.Fatal(err)
	}
	if attempts != 4 || last != "changed" || validations.Load() != 2 {
		t.Fatalf("%d attempts, last read %q, %d validations; want 4, \"changed\", 2", attempts, last, validations.Load())
	}
}
