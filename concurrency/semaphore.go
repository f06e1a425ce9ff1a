package concurrency

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/internal/layout"
	"github.com/batonhq/baton/internal/obs"
)

// Errors of Semaphore.
var (
	// ErrNoPermits is returned by TryAcquire when the permits asked for
	// are not free now, or others wait for permits already.
	ErrNoPermits = errors.New("semaphore: not enough permits free")
	// ErrLimitMismatch is returned by Acquire and TryAcquire when a key
	// under the prefix was written with another limit (or is not a
	// semaphore key): the clients disagree on what the semaphore is.
	ErrLimitMismatch = errors.New("semaphore: clients disagree on the limit")
	// ErrInvalidLimit is returned by every call on a Semaphore made with a
	// limit <= 0.
	ErrInvalidLimit = errors.New("semaphore: limit must be > 0")
	// ErrInvalidWeight is returned when n <= 0, or n > limit for Acquire
	// and TryAcquire (such a request could never be granted).
	ErrInvalidWeight = errors.New("semaphore: n must be > 0 and <= the limit")
	// ErrPermitsNotHeld is Semaphore's "not held" error: Release returns
	// it when asked to release more permits than this Semaphore holds
	// (nothing is released then).
	ErrPermitsNotHeld = errors.New("semaphore: permits not held")
	// ErrPermitsLost is Semaphore's "lost" error: Release returns it when
	// some of the permits it released had already gone with the session
	// (the lease expired or was revoked) or their key was deleted, and it
	// is the cause of WithPermits' context when its grant ends under it.
	ErrPermitsLost = errors.New("semaphore: permits lost")

	// ErrNotHeld is ErrPermitsNotHeld, under its former name.
	//
	// Deprecated: Use ErrPermitsNotHeld.
	ErrNotHeld = ErrPermitsNotHeld
)

// Semaphore is a weighted, fair counting semaphore shared by every client
// that uses the same prefix and limit, shaped like
// golang.org/x/sync/semaphore.
//
// Each acquisition is a key under pfx + "/", attached to the session's
// lease, whose value is "n/limit". The keys queue by create revision. A
// request is granted when the permits of all keys ahead of it plus its own
// fit within the limit. The queue is strictly first come, first served: a
// request waits for every request ahead of it even when its own permits
// would fit, so large requests are not starved by small ones.
//
// Permits held by a session that ends (Close, or its lease expires or is
// revoked) come back by themselves: their keys go with the lease.
//
// Waiting is quiet: only the first two waiters in line follow the queue
// (a release wakes at most those two, one of which it usually lets in).
// The others watch only their own key and their predecessor's, and are
// woken when a grant moves them into the first two (the granted waiter
// rewrites their key) or when their predecessor gives up. No release or
// arrival wakes every waiter.
//
// A Semaphore value is safe for use by several goroutines; each Acquire is
// a separate grant with its own key. Key, Rev, Header, IsOwner, Guard and
// HoldContext are those of the youngest grant held (the one with the
// highest token), as for a Mutex: Guard returns ErrPermitsNotHeld when
// nothing is held and ErrPermitsLost when the grant ended under it.
// WithPermits is WithLock's counterpart: it runs a function under one
// grant, with a context that ends when the grant is lost.
type Semaphore struct {
	holder // the youngest grant
	limit  int64

	grants []semGrant // held, oldest first; guarded by mu
}

// semGrant is one granted acquisition.
type semGrant struct {
	key   string
	rev   int64 // create revision of key: the fencing token
	n     int64
	tally *tally
}

// semEntry is one key of the queue as read from the server.
type semEntry struct {
	key   string
	value string
	rev   int64
	n     int64
	limit int64 // 0 when the value is not a semaphore value
}

