package memlock_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/batonhq/baton/memlock"
)

// The luci form: the cache travels in the context. In a service it would be
// memlock.NewMemcache(memcache.New("127.0.0.1:11211")) or
// memlock.NewRedis(redis.NewClient(...)).
func ExampleTryWithLock() {
	ctx := memlock.Use(context.Background(), memlock.NewMemory())

	err := memlock.TryWithLock(ctx, "rebuild-index", "worker-1", func(ctx context.Context) error {
		fmt.Println("worker-1 rebuilds the index")

		// Meanwhile, another worker tries once and gives up.
		err := memlock.TryWithLock(ctx, "rebuild-index", "worker-2", func(context.Context) error {
			fmt.Println("never printed")
			return nil
		})
		fmt.Println("worker-2:", err)
		return nil
	})
	fmt.Println("worker-1:", err)
	// Output:
	// worker-1 rebuilds the index
	// worker-2: memlock: failed to obtain lock
	// worker-1: <nil>
}

// f's context ends with ErrLockLost as its cause when the lock is lost.
// Here the same worker, restarted, takes its lock over and is done with it
// before the first holding's next refresh, which finds the lock gone.
func ExampleLocker_TryWithLock() {
	l, err := memlock.New(memlock.NewMemory(),
		memlock.WithTTL(time.Second), memlock.WithRefreshInterval(100*time.Millisecond), memlock.WithTimeout(100*time.Millisecond))
	if err != nil {
		panic(err)
	}
	err = l.TryWithLock(context.Background(), "job", "worker-1", func(ctx context.Context) error {
		// Not nested: context.Background(), not ctx.
		l.TryWithLock(context.Background(), "job", "worker-1", func(context.Context) error {
			fmt.Println("restarted worker-1 took the lock over")
			return nil
		})
		<-ctx.Done()
		return context.Cause(ctx)
	})
	fmt.Println(err, errors.Is(err, memlock.ErrLockLost))
	// Output:
	// restarted worker-1 took the lock over
	// memlock: lock lost true
}

// With WithFencing, f reads a token that grows with every holding of the
// key; a resource that refuses tokens smaller than the largest it has seen
// is safe from a holder that lost its lock without noticing.
func ExampleToken() {
	l, err := memlock.New(memlock.NewMemory(), memlock.WithFencing())
	if err != nil {
		panic(err)
	}
	for range 2 {
		l.TryWithLock(context.Background(), "ledger", "worker-1", func(ctx context.Context) error {
			token, ok := memlock.Token(ctx)
			fmt.Println(token, ok)
			return nil
		})
	}
	// Output:
	// 1 true
	// 2 true
}
