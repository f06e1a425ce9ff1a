package memlock_test

import (
	"context"
	"testing"

	"github.com/batonhq/baton/memlock"
)

// BenchmarkTryWithLock measures the locker's own cost, with the in-process
// cache: what TryWithLock adds to the round trips of a real cache.
func BenchmarkTryWithLock(b *testing.B) {
	l, err := memlock.New(memlock.NewMemory())
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