// NewSemaphore makes a Semaphore with limit permits on prefix pfx. Every
// client must use the same limit. It talks to the server only when used; a
// nil session, an empty prefix or a limit <= 0 is reported by the first
// call, which then touches nothing.
func NewSemaphore(s *Session, pfx string, limit int64) *Semaphore {
	sm := &Semaphore{holder: newHolder(s, pfx, ErrPermitsNotHeld, ErrPermitsLost, ErrPermitsLost), limit: limit}
	if sm.err == nil && limit <= 0 {
		sm.err = fmt.Errorf("%w (got %d)", ErrInvalidLimit, limit)
	}
	return sm
}

func (sm *Semaphore) checkWeight(n int64) error {
	if sm.err != nil {
		return sm.err
	}
	if n <= 0 || n > sm.limit {
		return fmt.Errorf("%w (n %d, limit %d)", ErrInvalidWeight, n, sm.limit)
	}
	return nil
}

// Acquire waits until it holds n permits, ctx ends, or the session ends.
//
// On failure it returns the error (ctx.Err(), ErrSessionExpired as soon as
// its key goes, ErrLimitMismatch, or the server's) and leaves the semaphore
// unchanged: its key is deleted, with its own timeout if ctx is over.
func (sm *Semaphore) Acquire(ctx context.Context, n int64) error {
	_, err := sm.acquire(ctx, n)
	return err
}

// granted records a grant of n permits (key created at rev, granted as of
// hdr) that took wait.
func (sm *Semaphore) granted(key string, rev, n int64, hdr *pb.ResponseHeader, wait time.Duration) semGrant {
	g := semGrant{key: key, rev: rev, n: n, tally: acquired(sm.s, obs.Semaphore, sm.name(), key, rev, wait)}
	sm.s.opts.rec.Permits(sm.name(), n)
	sm.mu.Lock()
	sm.grants = append(sm.grants, g)
	sm.hdr = hdr
	sm.youngest()
	sm.mu.Unlock()
	return g
}

// youngest makes the holder's acquisition the youngest grant, or none;
// sm.mu is held.
func (sm *Semaphore) youngest() {
	sm.key, sm.rev, sm.tally = "", -1, nil
	for _, g := range sm.grants {
		if g.rev > sm.rev {
			sm.key, sm.rev, sm.tally = g.key, g.rev, g.tally
		}
	}
}

// acquire is Acquire; it returns the grant.
func (sm *Semaphore) acquire(ctx context.Context, n int64) (semGrant, error) {
	var rec *obs.Recorder
	if sm.err == nil {
		rec = sm.s.opts.rec
	}
	rec.SemWaiting(sm.name(), 1)
	defer rec.SemWaiting(sm.name(), -1)
	g, err := sm.acquireOnce(ctx, n)
	return g, ctxEnded(ctx, err, ErrSessionExpired, ErrLimitMismatch, ErrInvalidWeight)
}

func (sm *Semaphore) acquireOnce(ctx context.Context, n int64) (semGrant, error) {
	if err := sm.checkWeight(n); err != nil {
		return semGrant{}, err
	}
	if err := ctx.Err(); err != nil {
		return semGrant{}, err
	}
	start := time.Now()
	c := sm.s.Client()
	key := sm.s.claimName(sm.dir)
	val := layout.SemaphoreValue(n, sm.limit)
	// Put our key and read the queue in one transaction (step 1 of
	// key.go's algorithm).
	j, err := join(ctx, c, joinReq{key: key, val: val, lease: sm.s.Lease(), reads: []clientv3.Op{clientv3.OpGet(sm.dir, clientv3.WithPrefix())}, repeat: true})
	if err != nil {
		// The request may have created the key (cancelled or timed out
		// after it was sent): take it out of the queue, or its permits
		// would stay taken until the session ends.
		abandon(ctx, c, sm.s.Lease(), key)
		sm.s.releaseName(key)
		return semGrant{}, ctxErr(ctx, err)
	}
	if !j.put && string(j.value) != val {
		// Our key is there from a resumed lease: adopt it only if it asks
		// for the same thing.
		sm.s.releaseName(key)
		return semGrant{}, fmt.Errorf("semaphore: key %q exists from an earlier acquisition of this lease", key)
	}
	rev, at := j.rev, int64(0)
	err = sm.checkLimits(semEntries(j.kvs(0)))
	if err == nil {
		at, err = sm.wait(ctx, key, rev, j.kvs(0), j.hdr.Revision)
	}
	if err != nil {
		err = leftErr(err, key, leave(ctx, c, key, rev))
		sm.s.releaseName(key)
		return semGrant{}, err
	}
	return sm.granted(key, rev, n, headerAt(j.hdr, at), time.Since(start)), nil
}

