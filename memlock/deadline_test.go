package memlock_test

// The deadline sweep of issue 10 §3, for memlock: TryWithLock runs under
// contexts whose deadlines fall at random points inside its requests, on
// a free lock and on one another client holds. Its error must be nil, or
// match ctx.Err() or a documented sentinel (ErrFailedToLock, ErrLockLost),
// and once it returns, the lock key must not hold this caller's value.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/batonhq/baton/memlock"
)

func TestDeadlineSweepTryWithLock(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		l := b.locker(t)
		seed := uint64(time.Now().UnixNano())
		t.Logf("seed %d", seed)
		r := rand.New(rand.NewPCG(seed, 1))
		n := 60
		if testing.Short() {
			n = 15
		}
		for i := range n {
			key := fmt.Sprintf("sweep-%d", i)
			contended := r.IntN(2) == 0
			if contended {
				b.set(t, key, "other")
			}
			d := time.Duration(r.IntN(4000)) * time.Microsecond
			if r.IntN(10) == 0 {
				d = 0
			}
			ctx, cancel := context.WithTimeout(context.Background(), d)
			ran := false
			err := l.TryWithLock(ctx, key, "me", func(context.Context) error { ran = true; return nil })
			if dl, ok := ctx.Deadline(); ok && err != nil && !time.Now().Before(dl) {
				<-ctx.Done()
			}
			cerr := ctx.Err()
			cancel()
			switch {
			case err == nil:
				if !ran {
					t.Errorf("iteration %d: nil error and f did not run", i)
				}
				if contended {
					t.Errorf("iteration %d: took a lock another client held", i)
				}
			case cerr != nil && errors.Is(err, cerr),
				errors.Is(err, memlock.ErrFailedToLock), errors.Is(err, memlock.ErrLockLost):
			default:
				t.Errorf("iteration %d, deadline %v: error %T %q is neither ctx.Err() (%v) nor a sentinel", i, d, err, err, cerr)
			}
			v, ok := b.get(t, key)
			switch {
			case contended && (!ok || v != "other"):
				t.Errorf("iteration %d, deadline %v: the other client's lock became %q (present %v)", i, d, v, ok)
			case !contended && ok:
				t.Errorf("iteration %d, deadline %v: TryWithLock returned %v and left %q behind", i, d, err, v)
			}
			if ok {
				b.del(t, key)
			}
		}
	})
}
