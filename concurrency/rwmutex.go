package concurrency

import (
	"context"
	"errors"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/internal/layout"
	"github.com/batonhq/baton/internal/obs"
)

// Errors of RWMutex. Its vocabulary is Mutex's: TryLock and TryRLock
// return ErrLocked when the lock is not free, "not held" is
// ErrLockReleased (Guard, HoldContext; the errors of RUnlock and Unlock
// below match it), and a lock lost under its holder is ErrLockLost.
var (
	// ErrNotRLocked is returned by RUnlock on an RWMutex that does not hold
	// a read lock. It matches ErrLockReleased.
	ErrNotRLocked error = &errKind{"rwmutex: RUnlock of an RWMutex that is not read-locked", ErrLockReleased}
	// ErrNotLocked is returned by Unlock on an RWMutex that does not hold
	// the write lock. It matches ErrLockReleased.
	ErrNotLocked error = &errKind{"rwmutex: Unlock of an RWMutex that is not write-locked", ErrLockReleased}
)

// RWMutex is a distributed reader/writer lock: any number of readers, or
// one writer. Every lock is a key under pfx + "/read/" or pfx + "/write/",
// attached to the session's lease, and all of them queue together by
// create revision:
//   - a reader holds the lock once no writer older than it is left (it
//     waits for the youngest such writer);
//   - a writer holds the lock once no key older than it is left (it waits
//     for the youngest such key).
//
// So a waiting writer blocks readers that come after it, and writers are
// not starved. A waiter whose session ends returns ErrSessionExpired as
// soon as its key goes, and never takes the lock: it checks its own key at
// every step (etcd's recipe let such a writer in beside the next one,
// #16221).
//
// An RWMutex value holds one lock (read or write) at a time and is safe
// for use by several goroutines: a second RLock or Lock on the same value
// waits until the first is released. Give each concurrent reader its own
// RWMutex; they can share a Session.
//
// Key, Rev, Header, IsOwner, Guard and HoldContext are those of the lock
// held, in either mode, as for a Mutex: Guard returns ErrLockReleased when
// nothing is held and ErrLockLost when the lock ended under it. WithRLock
// and WithWLock are WithLock's counterparts.
type RWMutex struct {
	holder      // key, token, header and release of the lock held
	write  bool // the lock held is the write lock; guarded by mu
}

// NewRWMutex makes an RWMutex on prefix pfx. It talks to the server only
// when locked. A nil session or an empty prefix is reported by the first
// call, which then touches nothing.
func NewRWMutex(s *Session, pfx string) *RWMutex {
	rw := &RWMutex{holder: newHolder(s, pfx, ErrLockReleased, ErrLockLost, ErrLockLost)}
	rw.local = make(chan struct{}, 1)
	return rw
}

// RLock waits until it holds a read lock, ctx ends, or the session ends.
// On failure the waiter's key is deleted before it returns.
func (rw *RWMutex) RLock(ctx context.Context) error { return rw.lock(ctx, false, true) }

// Lock waits until it holds the write lock, ctx ends, or the session ends.
// On failure the waiter's key is deleted before it returns.
func (rw *RWMutex) Lock(ctx context.Context) error { return rw.lock(ctx, true, true) }

// TryRLock takes a read lock if no writer holds or waits for the lock, in
// one transaction, and returns ErrLocked otherwise, writing nothing.
func (rw *RWMutex) TryRLock(ctx context.Context) error { return rw.lock(ctx, false, false) }

// TryLock takes the write lock if nobody holds or waits for the lock, in
// one transaction, and returns ErrLocked otherwise, writing nothing.
func (rw *RWMutex) TryLock(ctx context.Context) error { return rw.lock(ctx, true, false) }

func (rw *RWMutex) lock(ctx context.Context, write, wait bool) error {
	start := time.Now()
	err := rw.lockOnce(ctx, write, wait)
	if rw.err == nil {
		prim := obs.RLock
		if write {
			prim = obs.WLock
		}
		switch {
		case err == nil:
			rw.mu.Lock()
			rw.tally = acquired(rw.s, prim, rw.name(), rw.key, rw.rev, time.Since(start))
			rw.mu.Unlock()
		case errors.Is(err, ErrLocked) && !wait:
			rw.s.opts.rec.TryFailed(prim, rw.name())
		}
	}
	return ctxEnded(ctx, err, ErrLocked, ErrSessionExpired)
}

