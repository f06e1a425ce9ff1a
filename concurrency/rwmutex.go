package concurrency

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/internal/obs"
)

// Errors of RWMutex. TryLock and TryRLock return ErrLocked when the lock is
// not free; a lock lost under its holder is ErrLockLost, as for Mutex.
var (
	// ErrNotRLocked is returned by RUnlock on an RWMutex that does not hold
	// a read lock.
	ErrNotRLocked = errors.New("rwmutex: RUnlock of an RWMutex that is not read-locked")
	// ErrNotLocked is returned by Unlock on an RWMutex that does not hold
	// the write lock.
	ErrNotLocked = errors.New("rwmutex: Unlock of an RWMutex that is not write-locked")
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
type RWMutex struct {
	s   *Session
	dir string // pfx + "/"
	err error

	// local is a one-token semaphore held from the start of a lock call
	// until its unlock (or its failure).
	local chan struct{}

	// unlockMu serializes unlocks, so that two racing RUnlock or Unlock
	// calls of one acquisition release it once: the second finds it
	// released, instead of taking the next acquisition's token from local
	// or blocking on it forever.
	unlockMu sync.Mutex

	mu    sync.Mutex
	myKey string
	myRev int64
	write bool
	tally *tally // the current acquisition's metrics and logs
}

// NewRWMutex makes an RWMutex on prefix pfx. It talks to the server only
// when locked. A nil session or an empty prefix is reported by the first
// call, which then touches nothing.
func NewRWMutex(s *Session, pfx string) *RWMutex {
	rw := &RWMutex{s: s, dir: pfx + "/", local: make(chan struct{}, 1), myRev: -1}
	switch {
	case s == nil:
		rw.err = ErrNilSession
	case pfx == "":
		rw.err = ErrEmptyPrefix
	}
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
			rw.tally = acquired(rw.s, prim, rw.name(), rw.myKey, rw.myRev, time.Since(start))
			rw.mu.Unlock()
		case errors.Is(err, ErrLocked) && !wait:
			rw.s.opts.rec.TryFailed(prim, rw.name())
		}
	}
	return ctxEnded(ctx, err, ErrLocked, ErrSessionExpired)
}

// name is the prefix as the caller gave it, for metrics and logs.
func (rw *RWMutex) name() string { return strings.TrimSuffix(rw.dir, "/") }