// TryAcquire takes n permits if they are free now and nobody waits for
// permits, in one transaction, and returns ErrNoPermits otherwise. It
// writes nothing when the permits are not free.
func (sm *Semaphore) TryAcquire(ctx context.Context, n int64) error {
	return ctxEnded(ctx, sm.tryAcquire(ctx, n), ErrNoPermits, ErrLimitMismatch, ErrInvalidWeight)
}

func (sm *Semaphore) tryAcquire(ctx context.Context, n int64) error {
	if err := sm.checkWeight(n); err != nil {
		return err
	}
	c := sm.s.Client()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		r, err := c.Get(ctx, sm.dir, clientv3.WithPrefix())
		if err != nil {
			return err
		}
		entries := semEntries(r.Kvs)
		if err := sm.checkLimits(entries); err != nil {
			return err
		}
		var used int64
		for _, e := range entries {
			used += e.n
		}
		if used+n > sm.limit {
			sm.s.opts.rec.TryFailed(obs.Semaphore, sm.name())
			return ErrNoPermits
		}
		// The permits are free at r's revision. Take them only if no key
		// under the prefix changed since (a compare on a range holds when
		// it holds for every key in it).
		key := sm.s.claimName(sm.dir)
		j, err := join(ctx, c, joinReq{key: key, val: layout.SemaphoreValue(n, sm.limit), lease: sm.s.Lease(),
			guard: []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(sm.dir).WithPrefix(), "<", r.Header.Revision+1)}})
		if err != nil {
			abandon(ctx, c, sm.s.Lease(), key) // it may have taken the permits
			sm.s.releaseName(key)
			return ctxErr(ctx, err)
		}
		if j.put {
			sm.granted(key, j.rev, n, j.hdr, 0)
			return nil
		}
		sm.s.releaseName(key)
		if j.existed {
			return fmt.Errorf("semaphore: key %q exists from an earlier acquisition of this lease", key)
		}
		// The queue changed under us: look again.
	}
}

// Release gives back n permits held by this Semaphore, youngest grants
// first (a grant released in part keeps its place and its token).
//
// It returns ErrInvalidWeight for n <= 0 and ErrPermitsNotHeld, releasing
// nothing, when this Semaphore holds fewer than n permits. It returns
// ErrPermitsLost when some of the released permits had already gone with
// the session; they count as released. Each key is deleted only if it is
// still the one of its grant, so a late or retried Release never removes a
// newer grant's key. When the request fails, nothing is released and
// Release can be retried; a retry after a request whose outcome was
// unknown may find grants already deleted by that request, and report
// ErrPermitsLost.
//
// Releasing more than 100 grants at once takes one transaction per 100
// (etcd refuses transactions of more than 128 operations by default). When
// a later one fails, the grants of the earlier ones stay released, Held
// and Rev count only what is still held, and a retried Release of the
// rest releases it.
func (sm *Semaphore) Release(ctx context.Context, n int64) error {
	return ctxEnded(ctx, sm.release(ctx, n), ErrPermitsLost, ErrPermitsNotHeld, ErrInvalidWeight)
}

