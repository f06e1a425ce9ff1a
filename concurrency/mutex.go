package concurrency

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/internal/obs"
)

// Errors of Mutex. The first three have the same text as etcd's package.
var (
	// ErrLocked is returned by TryLock when another holder has the lock.
	ErrLocked = errors.New("mutex: Locked by another session")
	// ErrSessionExpired is returned when the session's lease ended while
	// waiting, or the waiter's key was deleted.
	ErrSessionExpired = errors.New("mutex: session is expired")
	// ErrLockReleased is returned by Unlock on a Mutex that does not hold
	// the lock.
	ErrLockReleased = errors.New("mutex: lock has already been released")
	// ErrLockLost is the cause of the context WithLock passes to its
	// function when the lock ends under it, and the error of Unlock and
	// Guard when the lock had already ended: the session expired or someone
	// deleted the holder's key.
	ErrLockLost = errors.New("mutex: lock lost")
)

// Mutex is a distributed lock: the holder is the key under pfx + "/" with
// the lowest create revision, as with etcd's Mutex and etcdctl lock, which
// it excludes and is excluded by.
//
// The participant is the session, as in etcd's package: every Mutex on one
// Session and prefix uses the key pfx/hex(lease). A second Mutex on a
// session that holds the lock holds it at once; on a session that waits,
// it waits in the same place; Unlock on any of them releases the lock for
// all of them (their WithLock and HoldContext see the loss, their own
// Unlock returns nil). Lock on a Mutex that holds the lock returns nil.
//
// For exclusion among goroutines that share a session (etcd #11360, where
// two Mutexes on one session both "held" the lock), make each Mutex
// WithExclusive: it then queues with a key of its own, excludes every other
// handle of the session, and behaves like sync.Mutex among the goroutines
// that share it (Lock waits while the same Mutex is held, so it is not
// re-entrant). Default and WithExclusive Mutexes on one session and prefix
// would queue behind each other: Lock refuses that with ErrWaitsOnItself.
//
// A Mutex is safe for use by several goroutines.
type Mutex struct {
	holder           // key, token, header and release of the current acquisition
	val       string // value stored in the holder's key
	exclusive bool
	slot      *slot // the key of the current acquisition, nil when not held; guarded by mu
}

// MutexOption configures a Mutex (and, for WithExclusive, an Election).
type MutexOption = HandleOption

// HandleOption configures a Mutex or an Election.
type HandleOption func(*handleOptions)

type handleOptions struct {
	val       *string
	exclusive bool
}

// WithMutexValue sets the value written into the holder's (and waiter's)
// key. Default "", as etcd's Mutex. etcd's Mutex ignores values, so the two
// still interoperate; "baton status" uses the value to show who holds a
// lock. It is for NewMutex only: NewElection reports it as an error.
func WithMutexValue(v string) HandleOption {
	return func(o *handleOptions) { o.val = &v }
}

// WithExclusive gives the Mutex (or Election) a key of its own, so that it
// excludes the other handles of its session instead of sharing the
// session's place (see Mutex). Default: off, as etcd's package, where the
// session is the participant.
func WithExclusive() HandleOption {
	return func(o *handleOptions) { o.exclusive = true }
}

// NewMutex makes a Mutex on prefix pfx. It talks to the server only when
// locked. A nil session or an empty prefix is reported by the first call.
func NewMutex(s *Session, pfx string, opts ...MutexOption) *Mutex {
	var o handleOptions
	for _, opt := range opts {
		opt(&o)
	}
	m := &Mutex{holder: newHolder(s, pfx, ErrLockReleased, ErrLockLost, ErrLockLost), exclusive: o.exclusive}
	m.local = make(chan struct{}, 1)
	if o.val != nil {
		m.val = *o.val
	}
	return m
}

// Lock waits until it holds the lock, ctx ends, or the session's lease
// ends. On an orphaned session it goes on waiting until the lease expires
// on the server, as etcd's does.
//
// On failure nothing is left behind: the waiter's key is deleted (with its
// own timeout if ctx is over, ending at once if the client closes) before
// Lock returns, whatever the error (etcd #9715, #21128), unless another
// Mutex of the same session still waits for or holds it; and
// ErrSessionExpired is returned as soon as the waiter's own key goes,
// without waiting for the waiters ahead (#19597). A context that is over
// before the call returns its error at once and writes nothing.
func (m *Mutex) Lock(ctx context.Context) error { return m.lock(ctx, true) }

// TryLock takes the lock if nobody holds or waits for it, in one
// transaction, and returns ErrLocked otherwise. It writes nothing when the
// lock is taken (etcd's writes a key and deletes it again). On a session
// that already holds the lock through another Mutex (or this one) it
// succeeds, as etcd's does.
func (m *Mutex) TryLock(ctx context.Context) error { return m.lock(ctx, false) }