func (rw *RWMutex) lockOnce(ctx context.Context, write, wait bool) error {
	if rw.err != nil {
		return rw.err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if wait {
		select {
		case rw.local <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
	} else {
		select {
		case rw.local <- struct{}{}:
		default:
			return ErrLocked
		}
	}
	kind := "read/"
	if write {
		kind = "write/"
	}
	key := rw.s.claimName(rw.dir + kind)
	rev, err := rw.acquire(ctx, key, write, wait)
	if err != nil {
		rw.s.releaseName(key)
		<-rw.local
		return err
	}
	rw.mu.Lock()
	rw.myKey, rw.myRev, rw.write = key, rev, write
	rw.mu.Unlock()
	return nil
}

// acquire joins the queue with key and waits for its turn; on error the
// key is gone.
func (rw *RWMutex) acquire(ctx context.Context, key string, write, wait bool) (int64, error) {
	c := rw.s.Client()
	var (
		j   *joined
		err error
	)
	// The joining request runs to its answer (joinContext); a ctx that
	// ended meanwhile fails the wait below, which deletes the key.
	jctx, stop := joinContext(ctx, c)
	if wait {
		j, err = join(jctx, rw.s, rw.dir, key, "")
	} else {
		j, err = rw.tryJoin(jctx, key, write)
	}
	stop()
	if err != nil {
		// The request may have created the key (cancelled or timed out
		// after it was sent): take it out of the queue.
		abandon(ctx, rw.s, key)
		return 0, ctxErr(ctx, err)
	}
	if j == nil {
		return 0, ErrLocked
	}
	at := j.hdr.Revision
	switch {
	case !wait:
		if _, blocker := rwBlocker(j.queue, key, j.rev, rw.dir+"write/", write); blocker != nil {
			// Our key predates this call (a resumed lease) and is not
			// through: give it up, as TryLock does.
			err = ErrLocked
		}
	default:
		err = rw.wait(ctx, key, j.rev, write, j.queue, at)
	}
	if err != nil {
		if lerr := leave(ctx, c, key, j.rev); lerr != nil && !errors.Is(err, ErrSessionExpired) {
			err = fmt.Errorf("%w (and deleting the waiter key %q failed: %v; it goes with the session)", err, key, lerr)
		}
		return 0, err
	}
	return j.rev, nil
}

// tryJoin puts key only if nothing blocks it now: no key at all under the
// prefix for a writer, no writer key for a reader. It returns nil when
// blocked, unless our key exists already (a resumed lease).
func (rw *RWMutex) tryJoin(ctx context.Context, key string, write bool) (*joined, error) {
	c := rw.s.Client()
	blockers := rw.dir + "write/"
	if write {
		blockers = rw.dir
	}
	queue := clientv3.OpGet(rw.dir, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	resp, err := c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(blockers).WithPrefix(), "=", 0)).
		Then(clientv3.OpPut(key, "", clientv3.WithLease(rw.s.Lease())), queue).
		Else(clientv3.OpGet(key), queue).
		Commit()
	if err != nil {
		return nil, err
	}
	j := &joined{hdr: resp.Header, rev: resp.Header.Revision, queue: resp.Responses[1].GetResponseRange().Kvs}
	if resp.Succeeded {
		return j, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, nil
	}
	j.existed, j.rev = true, kvs[0].CreateRevision
	return j, nil
}

// rwBlocker finds, in queue, whether our key (created at rev) is present,
// and the youngest key that blocks it: the youngest older writer (a key
// under writers) for a reader, the youngest older key for a writer. nil
// means we hold the lock.
func rwBlocker(queue []*mvccpb.KeyValue, key string, rev int64, writers string, write bool) (present bool, blocker *mvccpb.KeyValue) {
	for _, kv := range queue {
		switch {
		case kv.CreateRevision == rev && string(kv.Key) == key:
			present = true
		case kv.CreateRevision < rev && (write || strings.HasPrefix(string(kv.Key), writers)) &&
			(blocker == nil || kv.CreateRevision > blocker.CreateRevision):
			blocker = kv
		}
	}
	return present, blocker
}

// wait blocks until the key created at rev holds the lock: for a reader,
// no older writer is left; for a writer, no older key. It watches the one
// key that blocks it (the youngest such key) and its own key from now, and
// reads the queue again at the revision the blocker went.
//
// The queue read at revision R is the state at R; the response header's
// revision is the store's current one, later than R. Waiting from the
// header's revision would skip a blocker that went between the two.
func (rw *RWMutex) wait(ctx context.Context, key string, rev int64, write bool, queue []*mvccpb.KeyValue, at int64) error {
	c := rw.s.Client()
	var own, blk *keyWatch
	defer func() {
		if own != nil {
			own.cancel()
		}
		if blk != nil {
			blk.cancel()
		}
	}()
	for {
		present, b := rwBlocker(queue, key, rev, rw.dir+"write/", write)
		if !present {
			return ErrSessionExpired
		}
		if b == nil {
			return nil
		}
		var err error
		if own, blk, err = watchPair(ctx, c, own, key, blk, string(b.Key)); err != nil {
			return err
		}
		next := max(own.created, blk.created)
		if next <= at {
			// Both watches cover every change after at: wait for one.
			if next, err = waitEvent(ctx, rw.s, own, blk, rev, b.CreateRevision); err != nil {
				return err
			}
		}
		// Never behind at (a watch on a lagging member starts earlier).
		r, got, err := recipeGetAt(ctx, c, max(next, at), rw.dir, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithMaxCreateRev(rev))
		if err != nil {
			return err
		}
		queue, at = r.Kvs, got
	}
}

// RUnlock releases a read lock taken with RLock or TryRLock. It returns
// ErrNotRLocked when this RWMutex holds no read lock, and ErrLockLost when
// the lock had already ended (the session expired or the key was deleted).
// When the request fails, the lock is still held and RUnlock can be
// retried.
func (rw *RWMutex) RUnlock(ctx context.Context) error { return rw.unlock(ctx, false) }

// Unlock releases the write lock taken with Lock or TryLock. It returns
// ErrNotLocked when this RWMutex does not hold the write lock, and
// ErrLockLost when the lock had already ended.
func (rw *RWMutex) Unlock(ctx context.Context) error { return rw.unlock(ctx, true) }

func (rw *RWMutex) unlock(ctx context.Context, write bool) error {
	return ctxEnded(ctx, rw.unlockOnce(ctx, write), ErrLockLost, ErrNotLocked, ErrNotRLocked)
}

func (rw *RWMutex) unlockOnce(ctx context.Context, write bool) error {
	if rw.err != nil {
		return rw.err
	}
	rw.unlockMu.Lock()
	defer rw.unlockMu.Unlock()
	rw.mu.Lock()
	key, rev, held := rw.myKey, rw.myRev, rw.write
	rw.mu.Unlock()
	if key == "" || held != write {
		if write {
			return ErrNotLocked
		}
		return ErrNotRLocked
	}
	// Delete only our own acquisition (etcd #22082).
	resp, err := rw.s.Client().Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return err
	}
	rw.mu.Lock()
	rw.myKey, rw.myRev, rw.write = "", -1, false
	t := rw.tally
	rw.tally = nil
	rw.mu.Unlock()
	rw.s.releaseName(key)
	<-rw.local
	if !resp.Succeeded {
		if t != nil {
			t.lost(lossCause(rw.s), ErrLockLost)
		}
		return ErrLockLost
	}
	t.released()
	return nil
}

// Rev is the fencing token of the lock held: the create revision of its
// key, or -1. Tokens of writers increase with every write lock; readers'
// tokens are unique but readers share the lock.
func (rw *RWMutex) Rev() int64 {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return rw.myRev
}

// Key is the key of the lock held, or "".
func (rw *RWMutex) Key() string {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return rw.myKey
}
