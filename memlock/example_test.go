package memlock_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/batonhq/baton/memlock"
	"github.com/batonhq/baton/metrics"
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

// Metrics go to a registry and state changes to a logger: here a lock that
// another worker fails to take, then loses when it is taken over.
func ExampleWithMetrics() {
	reg := prometheus.NewRegistry() // in a service: prometheus.DefaultRegisterer
	m := metrics.New(reg)
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{} // for a stable Output
			}
			return a
		},
	}))
	l, err := memlock.New(memlock.NewMemory(), memlock.WithMetrics(m), memlock.WithLogger(logger),
		memlock.WithTTL(time.Second), memlock.WithRefreshInterval(100*time.Millisecond), memlock.WithTimeout(100*time.Millisecond))
	if err != nil {
		panic(err)
	}
	l.TryWithLock(context.Background(), "job", "worker-1", func(ctx context.Context) error {
		l.TryWithLock(ctx, "job", "worker-2", func(context.Context) error { return nil })
		// worker-1, restarted, takes its lock over and releases it: the
		// next refresh finds the lock gone.
		l.TryWithLock(context.Background(), "job", "worker-1", func(context.Context) error { return nil })
		<-ctx.Done()
		return context.Cause(ctx)
	})

	families, _ := reg.Gather()
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "baton_memlock_") {
			continue
		}
		for _, s := range f.GetMetric() {
			fmt.Print(f.GetName())
			for _, p := range s.GetLabel() {
				fmt.Printf(" %s=%s", p.GetName(), p.GetValue())
			}
			fmt.Println(":", s.GetCounter().GetValue())
		}
	}
	// Output:
	// level=WARN msg="memlock: lock lost" key=job client_id=worker-1 backend=memory cause=gone
	// baton_memlock_acquisitions_total backend=memory name=job: 2
	// baton_memlock_failed_to_lock_total backend=memory name=job: 1
	// baton_memlock_losses_total backend=memory cause=gone name=job: 1
	// baton_memlock_refreshes_total backend=memory name=job result=failed: 1
}