func (m *Mutex) lock(ctx context.Context, wait bool) error {
	if m.err != nil {
		return m.err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if m.exclusive {
		if err := m.takeLocal(ctx, wait); err != nil {
			return err
		}
	}
	start := time.Now()
	err := m.lockOnce(ctx, wait)
	if err != nil && m.exclusive {
		<-m.local
	}
	if errors.Is(err, ErrLocked) {
		m.s.opts.rec.TryFailed(obs.Mutex, m.name())
	}
	if err == nil {
		m.mu.Lock()
		if m.tally == nil || m.tally.rev != m.rev {
			m.tally.released() // an earlier acquisition of this Mutex, replaced
			m.tally = acquired(m.s, obs.Mutex, m.name(), m.key, m.rev, time.Since(start))
		}
		m.mu.Unlock()
	}
	return err
}

func (m *Mutex) lockOnce(ctx context.Context, wait bool) error {
	sl, err := takeSlot(m.s, m.dir, m.exclusive)
	if err != nil {
		return err
	}
	key := sl.key
	var j *joined
	err = sl.serialize(func() (err error) {
		r := joinReq{key: key, val: m.val, lease: m.s.Lease(), reads: []clientv3.Op{keysUnder(m.dir)}, repeat: wait}
		if !wait {
			// TryLock puts its key only when no key exists under the
			// prefix. A compare on a range holds when it holds for every
			// key in it; for an empty range it compares a zero key, whose
			// create revision is 0.
			r.guard = []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(m.dir).WithPrefix(), "=", 0)}
		}
		j, err = join(ctx, m.s.Client(), r)
		return err
	})
	if err != nil {
		sl.giveUp(ctx, 0)
		return ctxErr(ctx, err)
	}
	if j.rev == 0 { // TryLock found the lock taken and wrote nothing
		sl.giveUp(ctx, -1)
		return ErrLocked
	}
	t := &turn{s: m.s, dir: m.dir, key: key, rev: j.rev}
	t.blocker = t.older
	queue, at := j.kvs(0), j.hdr.Revision
	if ctx.Err() != nil {
		err = ctx.Err()
	} else if !wait && inQueue(queue, key, j.rev) && t.older(queue) != nil {
		// Our key predates this call (a resumed lease, or another Mutex
		// of this session waiting) but is not at the head: TryLock fails,
		// as etcd's does.
		err = ErrLocked
	} else {
		_, at, err = waitTurn(ctx, t, queue, at)
	}
	if err != nil {
		return ctxErr(ctx, leftErr(err, key, sl.giveUp(ctx, j.rev)))
	}
	hdr := headerAt(j.hdr, at)
	m.mu.Lock()
	prev := m.slot
	m.slot, m.key, m.rev, m.hdr = sl, key, j.rev, hdr
	m.mu.Unlock()
	if prev != nil {
		// This Mutex held already (Lock again, or two Locks at once): one
		// acquisition, one use of the shared key.
		prev.done(0, false)
	}
	return nil
}

// Unlock releases the lock. It deletes the holder's key only if it is still
// the key of this acquisition, so a late or retried Unlock never removes a
// newer holder's key (etcd #22082). It releases the lock for every Mutex
// of the session that shares it, as etcd's does.
//
// It returns ErrLockReleased when this Mutex does not hold the lock, and
// ErrLockLost when the lock had already ended (the session expired or the
// key was deleted), but nil when another Mutex of the same session released
// it; either way the Mutex is free for a new Lock. When the request fails,
// the Mutex still holds the lock and Unlock can be retried; a retry after a
// request whose outcome was unknown may find the key already deleted by
// that request, and report ErrLockLost.
func (m *Mutex) Unlock(ctx context.Context) error {
	if m.err != nil {
		return m.err
	}
	m.releaseMu.Lock()
	defer m.releaseMu.Unlock()
	m.mu.Lock()
	sl, key, rev := m.slot, m.key, m.rev
	m.mu.Unlock()
	if sl == nil || key == "" || rev <= 0 {
		return ErrLockReleased
	}
	if !strings.HasPrefix(key, m.dir) {
		return fmt.Errorf("mutex: invalid key %q, it should have prefix %q", key, m.dir)
	}
	present, hdr, err := sl.release(ctx, rev)
	if err != nil {
		return ctxErr(ctx, err)
	}
	m.mu.Lock()
	m.slot, m.key, m.rev = nil, "", -1
	m.hdr = hdr
	t := m.tally
	m.tally = nil
	m.mu.Unlock()
	if present {
		t.released()
	} else if t != nil {
		t.lost(lossCause(m.s), ErrLockLost)
	}
	if m.exclusive {
		<-m.local
	}
	if !present {
		return ErrLockLost
	}
	return nil
}

// WithLock takes m, runs f, and releases m. The context f gets is cancelled
// as soon as the lock ends under it (the session ends, or anyone deletes the
// holder's key), with context.Cause(ctx) == ErrLockLost; the loss is seen
// through a watch on the holder's key, not by polling.
//
// It returns the error of Lock, else f's error, else ErrLockLost when the
// lock was lost while f ran, else the error of Unlock. Unlock runs even
// when ctx is over, with its own timeout. The context also ends when no
// keep-alive of the session has been answered for its trust window
// (WithLeaseTrust); its cause then matches ErrLeaseUnconfirmed as well.
func WithLock(ctx context.Context, m *Mutex, f func(ctx context.Context) error) error {
	return m.with(ctx, m.Lock, m.Unlock, f)
}

type lockerMutex struct{ *Mutex }

// NewLocker returns a sync.Locker on a Mutex, for code that wants one.
// sync.Locker has no way to report errors: Lock waits with the session's
// context and panics if it fails (the session ended, the client closed);
// Unlock panics if the release request fails, and ignores ErrLockLost,
// since nothing is left to release then. Prefer Mutex where errors matter.
func NewLocker(s *Session, pfx string) sync.Locker {
	return &lockerMutex{NewMutex(s, pfx)}
}

func (lm *lockerMutex) Lock() {
	if err := lm.Mutex.Lock(lm.ctx()); err != nil {
		panic(err)
	}
}

func (lm *lockerMutex) Unlock() {
	if err := lm.Mutex.Unlock(lm.ctx()); err != nil && !errors.Is(err, ErrLockLost) {
		panic(err)
	}
}

func (lm *lockerMutex) ctx() context.Context {
	if lm.s == nil {
		return context.Background()
	}
	return lm.s.Ctx()
}
