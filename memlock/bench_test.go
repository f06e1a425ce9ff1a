package memlock_test

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/batonhq/baton/memlock"
	"github.com/batonhq/baton/metrics"
)

// BenchmarkTryWithLock measures the locker's own cost, with the in-process
// cache: what TryWithLock adds to the round trips of a real cache. The
// metrics variant shows what WithMetrics and WithLogger add to a call that
// loses nothing: one acquisition counted, nothing logged.
func BenchmarkTryWithLock(b *testing.B) {
	b.Run("plain", func(b *testing.B) { benchTryWithLock(b) })
	b.Run("metrics", func(b *testing.B) {
		benchTryWithLock(b, memlock.WithMetrics(metrics.New(prometheus.NewRegistry())), memlock.WithLogger(nil))
	})
}

func benchTryWithLock(b *testing.B, opts ...memlock.Option) {
	l, err := memlock.New(memlock.NewMemory(), opts...)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	empty := func(context.Context) error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		if err := l.TryWithLock(ctx, "job", "worker-1", empty); err != nil {
			b.Fatal(err)
		}
	}
}