func (sm *Semaphore) release(ctx context.Context, n int64) error {
	if sm.err != nil {
		return sm.err
	}
	if n <= 0 {
		return fmt.Errorf("%w (n %d)", ErrInvalidWeight, n)
	}
	sm.mu.Lock()
	defer sm.mu.Unlock()
	if held := sm.held(); n > held {
		return fmt.Errorf("%w (release %d, held %d)", ErrPermitsNotHeld, n, held)
	}
	// Plan: whole grants from the youngest, and at most one in part.
	type step struct {
		i    int
		left int64 // permits the grant keeps; 0 deletes it
	}
	var plan []step
	for i, rest := len(sm.grants)-1, n; rest > 0; i-- {
		take := min(rest, sm.grants[i].n)
		plan = append(plan, step{i: i, left: sm.grants[i].n - take})
		rest -= take
	}
	lost := false
	// Grants released by a transaction leave sm.grants even when a later
	// transaction fails.
	defer func() {
		kept := sm.grants[:0]
		for _, g := range sm.grants {
			if g.n > 0 {
				kept = append(kept, g)
			}
		}
		clear(sm.grants[len(kept):])
		sm.grants = kept
		sm.youngest()
	}()
	const chunk = 100 // well under etcd's default --max-txn-ops of 128
	for len(plan) > 0 {
		part := plan[:min(chunk, len(plan))]
		ops := make([]clientv3.Op, len(part))
		for j, st := range part {
			g := sm.grants[st.i]
			op := clientv3.OpDelete(g.key)
			if st.left > 0 {
				op = clientv3.OpPut(g.key, layout.SemaphoreValue(st.left, sm.limit), clientv3.WithLease(sm.s.Lease()))
			}
			ops[j] = clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(g.key), "=", g.rev)}, []clientv3.Op{op}, nil)
		}
		c := sm.s.Client()
		resp, unknown, err := releaseTxn(ctx, c, func(actx context.Context) (*clientv3.TxnResponse, error) {
			return c.Txn(actx).Then(ops...).Commit()
		})
		if err != nil {
			return err
		}
		sm.hdr = resp.Header
		for j, st := range part {
			g := &sm.grants[st.i]
			// A delete that finds its key gone after a failed attempt
			// may have been that attempt's; a rewrite that fails found
			// the grant gone (a repeat of a rewrite succeeds again).
			gone := !resp.Responses[j].GetResponseTxn().Succeeded && (st.left > 0 || !unknown)
			lost = lost || gone
			sm.s.opts.rec.Permits(sm.name(), st.left-g.n)
			if st.left > 0 && !gone {
				g.n = st.left
				continue
			}
			if gone && g.tally != nil {
				g.tally.lost(lossCause(sm.s), ErrPermitsLost)
			}
			g.tally.released()
			sm.s.releaseName(g.key)
			g.n = 0
		}
		plan = plan[len(part):]
	}
	if lost {
		return ErrPermitsLost
	}
	return nil
}

// WithPermits acquires n permits of sm, runs f, and releases them, as
// WithLock does for a Mutex: the context f gets ends, with context.Cause
// == ErrPermitsLost, as soon as the grant's key goes (the session ends or
// anyone deletes it), or when the session's trust window lapses. It
// returns the error of Acquire, else f's, else ErrPermitsLost when the
// permits were lost while f ran, else the error of the release. The
// release gives back this call's grant, whatever other Acquires of sm
// hold; a grant that f released itself (Release) counts as released.
func WithPermits(ctx context.Context, sm *Semaphore, n int64, f func(ctx context.Context) error) error {
	if sm.err != nil {
		return sm.err
	}
	var g semGrant
	acquire := func(ctx context.Context) (key string, rev int64, t *tally, err error) {
		g, err = sm.acquire(ctx, n)
		return g.key, g.rev, g.tally, err
	}
	release := func(ctx context.Context) error { return ctxEnded(ctx, sm.releaseGrant(ctx, g), ErrPermitsLost) }
	return withHold(ctx, sm.s, ErrPermitsLost, acquire, release, f)
}

