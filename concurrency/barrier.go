package concurrency

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrBarrierHeld is returned by Barrier.TryWait while the barrier is held.
var ErrBarrierHeld = errors.New("barrier: held")

// Barrier blocks processes until one of them releases it. The barrier is
// held while its key exists; Release deletes the key and every waiter
// returns.
//
// The key is exactly the one given: a key that merely shares it as a prefix
// ("gate" and "gate-2") is a different barrier (etcd's recipe treated it as
// the same one, #16156). The key is not attached to any lease, so a held
// barrier outlives the process that held it, as in Curator.
//
// A Barrier is safe for use by several goroutines.
type Barrier struct {
	c   *clientv3.Client
	key string
	err error // bad input, reported by every call
}

// NewBarrier makes a Barrier on key. It talks to the server only when used.
// A nil client or an empty key is reported by the first call.
func NewBarrier(c *clientv3.Client, key string) *Barrier {
	b := &Barrier{c: c, key: key}
	switch {
	case c == nil:
		b.err = ErrNilClient
	case key == "":
		b.err = ErrEmptyPrefix
	}
	return b
}

// Hold puts the barrier's key, so that Wait blocks. Holding a barrier that
// is already held is not an error: a Barrier is one flag shared by all, and
// a retried Hold must not fail because its first attempt landed.
func (b *Barrier) Hold(ctx context.Context) error {
	if b.err != nil {
		return b.err
	}
	_, err := b.c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(b.key), "=", 0)).
		Then(clientv3.OpPut(b.key, "")).
		Commit()
	return ctxEnded(ctx, err)
}

// Release deletes the barrier's key and so lets every waiter through.
// Releasing a barrier that is not held is not an error.
func (b *Barrier) Release(ctx context.Context) error {
	if b.err != nil {
		return b.err
	}
	_, err := b.c.Delete(ctx, b.key)
	return ctxEnded(ctx, err)
}

// TryWait returns nil if the barrier is not held now, and ErrBarrierHeld
// if it is. It never blocks on the barrier.
func (b *Barrier) TryWait(ctx context.Context) error {
	if b.err != nil {
		return b.err
	}
	r, err := b.c.Get(ctx, b.key, clientv3.WithCountOnly())
	if err != nil {
		return ctxEnded(ctx, err)
	}
	if r.Count > 0 {
		return ErrBarrierHeld
	}
	return nil
}

// Wait blocks until the barrier is released, and returns nil at once if it
// is not held.
//
// A member that loses its raft leader cancels Wait's watch; Wait then
// watches again from the revision after the last one it saw, so that a
// leader election costs it nothing and no release can slip through the gap.
// It returns an error, never nil, when it cannot tell that the barrier was
// released: ctx ended, the client closed, the cluster stayed without a
// leader, or the revisions it missed were compacted before it could resume
// (the error wraps rpctypes.ErrCompacted). etcd's recipe returned nil in
// those cases. Calling Wait again after such an error is safe.
func (b *Barrier) Wait(ctx context.Context) error { return ctxEnded(ctx, b.wait(ctx, nil)) }

// wait is Wait; trace, when set, is called with "watching" once the watch
// is in place and the barrier was seen held, and with "rewatch" when the
// watch broke and is about to be made again (tests act at those moments).
func (b *Barrier) wait(ctx context.Context, trace func(event string)) error {
	if b.err != nil {
		return b.err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// 1. Watch the key from now: the watch is synced on the server and
	//    sees the release at once (etcd's recipe watched from an old
	//    revision and waited for the server's 100 ms catch-up loop).
	w, err := newWatch(ctx, b.c, b.key)
	if err != nil {
		return fmt.Errorf("barrier: watch %q: %w", b.key, err)
	}
	defer func() { w.cancel() }()
	// 2. Read the key now, linearizably: a Hold that returned before this
	//    Wait began is seen even when the member that made the watch lags
	//    behind it. The read is at a revision no earlier than the watch's
	//    start, so no release can fall between the two.
	r, seen, err := getAt(ctx, b.c, 0, b.key)
	if err != nil {
		return err
	}
	if len(r.Kvs) == 0 {
		return nil
	}
	if trace != nil {
		trace("watching")
	}
	// 3. Wait for the deletion of the key. Invariant: the key was held at
	//    revision seen, and the watch reports every change after seen (and
	//    perhaps some before it, which the read already holds: skipped).
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case wr, ok := <-w.ch:
			err := watchErr(ctx, b.c, wr, ok)
			if err != nil && transient(err) && ctx.Err() == nil && b.c.Ctx().Err() == nil {
				// Cancelled by a member without a leader (the watch
				// requires one): resume after seen.
				if trace != nil {
					trace("rewatch")
				}
				w.cancel()
				var nw *keyWatch
				if nw, err = newWatch(ctx, b.c, b.key, clientv3.WithRev(seen+1)); err == nil {
					w = nw
					continue
				}
			}
			if err != nil {
				return fmt.Errorf("barrier: wait on %q: %w", b.key, err)
			}
			for _, ev := range wr.Events {
				if ev.Kv.ModRevision <= seen {
					continue
				}
				if ev.Type == mvccpb.DELETE {
					return nil
				}
				seen = ev.Kv.ModRevision
			}
		}
	}
}
