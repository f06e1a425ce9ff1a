package concurrency_test

import (
	"context"
	"errors"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/batonhq/baton/concurrency"
)

// waitAsync starts b.Wait in a goroutine and returns its result channel.
func waitAsync(ctx context.Context, b *concurrency.Barrier) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- b.Wait(ctx) }()
	return ch
}

// roundTrip makes one write through c, so that events in flight before it
// have been delivered to watchers by the time it returns (near enough for
// mustNotReturn checks, which can only catch early returns).
func roundTrip(t *testing.T, ctx context.Context, c *clientv3.Client) {
	t.Helper()
	if _, err := c.Put(ctx, "round-trip", "x"); err != nil {
		t.Fatal(err)
	}
}

func TestBarrierHoldWaitRelease(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	holder := concurrency.NewBarrier(e.client(), "gate")

	// Not held: Wait and TryWait return at once.
	if err := concurrency.NewBarrier(e.client(), "gate").Wait(e.ctx); err != nil {
		t.Fatalf("Wait on a free barrier: %v", err)
	}
	if err := holder.TryWait(e.ctx); err != nil {
		t.Fatalf("TryWait on a free barrier: %v", err)
	}
	if err := holder.Hold(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := holder.Hold(e.ctx); err != nil {
		t.Fatalf("second Hold: %v, want nil (Hold is idempotent)", err)
	}
	if err := holder.TryWait(e.ctx); !errors.Is(err, concurrency.ErrBarrierHeld) {
		t.Fatalf("TryWait on a held barrier: %v", err)
	}
	var waits []<-chan error
	for range 5 {
		waits = append(waits, waitAsync(e.ctx, concurrency.NewBarrier(e.client(), "gate")))
	}
	roundTrip(t, e.ctx, admin)
	for _, ch := range waits {
		mustNotReturn(t, ch, "Wait on a held barrier")
	}
	if err := holder.Release(e.ctx); err != nil {
		t.Fatal(err)
	}
	for _, ch := range waits {
		if err := recv(t, ch, "Wait after Release"); err != nil {
			t.Fatal(err)
		}
	}
	if err := holder.Release(e.ctx); err != nil {
		t.Fatalf("Release of a free barrier: %v", err)
	}
}

// etcd #16156: Wait read the first key with the barrier's name as a
// prefix, so an unrelated key "gate-0" made Wait on "gate" block, and its
// deletion released Wait on "gate".
func TestBarrierKeySharingPrefixDoesNotConfuseIt(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	if _, err := admin.Put(e.ctx, "gate-0", "unrelated"); err != nil {
		t.Fatal(err)
	}
	b := concurrency.NewBarrier(e.client(), "gate")
	if err := recv(t, waitAsync(e.ctx, b), "Wait on an absent barrier"); err != nil {
		t.Fatalf("Wait on absent %q beside %q: %v", "gate", "gate-0", err)
	}
	if err := b.Hold(e.ctx); err != nil {
		t.Fatal(err)
	}
	ch := waitAsync(e.ctx, concurrency.NewBarrier(e.client(), "gate"))
	roundTrip(t, e.ctx, admin)
	// Changing and deleting the neighbour must not release the barrier.
	if _, err := admin.Put(e.ctx, "gate-0", "changed"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Delete(e.ctx, "gate-0"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Put(e.ctx, "gate/child", "x"); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, e.ctx, admin)
	mustNotReturn(t, ch, "Wait after a neighbour key changed")
	if err := b.Release(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, ch, "Wait after Release"); err != nil {
		t.Fatal(err)
	}
}

// etcd #16223: after the store's revision moved past the barrier key's,
// etcd's Wait watched from a revision that missed the release and blocked
// for ever.
func TestBarrierWaitAfterRevisionMoved(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	b := concurrency.NewBarrier(e.client(), "moved")
	if err := b.Hold(e.ctx); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := admin.Put(e.ctx, "x", ""); err != nil {
			t.Fatal(err)
		}
	}
	var waits []<-chan error
	for range 5 {
		waits = append(waits, waitAsync(e.ctx, concurrency.NewBarrier(e.client(), "moved")))
	}
	roundTrip(t, e.ctx, admin)
	for _, ch := range waits {
		mustNotReturn(t, ch, "Wait on a held barrier")
	}
	if err := b.Release(e.ctx); err != nil {
		t.Fatal(err)
	}
	for _, ch := range waits {
		if err := recv(t, ch, "Wait after Release"); err != nil {
			t.Fatal(err)
		}
	}
}

// The barrier's analogue of a session loss: the waiter's client closes.
// Wait must report it, not return nil.
func TestBarrierWaitClientClosedIsError(t *testing.T) {
	e := newEnv(t)
	b := concurrency.NewBarrier(e.client(), "closed")
	if err := b.Hold(e.ctx); err != nil {
		t.Fatal(err)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: e.eps, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	ch := waitAsync(e.ctx, concurrency.NewBarrier(c, "closed"))
	roundTrip(t, e.ctx, e.client())
	mustNotReturn(t, ch, "Wait on a held barrier")
	c.Close()
	if err := recv(t, ch, "Wait on a closed client"); err == nil {
		t.Fatal("Wait returned nil after its client closed")
	}
}

func TestBarrierBadInput(t *testing.T) {
	e := newEnv(t)
	nilc := concurrency.NewBarrier(nil, "b")
	empty := concurrency.NewBarrier(e.client(), "")
	for name, f := range map[string]func(*concurrency.Barrier) error{
		"Hold":    func(b *concurrency.Barrier) error { return b.Hold(e.ctx) },
		"Release": func(b *concurrency.Barrier) error { return b.Release(e.ctx) },
		"Wait":    func(b *concurrency.Barrier) error { return b.Wait(e.ctx) },
		"TryWait": func(b *concurrency.Barrier) error { return b.TryWait(e.ctx) },
	} {
		if err := f(nilc); !errors.Is(err, concurrency.ErrNilClient) {
			t.Errorf("%s with a nil client: %v", name, err)
		}
		if err := f(empty); !errors.Is(err, concurrency.ErrEmptyPrefix) {
			t.Errorf("%s with an empty key: %v", name, err)
		}
	}
	assertEmpty(t, e)
}

// assertEmpty checks that the server holds no key at all.
func assertEmpty(t *testing.T, e *env) {
	t.Helper()
	r, err := e.client().Get(e.ctx, "", clientv3.WithFromKey(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 0 {
		var ks []string
		for _, kv := range r.Kvs {
			ks = append(ks, string(kv.Key))
		}
		t.Fatalf("bad input wrote keys: %v", ks)
	}
}