// releaseGrant deletes the key of grant g if it is still g's, and forgets
// g; a grant no longer held is not an error.
func (sm *Semaphore) releaseGrant(ctx context.Context, g semGrant) error {
	sm.mu.Lock()
	defer sm.mu.Unlock()
	i := slices.IndexFunc(sm.grants, func(h semGrant) bool { return h.key == g.key && h.rev == g.rev })
	if i < 0 {
		return nil
	}
	present, hdr, err := releaseKey(ctx, sm.s.Client(), g.key, g.rev)
	if err != nil {
		return err
	}
	g = sm.grants[i]
	sm.grants = slices.Delete(sm.grants, i, i+1)
	sm.hdr = hdr
	sm.youngest()
	sm.s.opts.rec.Permits(sm.name(), -g.n)
	sm.s.releaseName(g.key)
	if !present {
		if g.tally != nil {
			g.tally.lost(lossCause(sm.s), ErrPermitsLost)
		}
		return ErrPermitsLost
	}
	g.tally.released()
	return nil
}

// Held is the number of permits this Semaphore holds.
func (sm *Semaphore) Held() int64 {
	sm.mu.Lock()
	defer sm.mu.Unlock()
	return sm.held()
}

// held is Held with sm.mu held.
func (sm *Semaphore) held() (n int64) {
	for _, g := range sm.grants {
		n += g.n
	}
	return n
}

// Limit is the number of permits of the semaphore.
func (sm *Semaphore) Limit() int64 { return sm.limit }

func semEntry1(kv *mvccpb.KeyValue) semEntry {
	n, limit, _ := layout.ParseSemaphoreValue(kv.Value)
	return semEntry{key: string(kv.Key), value: string(kv.Value), rev: kv.CreateRevision, n: n, limit: limit}
}

func semEntries(kvs []*mvccpb.KeyValue) []semEntry {
	es := make([]semEntry, len(kvs))
	for i, kv := range kvs {
		es[i] = semEntry1(kv)
	}
	return es
}

func (sm *Semaphore) checkLimits(es []semEntry) error {
	for _, e := range es {
		if e.limit != sm.limit {
			if e.limit == 0 {
				return fmt.Errorf("%w: key %q is not a semaphore key", ErrLimitMismatch, e.key)
			}
			return fmt.Errorf("%w: this client has %d, key %q has %d", ErrLimitMismatch, sm.limit, e.key, e.limit)
		}
	}
	return nil
}

// semWindow is how many waiters at the front of the line follow every
// change to the queue (a release may let any of them in). The others wait
// quietly until one of those in front is granted and calls them forward.
// With 1, each grant would wait for the next waiter to get ready; 2 hides
// that behind the wait of the second in line.
const semWindow = 2

// semQueue is the queue at one revision, in create-revision order.
type semQueue struct {
	entries []semEntry // sorted by create revision
	granted int        // entries[:granted] hold permits
}

// semOrder sorts the queue and finds the grants: the longest run of oldest
// keys whose permits fit within the limit. Since the running sum only
// grows, a key is granted exactly when every key ahead of it is, and a
// granted key stays granted (keys ahead of it can only go or shrink).
func semOrder(es []semEntry, limit int64) semQueue {
	sorted := make([]semEntry, len(es))
	copy(sorted, es)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].rev < sorted[j].rev })
	return semQueue{entries: sorted, granted: layout.SemaphoreGranted(sorted, func(e semEntry) int64 { return e.n }, limit)}
}

// find returns the index of our key, or -1.
func (q semQueue) find(key string, rev int64) int {
	for i, e := range q.entries {
		if e.rev == rev && e.key == key {
			return i
		}
	}
	return -1
}

// window is the waiters at the front of the line.
func (q semQueue) window() []semEntry {
	w := q.entries[q.granted:]
	return w[:min(len(w), semWindow)]
}

