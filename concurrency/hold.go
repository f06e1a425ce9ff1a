package concurrency

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/internal/layout"
	"github.com/batonhq/baton/internal/obs"
)

// holder is the one holder type: what a Mutex, an RWMutex (in either mode)
// and an Election hold once acquired, and a Semaphore's youngest grant. It carries the acquisition's key,
// the key's create revision (the fencing token), the header of the request
// that acquired it, the acquisition's metrics, the local one-acquisition
// token and a serialized release, and it gives each of them Key, Rev,
// Header, IsOwner, Guard and HoldContext, all with one meaning.
type holder struct {
	s   *Session
	dir string // the prefix + "/"
	err error  // bad input, reported by every call

	notHeld   error // Guard's and HoldContext's error when nothing is held
	lost      error // the cause of a hold that ended under its holder
	guardLost error // Guard's error when the hold had ended

	// local is a one-token semaphore held from the start of an
	// acquisition until its release (or its failure), for the types that
	// allow one acquisition at a time per value; nil for the others.
	local chan struct{}

	// releaseMu serializes releases, so that two racing releases of one
	// acquisition release it once: the second finds it released, instead
	// of taking the next acquisition's token from local or blocking on it
	// forever.
	releaseMu sync.Mutex

	mu    sync.Mutex // guards the fields below, and the embedding type's
	key   string     // "" when nothing is held
	rev   int64      // -1 when nothing is held
	hdr   *pb.ResponseHeader
	tally *tally // the current acquisition's metrics and logs
}

// newHolder is a holder of nothing on s under prefix pfx, with the type's
// errors. A nil session or an empty prefix is its err.
func newHolder(s *Session, pfx string, notHeld, lost, guardLost error) holder {
	var err error
	switch {
	case s == nil:
		err = ErrNilSession
	case pfx == "":
		err = ErrEmptyPrefix
	}
	return holder{s: s, dir: layout.Dir(pfx), err: err, notHeld: notHeld, lost: lost, guardLost: guardLost, rev: -1}
}

// name is the prefix as the caller gave it, for metrics and logs.
func (h *holder) name() string { return strings.TrimSuffix(h.dir, "/") }

// takeLocal takes the local token: it waits for it until ctx ends, or
// fails at once with ErrLocked when wait is false.
func (h *holder) takeLocal(ctx context.Context, wait bool) error {
	if !wait {
		select {
		case h.local <- struct{}{}:
			return nil
		default:
			return ErrLocked
		}
	}
	select {
	case h.local <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// current is the acquisition held: key "" when none.
func (h *holder) current() (key string, rev int64, t *tally) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.key, h.rev, h.tally
}

// Key is the key of the acquisition held, or "" when nothing is held.
func (h *holder) Key() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.key
}

// Rev is the fencing token of the acquisition held: the create revision
// of its key. It is unique per acquisition and strictly greater than the
// token of every earlier acquisition of the same prefix (readers of an
// RWMutex share the lock, each with a token of its own). Pass it to the
// resource the hold protects, which should reject requests with a token
// lower than the highest it has seen. It is -1 when nothing is held.
func (h *holder) Rev() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rev
}

// Header is the response header of the last request that changed the
// hold: after an acquisition its revision is the one at which it was
// acquired; after a release, the release's.
func (h *holder) Header() *pb.ResponseHeader {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hdr
}

// IsOwner is a comparison that holds while the acquisition held now is
// still held, for use in a transaction (see also Guard). When nothing is
// held it never holds.
func (h *holder) IsOwner() clientv3.Cmp {
	h.mu.Lock()
	defer h.mu.Unlock()
	return clientv3.Compare(clientv3.CreateRevision(h.key), "=", h.rev)
}

// Guard commits ops in one transaction only while the acquisition is held.
// It returns the type's "not held" error (Mutex and RWMutex:
// ErrLockReleased; Election: ErrElectionNotLeader; Semaphore:
// ErrPermitsNotHeld) when nothing is held, and its "lost" error
// (ErrLockLost; Election: an error that matches both ErrElectionNotLeader
// and ErrLeadershipLost; Semaphore: ErrPermitsLost), committing nothing,
// when the hold ended under it (the session expired or the key was
// deleted). See the package doc's table.
func (h *holder) Guard(ctx context.Context, ops ...clientv3.Op) (*clientv3.TxnResponse, error) {
	if h.err != nil {
		return nil, h.err
	}
	key, rev, _ := h.current()
	if key == "" {
		return nil, h.notHeld
	}
	resp, err := guard(ctx, h.s.Client(), key, rev, h.guardLost, ops)
	return resp, ctxEnded(ctx, err, h.guardLost)
}