func (rw *RWMutex) lockOnce(ctx context.Context, write, wait bool) error {
	if rw.err != nil {
		return rw.err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := rw.takeLocal(ctx, wait); err != nil {
		return err
	}
	kind := layout.RWRead
	if write {
		kind = layout.RWWrite
	}
	key := rw.s.claimName(rw.dir + kind)
	rev, hdr, err := rw.acquire(ctx, key, write, wait)
	if err != nil {
		rw.s.releaseName(key)
		<-rw.local
		return err
	}
	rw.mu.Lock()
	rw.key, rw.rev, rw.hdr, rw.write = key, rev, hdr, write
	rw.mu.Unlock()
	return nil
}

// acquire joins the queue with key and waits for its turn; on error the
// key is gone.
//
// The rule of who blocks whom: a reader waits for the youngest writer
// older than it, a writer for the youngest key older than it. TryLock and
// TryRLock put their key only if nothing blocks it now: no key at all
// under the prefix for a writer, no writer key for a reader.
func (rw *RWMutex) acquire(ctx context.Context, key string, write, wait bool) (int64, *pb.ResponseHeader, error) {
	c := rw.s.Client()
	writers, blockers := rw.dir+layout.RWWrite, rw.dir+layout.RWWrite
	if write {
		blockers = rw.dir
	}
	t := &turn{s: rw.s, dir: rw.dir, key: key}
	t.blocker = func(queue []*mvccpb.KeyValue) *mvccpb.KeyValue {
		return youngest(queue, key, t.rev, func(kv *mvccpb.KeyValue) bool {
			return kv.CreateRevision < t.rev && (write || strings.HasPrefix(string(kv.Key), writers))
		})
	}
	r := joinReq{key: key, lease: rw.s.Lease(), reads: []clientv3.Op{keysUnder(rw.dir)}, repeat: wait}
	if !wait {
		r.guard = []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(blockers).WithPrefix(), "=", 0)}
	}
	j, err := join(ctx, c, r)
	if err != nil {
		// The request may have created the key (cancelled or timed out
		// after it was sent): take it out of the queue.
		abandon(ctx, c, rw.s.Lease(), key)
		return 0, nil, ctxErr(ctx, err)
	}
	if j.rev == 0 {
		return 0, nil, ErrLocked
	}
	t.rev = j.rev
	at := j.hdr.Revision
	if !wait {
		if t.blocker(j.kvs(0)) != nil {
			// Our key predates this call (a resumed lease) and is not
			// through: give it up, as TryLock does.
			err = ErrLocked
		}
	} else {
		_, at, err = waitTurn(ctx, t, j.kvs(0), at)
	}
	if err != nil {
		return 0, nil, leftErr(err, key, leave(ctx, c, key, j.rev))
	}
	return j.rev, headerAt(j.hdr, at), nil
}

// RUnlock releases a read lock taken with RLock or TryRLock. It returns
// ErrNotRLocked when this RWMutex holds no read lock, and ErrLockLost when
// the lock had already ended (the session expired or the key was deleted).
// When the request fails, the lock is still held and RUnlock can be
// retried; a retry after a request whose outcome was unknown may find the
// key already deleted by that request, and report ErrLockLost.
func (rw *RWMutex) RUnlock(ctx context.Context) error { return rw.unlock(ctx, false) }

// Unlock releases the write lock taken with Lock or TryLock. It returns
// ErrNotLocked when this RWMutex does not hold the write lock, and
// ErrLockLost when the lock had already ended. Failures are as RUnlock's.
func (rw *RWMutex) Unlock(ctx context.Context) error { return rw.unlock(ctx, true) }

func (rw *RWMutex) unlock(ctx context.Context, write bool) error {
	return ctxEnded(ctx, rw.unlockOnce(ctx, write), ErrLockLost, ErrNotLocked, ErrNotRLocked)
}

func (rw *RWMutex) unlockOnce(ctx context.Context, write bool) error {
	if rw.err != nil {
		return rw.err
	}
	rw.releaseMu.Lock()
	defer rw.releaseMu.Unlock()
	rw.mu.Lock()
	key, rev, held := rw.key, rw.rev, rw.write
	rw.mu.Unlock()
	if key == "" || held != write {
		if write {
			return ErrNotLocked
		}
		return ErrNotRLocked
	}
	present, hdr, err := releaseKey(ctx, rw.s.Client(), key, rev)
	if err != nil {
		return err
	}
	rw.mu.Lock()
	rw.key, rw.rev, rw.hdr, rw.write = "", -1, hdr, false
	t := rw.tally
	rw.tally = nil
	rw.mu.Unlock()
	rw.s.releaseName(key)
	<-rw.local
	if !present {
		if t != nil {
			t.lost(lossCause(rw.s), ErrLockLost)
		}
		return ErrLockLost
	}
	t.released()
	return nil
}

// WithRLock takes a read lock on rw, runs f, and releases it, as WithLock
// does for a Mutex: the context f gets ends, with context.Cause ==
// ErrLockLost, as soon as the lock ends under it.
func WithRLock(ctx context.Context, rw *RWMutex, f func(ctx context.Context) error) error {
	return rw.with(ctx, rw.RLock, rw.RUnlock, f)
}

// WithWLock takes the write lock of rw, runs f, and releases it, as
// WithLock does for a Mutex.
func WithWLock(ctx context.Context, rw *RWMutex, f func(ctx context.Context) error) error {
	return rw.with(ctx, rw.Lock, rw.Unlock, f)
}