// wait blocks until the key created at rev is granted: the permits of the
// keys ahead of it plus its own fit within the limit. queue is the queue at
// at. It returns the revision as of which the key was granted.
//
// The steps:
//  1. From the queue at a known revision, find our place. If our key is
//     gone, the session is. If we fit, we hold the permits.
//  2. If we are among the first semWindow waiters, only releases can let
//     us in: follow the queue (step 4).
//  3. Otherwise wait for our turn as key.go's waiters do, with our
//     predecessor as the blocker: its deletion (it gave up or its session
//     ended) changes our place, and a write to our own key means a waiter
//     in front was granted and called us forward, into the window. Either
//     way, read the queue again at that revision and go to step 1.
//  4. Follow the queue: watch the whole prefix from now, read it at the
//     revision the watch starts after, and keep it up to date from the
//     events until we fit.
//  5. Once granted after waiting, rewrite the keys of the waiters now in
//     the window (same value, their lease kept), so that those waiting
//     quietly start following the queue.
//
// So a release wakes at most the semWindow waiters in front, and each
// grant wakes the waiter that moves into the window.
func (sm *Semaphore) wait(ctx context.Context, key string, rev int64, queue []*mvccpb.KeyValue, at int64) (int64, error) {
	t := &turn{s: sm.s, dir: sm.dir, key: key, rev: rev, values: true, all: true}
	t.blocker = func(queue []*mvccpb.KeyValue) *mvccpb.KeyValue {
		q := semOrder(semEntries(queue), sm.limit)
		i := q.find(key, rev)
		if i < q.granted || i-q.granted < semWindow {
			return nil
		}
		p := q.entries[i-1]
		return &mvccpb.KeyValue{Key: []byte(p.key), CreateRevision: p.rev}
	}
	queue, at, err := waitTurn(ctx, t, queue, at)
	if err != nil {
		return 0, err
	}
	if q := semOrder(semEntries(queue), sm.limit); q.find(key, rev) < q.granted {
		sm.callForward(ctx, q)
		return at, nil
	}
	return sm.follow(ctx, key, rev)
}

// follow is step 4 of wait: it returns once the key created at rev fits,
// having called the next waiters forward, and the revision at which it
// did. It follows the queue with mirror, from rev at the earliest: a watch
// made on a member that lags can start before our key exists.
func (sm *Semaphore) follow(ctx context.Context, key string, rev int64) (int64, error) {
	var q semQueue
	var at int64
	err := mirror(ctx, sm.s.Client(), sm.dir, rev, sm.s.expired(), func(kvs map[string]*mvccpb.KeyValue, now int64) (bool, error) {
		if mine, ok := kvs[key]; !ok || mine.CreateRevision != rev {
			return false, ErrSessionExpired
		}
		es := make([]semEntry, 0, len(kvs))
		for _, kv := range kvs {
			es = append(es, semEntry1(kv))
		}
		q, at = semOrder(es, sm.limit), now
		return q.find(key, rev) < q.granted, nil
	})
	if err != nil {
		return 0, err
	}
	sm.callForward(ctx, q)
	return at, nil
}

// callForward is step 5 of wait, for our key granted in queue q: it
// rewrites the keys of the waiters in the window, each guarded
// on its create revision, in one transaction. The request runs in the
// background, with its own timeout, and Acquire does not wait for it: the
// grant does not depend on it, and it is not on the critical path of the
// next grant. A lost request only delays those waiters until the next
// grant, or until their predecessor's key goes.
func (sm *Semaphore) callForward(ctx context.Context, q semQueue) {
	window := q.window()
	if len(window) == 0 {
		return
	}
	ops := make([]clientv3.Op, len(window))
	for i, e := range window {
		ops[i] = clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(e.key), "=", e.rev)},
			[]clientv3.Op{clientv3.OpPut(e.key, e.value, clientv3.WithIgnoreLease())}, nil)
	}
	c := sm.s.Client()
	ctx = context.WithoutCancel(ctx)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, cleanupTimeout)
		defer cancel()
		c.Txn(ctx).Then(ops...).Commit()
	}()
}