// HoldContext returns a context derived from parent that is cancelled,
// with context.Cause == the type's "lost" error (ErrLockLost,
// ErrLeadershipLost, ErrPermitsLost), as soon as the hold ends under it: the session ends
// or anyone deletes the key, seen through a watch on the key, or when the
// session's trust window lapses (WithLeaseTrust; the cause then matches
// ErrLeaseUnconfirmed too). Call cancel when done with it; it stops the
// watch. When nothing is held it returns a context already cancelled with
// the type's "not held" error (ErrLockReleased, ErrElectionNotLeader,
// ErrPermitsNotHeld). WithLock and its kin are built on it.
func (h *holder) HoldContext(parent context.Context) (ctx context.Context, cancel context.CancelFunc) {
	key, rev, t := h.current()
	if h.err != nil || key == "" {
		ctx, cancelCause := context.WithCancelCause(parent)
		if h.err != nil {
			cancelCause(h.err)
		} else {
			cancelCause(h.notHeld)
		}
		return ctx, func() { cancelCause(context.Canceled) }
	}
	ctx, stop := holdContext(parent, h.s, key, rev, h.lost, t)
	return ctx, func() { stop() }
}

// with acquires, runs f under the hold's context, and releases (see
// withHold).
func (h *holder) with(ctx context.Context, acquire, release func(context.Context) error, f func(ctx context.Context) error) error {
	return withHold(ctx, h.s, h.lost, func(ctx context.Context) (string, int64, *tally, error) {
		if err := acquire(ctx); err != nil {
			return "", 0, nil, err
		}
		key, rev, t := h.current()
		return key, rev, t, nil
	}, release, f)
}

// withHold is WithLock and its kin: it acquires a key (created at rev),
// runs f under a context that ends with cause lost as soon as the key
// goes (holdContext), and releases, even when ctx is over (with its own
// timeout). It returns the error of acquire, else f's, else lost when the
// hold was lost while f ran, else the error of release.
func withHold(ctx context.Context, s *Session, lost error, acquire func(context.Context) (string, int64, *tally, error), release func(context.Context) error, f func(ctx context.Context) error) error {
	key, rev, t, err := acquire(ctx)
	if err != nil {
		return err
	}
	fctx, stop := holdContext(ctx, s, key, rev, lost, t)
	ferr := f(fctx)
	wasLost := stop()
	rctx, cancel := cleanupCtx(ctx, s.Client())
	defer cancel()
	rerr := release(rctx)
	switch {
	case ferr != nil:
		return ferr
	case wasLost || errors.Is(rerr, lost):
		return lost
	default:
		return rerr
	}
}

func guard(ctx context.Context, c *clientv3.Client, key string, rev int64, lost error, ops []clientv3.Op) (*clientv3.TxnResponse, error) {
	resp, err := c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
		Then(ops...).
		Commit()
	if err != nil {
		return nil, err
	}
	if !resp.Succeeded {
		return resp, lost
	}
	return resp, nil
}

// holdContext returns a context that is cancelled with cause lost when key
// (created at rev) goes away or the session ends, or with a cause matching
// both lost and ErrLeaseUnconfirmed when the session's trust window lapses
// (WithLeaseTrust). stop ends both watches and reports whether the hold
// was lost.
func holdContext(ctx context.Context, s *Session, key string, rev int64, lost error, t *tally) (context.Context, func() bool) {
	hctx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	var wasLost atomic.Bool
	wg.Add(2)
	go func() {
		defer wg.Done()
		if watchHold(hctx, s, key, rev) {
			wasLost.Store(true)
			cancel(lost)
			if t != nil {
				t.lost(lossCause(s), lost)
			}
		}
	}()
	go func() {
		defer wg.Done()
		if err := s.distrusted(hctx); err != nil {
			wasLost.Store(true)
			cancel(fmt.Errorf("%w: %w", lost, err))
			t.lost(obs.CauseUnconfirmed, err)
		}
	}()
	return hctx, func() bool {
		cancel(context.Canceled)
		wg.Wait()
		return wasLost.Load()
	}
}

// watchHold returns true when key (created at rev) goes away or the session
// ends, and false when ctx ends first.
func watchHold(ctx context.Context, s *Session, key string, rev int64) bool {
	c := s.Client()
	for ctx.Err() == nil {
		w, err := newWatch(ctx, c, key)
		if err == nil {
			// The watch covers changes after w.created; check the key then,
			// or at rev if the watch's member lags behind the lock (the key
			// did not exist before rev, and cannot have gone between the
			// two).
			var r *clientv3.GetResponse
			if r, _, err = getAt(ctx, c, max(w.created, rev), key); err == nil {
				if len(r.Kvs) == 0 || r.Kvs[0].CreateRevision != rev || holdOn(ctx, s, w, rev) {
					w.cancel()
					return true
				}
			}
			w.cancel()
		}
		switch {
		case ctx.Err() != nil:
			return false
		case c.Ctx().Err() != nil:
			return true // the client closed: we cannot vouch for the lock
		case err != nil:
			pause(ctx)
		}
	}
	return false
}

// holdOn follows w, the watch on a held key created at rev, and returns
// true when the key goes or the session ends, false when ctx ends or the
// watch breaks (watchHold makes it again).
func holdOn(ctx context.Context, s *Session, w *keyWatch, rev int64) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-s.lost():
			// Not s.Done(): an orphaned session still holds until its
			// lease runs out.
			return true
		case wr, ok := <-w.ch:
			if watchErr(ctx, s.Client(), wr, ok) != nil {
				return false
			}
			if _, g := deleted(wr, rev); g {
				return true
			}
		}
	}
}
