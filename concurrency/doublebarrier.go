package concurrency

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/internal/layout"
)

// Errors of DoubleBarrier.
var (
	// ErrTooManyParticipants is returned by Enter and TryEnter when count
	// participants are in already: either count arrived before this one,
	// or the barrier filled and not all of its participants have left yet
	// (etcd's recipe let extra participants in, #14603).
	ErrTooManyParticipants = errors.New("doublebarrier: too many participants")
	// ErrBarrierNotFull is returned by TryEnter when its arrival does not
	// complete the barrier. TryEnter then leaves nothing behind.
	ErrBarrierNotFull = errors.New("doublebarrier: not all participants have entered")
	// ErrBarrierNotEmpty is returned by TryLeave when other participants
	// are still in. TryLeave then changes nothing.
	ErrBarrierNotEmpty = errors.New("doublebarrier: not all participants have left")
	// ErrInvalidCount is returned by every call on a DoubleBarrier made
	// with a count <= 0.
	ErrInvalidCount = errors.New("doublebarrier: count must be > 0")
	// ErrNotEntered is returned by Leave and TryLeave when this
	// DoubleBarrier has not entered.
	ErrNotEntered = errors.New("doublebarrier: not entered")
	// ErrAlreadyEntered is returned by Enter and TryEnter when this
	// DoubleBarrier has entered (or is entering) and not left.
	ErrAlreadyEntered = errors.New("doublebarrier: already entered")
)

// DoubleBarrier makes count participants start together and finish
// together: Enter blocks until count participants have entered, Leave
// blocks until all of them have left. After all have left, the same key
// can be used for another round.
//
// Keys, under key + "/":
//   - waiters/<lease>: one per participant, attached to its session's
//     lease;
//   - ready: put when the barrier fills, deleted when the last participant
//     leaves;
//   - withdrawn: rewritten whenever a participant gives up before the
//     barrier filled, so that a participant about to fill the barrier
//     notices that one it counted has gone. It is not attached to a lease
//     and stays, empty, between rounds.
//
// Participants whose session ends (the lease expires or is revoked):
//   - before the barrier fills: its key goes with the lease, so it no
//     longer counts; the barrier waits for another participant to take its
//     place. Its own Enter returns ErrSessionExpired. Until the lease is
//     gone, the dead participant still occupies its place.
//   - after the barrier filled: its key going counts as leaving, so the
//     others' Leave completes without it. Its own Leave returns
//     ErrSessionExpired.
//
// A DoubleBarrier value is one participant; use one per participant (they
// may share a Session). It is safe for use by several goroutines, but only
// one Enter/Leave cycle runs at a time.
type DoubleBarrier struct {
	s     *Session
	key   string
	wdir  string // key + "/waiters/"
	ready string // key + "/ready"
	gone  string // key + "/withdrawn"
	count int
	err   error

	mu       sync.Mutex
	busy     bool   // Enter or TryEnter running, or entered and not left
	entered  bool   // Enter succeeded and Leave has not
	myKey    string // this participant's key while busy
	myRev    int64
	readyRev int64 // create revision of the ready key of this round
}

// NewDoubleBarrier makes a participant of the double barrier on key that
// opens when count participants have entered. A nil session, an empty key
// or a count <= 0 is reported by the first call, which then touches
// nothing.
func NewDoubleBarrier(s *Session, key string, count int) *DoubleBarrier {
	b := &DoubleBarrier{
		s: s, key: key, count: count,
		wdir: layout.Dir(key) + layout.DBWaiters, ready: layout.Dir(key) + layout.DBReady, gone: layout.Dir(key) + layout.DBWithdrawn,
	}
	switch {
	case s == nil:
		b.err = ErrNilSession
	case key == "":
		b.err = ErrEmptyPrefix
	case count <= 0:
		b.err = fmt.Errorf("%w (got %d)", ErrInvalidCount, count)
	}
	return b
}

// Enter joins the barrier and blocks until count participants have
// entered. More precisely, it returns nil once count participants,
// this one among them, were in the barrier at one revision and one of
// them marked the barrier full.
//
// It returns ErrTooManyParticipants, having left nothing behind, when the
// barrier already has count participants. It returns ErrSessionExpired as
// soon as this participant's key goes (its session ended). On any error
// the participant's key is removed; but if the barrier filled with this
// participant counted before the removal landed, Enter returns nil: the
// others went on believing it in, so it is in.
func (b *DoubleBarrier) Enter(ctx context.Context) error {
	return ctxEnded(ctx, b.enter(ctx, true), dbSentinels...)
}

// TryEnter enters only if this arrival fills the barrier, and otherwise
// returns ErrBarrierNotFull. It never waits for other participants. It
// joins and withdraws when the barrier is not full, so it writes, but it
// leaves no participant key behind (and if the barrier filled in between
// with it counted, it is in and returns nil).
func (b *DoubleBarrier) TryEnter(ctx context.Context) error {
	return ctxEnded(ctx, b.enter(ctx, false), dbSentinels...)
}

// dbSentinels are the errors of DoubleBarrier that its calls return as
// they are even when ctx ended: they say more than ctx.Err().
var dbSentinels = []error{ErrTooManyParticipants, ErrBarrierNotFull, ErrBarrierNotEmpty, ErrNotEntered, ErrAlreadyEntered, ErrSessionExpired}

func (b *DoubleBarrier) enter(ctx context.Context, wait bool) error {
	if b.err != nil {
		return b.err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	if b.busy {
		b.mu.Unlock()
		return ErrAlreadyEntered
	}
	b.busy = true
	b.mu.Unlock()

	key := b.s.claimName(b.wdir)
	rev, readyRev, err := b.join(ctx, key, wait)
	if err != nil {
		b.s.releaseName(key)
		b.mu.Lock()
		b.busy = false
		b.mu.Unlock()
		return err
	}
	b.mu.Lock()
	b.entered, b.myKey, b.myRev, b.readyRev = true, key, rev, readyRev
	b.mu.Unlock()
	return nil
}

// join puts the participant's key and waits until the barrier is full. It
// returns the key's create revision and the ready key's. On error it has
// removed the key, unless the barrier filled first (then it succeeds).
func (b *DoubleBarrier) join(ctx context.Context, key string, wait bool) (int64, int64, error) {
	c := b.s.Client()
	// 1. Put our key unless the barrier is full (ready exists), and read
	//    the participants in the same transaction.
	//    The guards make it safe to repeat after a transient failure: a
	//    retry whose first answer was lost finds our key (resumed below).
	var resp *clientv3.TxnResponse
	jctx, stop := joinContext(ctx, c)
	err := untilLeader(ctx, c, func() (err error) {
		resp, err = c.Txn(jctx).
			If(clientv3.Compare(clientv3.CreateRevision(b.ready), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, "", clientv3.WithLease(b.s.Lease())),
				clientv3.OpGet(b.wdir, clientv3.WithPrefix(), clientv3.WithKeysOnly())).
			Else(clientv3.OpGet(b.ready), clientv3.OpGet(key),
				clientv3.OpGet(b.wdir, clientv3.WithPrefix(), clientv3.WithCountOnly())).
			Commit()
		return err
	})
	stop()
	if err != nil {
		// The request may have created the key (cancelled or timed out
		// after it was sent): withdraw it, or it would count as a
		// participant until the session ends.
		abandon(ctx, b.s.Client(), b.s.Lease(), key)
		return 0, 0, ctxErr(ctx, err)
	}
	if !resp.Succeeded {
		ready := resp.Responses[0].GetResponseRange().Kvs
		mine := resp.Responses[1].GetResponseRange().Kvs
		in := resp.Responses[2].GetResponseRange().Count
		switch {
		case len(ready) > 0 && len(mine) == 0 && in == 0:
			// A full barrier with nobody in it: its last participants
			// all died or gave up while leaving. Clear it and join.
			if _, err := c.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(b.ready), "=", ready[0].CreateRevision),
					clientv3.Compare(clientv3.CreateRevision(b.wdir).WithPrefix(), "=", 0)).
				Then(clientv3.OpDelete(b.ready)).
				Commit(); err != nil {
				return 0, 0, err
			}
			return b.join(ctx, key, wait)
		case len(mine) > 0 && len(ready) > 0:
			// Our key is there from a resumed lease, and the barrier is
			// full: we were in it.
			return mine[0].CreateRevision, ready[0].CreateRevision, nil
		case len(mine) > 0:
			// A resumed participant that has not seen the barrier fill:
			// wait with it.
			return b.await(ctx, key, mine[0].CreateRevision, resp.Header.Revision, nil, wait)
		default:
			return 0, 0, ErrTooManyParticipants
		}
	}
	rev := resp.Header.Revision
	return b.await(ctx, key, rev, rev, resp.Responses[1].GetResponseRange().Kvs, wait)
}

// await runs steps 2 to 4 of joining for the participant key created at
// rev, given the participants as of revision at (nil: not read yet).
func (b *DoubleBarrier) await(ctx context.Context, key string, rev, at int64, waiters []*mvccpb.KeyValue, wait bool) (int64, int64, error) {
	readyRev, err := b.fill(ctx, key, rev, at, waiters, waiters != nil, wait)
	if err == nil {
		return rev, readyRev, nil
	}
	if errors.Is(err, ErrTooManyParticipants) {
		// We were never one of the count: nobody counted on us.
		leave(ctx, b.s.Client(), key, rev)
		return 0, 0, err
	}
	// Give up our place, unless the barrier filled with us in it.
	if readyRev, in := b.withdraw(ctx, key, rev); in {
		return rev, readyRev, nil
	}
	return 0, 0, err
}

// fill decides, from the participants at revision at (when have is set),
// whether we are too many, whether we complete the barrier, or whether we
// must wait; and waits. It returns the ready key's create revision.
func (b *DoubleBarrier) fill(ctx context.Context, key string, rev, at int64, waiters []*mvccpb.KeyValue, have, wait bool) (int64, error) {
	c := b.s.Client()
	var w *dbWatch
	defer func() {
		if w != nil {
			w.stop()
		}
	}()
	for {
		if !have {
			r, got, err := recipeGetAt(ctx, c, at, b.key+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
			if err != nil {
				return 0, err
			}
			at = got
			waiters = waiters[:0]
			for _, kv := range r.Kvs {
				k := string(kv.Key)
				switch {
				case k == b.ready:
					// The ready key never goes while a participant is
					// in, and ours predates this read: it is our round's.
					return kv.CreateRevision, nil
				case strings.HasPrefix(k, b.wdir):
					waiters = append(waiters, kv)
				}
			}
			have = true
		}
		// 2. Rank ourselves by create revision among the participants.
		rank, present := dbRank(waiters, key, rev)
		switch {
		case !present:
			return 0, ErrSessionExpired
		case rank >= b.count:
			return 0, ErrTooManyParticipants
		case len(waiters) >= b.count:
			// 3. Count participants are in, us among them: mark the
			//    barrier full, unless one of them has withdrawn since
			//    (then read again).
			r, err := c.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(b.ready), "=", 0),
					clientv3.Compare(clientv3.CreateRevision(key), "=", rev),
					clientv3.Compare(clientv3.ModRevision(b.gone), "<", at+1)).
				Then(clientv3.OpPut(b.ready, "")).
				Else(clientv3.OpGet(b.ready)).
				Commit()
			if err != nil {
				return 0, err
			}
			if r.Succeeded {
				return r.Header.Revision, nil
			}
			if kvs := r.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
				return kvs[0].CreateRevision, nil // someone else marked it
			}
			have, at = false, r.Header.Revision
			continue
		case !wait:
			return 0, ErrBarrierNotFull
		}
		// 4. Wait for the ready key to appear or our own key to go. The
		//    watches start from now; the state is read again at the
		//    revision they start after, so nothing falls in between.
		if w == nil {
			var err error
			if w, err = b.watchEnter(ctx, key); err != nil {
				return 0, err
			}
			// Never behind at: a watch made on a member that lags starts
			// before what we know, where our own key may not exist yet.
			have, at = false, max(w.created, at)
			continue
		}
		ev, err := w.next(ctx, b.s)
		switch {
		case err != nil:
			return 0, err
		case ev.ready > 0:
			return ev.ready, nil
		case ev.ownGone:
			return 0, ErrSessionExpired
		}
		have, at = false, max(ev.rev, at) // a watch was remade
	}
}

// dbRank is the number of participants older than ours, and whether ours
// is among them.
func dbRank(waiters []*mvccpb.KeyValue, key string, rev int64) (rank int, present bool) {
	for _, kv := range waiters {
		switch {
		case kv.CreateRevision == rev && string(kv.Key) == key:
			present = true
		case kv.CreateRevision < rev:
			rank++
		}
	}
	return rank, present
}

// withdraw deletes our key unless the barrier has filled, and reports
// whether it had (then we are in, and the ready key's create revision).
// It runs with its own timeout so that it works after ctx ended.
func (b *DoubleBarrier) withdraw(ctx context.Context, key string, rev int64) (int64, bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	r, err := b.s.Client().Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(b.ready), "=", 0)).
		Then(clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", rev)},
			[]clientv3.Op{clientv3.OpDelete(key), clientv3.OpPut(b.gone, "")},
			nil)).
		Else(clientv3.OpGet(b.ready), clientv3.OpGet(key)).
		Commit()
	if err != nil || r.Succeeded {
		// On error the key stays until the session ends; it still counts
		// as a participant until then.
		return 0, false
	}
	ready := r.Responses[0].GetResponseRange().Kvs
	mine := r.Responses[1].GetResponseRange().Kvs
	if len(ready) > 0 && len(mine) > 0 && mine[0].CreateRevision == rev {
		return ready[0].CreateRevision, true
	}
	return 0, false
}

// Leave leaves the barrier and blocks until every participant of the round
// has left (or its session ended). The last one out deletes the ready key,
// so the barrier can be used again.
//
// The oldest participant still in waits for the others to leave, and the
// others wait only for it, so each departure wakes one waiter.
//
// It returns ErrNotEntered without Enter, and ErrSessionExpired when this
// participant's key had gone (its session ended); the participant is out
// of the barrier either way. When ctx ends while Leave waits, this
// participant has already left; only the waiting is cut short.
func (b *DoubleBarrier) Leave(ctx context.Context) error {
	return ctxEnded(ctx, b.leave(ctx, true), dbSentinels...)
}

// TryLeave leaves only if this participant is the last one in, and
// otherwise returns ErrBarrierNotEmpty and changes nothing.
func (b *DoubleBarrier) TryLeave(ctx context.Context) error {
	return ctxEnded(ctx, b.leave(ctx, false), dbSentinels...)
}

func (b *DoubleBarrier) leave(ctx context.Context, wait bool) error {
	if b.err != nil {
		return b.err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	key, rev, readyRev, entered := b.myKey, b.myRev, b.readyRev, b.entered
	b.mu.Unlock()
	if !entered {
		return ErrNotEntered
	}
	out, err := b.depart(ctx, key, rev, readyRev, wait)
	if out {
		b.mu.Lock()
		b.busy, b.entered, b.myKey, b.myRev, b.readyRev = false, false, "", 0, 0
		b.mu.Unlock()
		b.s.releaseName(key)
	}
	return err
}

// depart runs Leave. out reports whether this participant is out of the
// barrier (its key gone), whatever the error.
func (b *DoubleBarrier) depart(ctx context.Context, key string, rev, readyRev int64, wait bool) (out bool, err error) {
	c := b.s.Client()
	mine := clientv3.Compare(clientv3.CreateRevision(key), "=", rev)
	// Every key under waiters/ was created at rev: ours is the only one.
	alone := clientv3.Compare(clientv3.CreateRevision(b.wdir).WithPrefix(), "=", rev)
	// Every key under waiters/ was created at rev or later: ours is the
	// oldest.
	oldest := clientv3.Compare(clientv3.CreateRevision(b.wdir).WithPrefix(), ">", rev-1)
	list := clientv3.OpGet(b.wdir, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	closeOps := []clientv3.Op{clientv3.OpDelete(key), clientv3.OpDelete(b.ready)}

	if !wait {
		r, err := c.Txn(ctx).If(mine, alone).Then(closeOps...).Else(clientv3.OpGet(key)).Commit()
		switch {
		case err != nil:
			return false, err
		case r.Succeeded:
			return true, nil
		case len(r.Responses[0].GetResponseRange().Kvs) == 0:
			return true, ErrSessionExpired
		default:
			return false, ErrBarrierNotEmpty
		}
	}

	// 1. In one transaction: the last one in closes the barrier; the
	//    oldest stays in and reads who else is; any other deletes its key.
	r, err := c.Txn(ctx).
		If(mine).
		Then(clientv3.OpTxn([]clientv3.Cmp{alone}, closeOps,
			[]clientv3.Op{clientv3.OpTxn([]clientv3.Cmp{oldest},
				[]clientv3.Op{list},
				[]clientv3.Op{list, clientv3.OpDelete(key)})})).
		Commit()
	if err != nil {
		return false, err
	}
	if !r.Succeeded {
		return true, ErrSessionExpired
	}
	inner := r.Responses[0].GetResponseTxn()
	if inner.Succeeded {
		return true, nil // we were the last one in
	}
	inner = inner.Responses[0].GetResponseTxn()
	others := inner.Responses[0].GetResponseRange().Kvs
	at := r.Header.Revision
	if inner.Succeeded {
		// 2a. We are the oldest: wait for the others to go, then close.
		out, err := b.closeLast(ctx, key, rev, others, at)
		if !out {
			out = b.abandon(ctx, key, rev)
		}
		return out, err
	}
	// 2b. We left; wait for the oldest still in to go.
	others = slices.DeleteFunc(others, func(kv *mvccpb.KeyValue) bool { return kv.CreateRevision == rev })
	return true, b.waitEmpty(ctx, others, at, readyRev)
}

// abandon takes the oldest participant out when its wait in Leave failed:
// it deletes its key, and the ready key too if it is the last one in, so
// that the barrier does not stay full with nobody in it. It runs with its
// own timeout and reports whether the key is gone.
func (b *DoubleBarrier) abandon(ctx context.Context, key string, rev int64) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	_, err := b.s.Client().Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
		Then(clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(b.wdir).WithPrefix(), "=", rev)},
			[]clientv3.Op{clientv3.OpDelete(key), clientv3.OpDelete(b.ready)},
			[]clientv3.Op{clientv3.OpDelete(key)})).
		Commit()
	return err == nil
}

// closeLast is Leave for the oldest participant: it stays in until every
// other participant's key has gone, watching the youngest of them, then
// deletes its key and the ready key together.
func (b *DoubleBarrier) closeLast(ctx context.Context, key string, rev int64, waiters []*mvccpb.KeyValue, at int64) (bool, error) {
	c := b.s.Client()
	var own, other *keyWatch
	defer func() {
		if own != nil {
			own.cancel()
		}
		if other != nil {
			other.cancel()
		}
	}()
	for {
		var youngest *mvccpb.KeyValue
		present := false
		for _, kv := range waiters {
			if kv.CreateRevision == rev && string(kv.Key) == key {
				present = true
			} else if youngest == nil || kv.CreateRevision > youngest.CreateRevision {
				youngest = kv
			}
		}
		if !present {
			return true, ErrSessionExpired
		}
		if youngest == nil {
			r, err := c.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev),
					clientv3.Compare(clientv3.CreateRevision(b.wdir).WithPrefix(), "=", rev)).
				Then(clientv3.OpDelete(key), clientv3.OpDelete(b.ready)).
				Else(clientv3.OpGet(b.wdir, clientv3.WithPrefix(), clientv3.WithKeysOnly())).
				Commit()
			if err != nil {
				return false, err
			}
			if r.Succeeded {
				return true, nil
			}
			waiters, at = r.Responses[0].GetResponseRange().Kvs, r.Header.Revision
			continue
		}
		var err error
		if own, other, err = watchPair(ctx, c, own, key, other, string(youngest.Key)); err != nil {
			return false, err
		}
		next := max(own.created, other.created)
		if next <= at {
			if next, err = waitEvent(ctx, b.s, own, other, rev, youngest.CreateRevision); err != nil {
				return errors.Is(err, ErrSessionExpired), err
			}
		}
		r, rev, err := recipeGetAt(ctx, c, max(next, at), b.wdir, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return false, err
		}
		waiters, at = r.Kvs, rev
	}
}

// waitEmpty is Leave for a participant that has deleted its key: it waits
// until no participant is left, watching the oldest one still in. If the
// last participant's session ended instead of leaving, nobody deleted the
// ready key: the first to see the barrier empty deletes it.
func (b *DoubleBarrier) waitEmpty(ctx context.Context, waiters []*mvccpb.KeyValue, at, readyRev int64) error {
	c := b.s.Client()
	var w *keyWatch
	defer func() {
		if w != nil {
			w.cancel()
		}
	}()
	for {
		var oldest *mvccpb.KeyValue
		for _, kv := range waiters {
			if oldest == nil || kv.CreateRevision < oldest.CreateRevision {
				oldest = kv
			}
		}
		if oldest == nil {
			_, err := c.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(b.ready), "=", readyRev)).
				Then(clientv3.OpDelete(b.ready)).
				Commit()
			return err
		}
		if w == nil || w.key != string(oldest.Key) {
			if w != nil {
				w.cancel()
			}
			var err error
			if w, err = watchKey(ctx, c, string(oldest.Key)); err != nil {
				w = nil
				return err
			}
		}
		next := w.created
		if next <= at {
			var err error
			if next, err = dbWaitGone(ctx, c, w, oldest.CreateRevision); err != nil {
				return err
			}
		}
		r, rev, err := recipeGetAt(ctx, c, max(next, at), b.wdir, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return err
		}
		waiters, at = r.Kvs, rev
	}
}

// dbWaitGone waits until w's key (created at rev) is deleted and returns
// the revision to read at; a broken watch is remade and reported as "read
// again at the new watch's start".
func dbWaitGone(ctx context.Context, c *clientv3.Client, w *keyWatch, rev int64) (int64, error) {
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case wr, ok := <-w.ch:
			if !ok || wr.Err() != nil {
				if err := remake(ctx, c, w, wr, ok); err != nil {
					return 0, err
				}
				return w.created, nil
			}
			if d, gone := deleted(wr, rev); gone {
				return d, nil
			}
		}
	}
}

// dbWatch watches, for a participant in Enter, the ready key and its own
// key.
type dbWatch struct {
	c          *clientv3.Client
	ready, own *keyWatch
	created    int64 // both watches report every change after this
}

// dbEvent is what ended a wait in Enter.
type dbEvent struct {
	ready   int64 // create revision of the ready key, when it appeared
	ownGone bool  // our key was deleted
	rev     int64 // otherwise: a watch was remade; read the state at rev
}

func (b *DoubleBarrier) watchEnter(ctx context.Context, key string) (*dbWatch, error) {
	c := b.s.Client()
	own, ready, err := watchPair(ctx, c, nil, key, nil, b.ready)
	if err != nil {
		if own != nil {
			own.cancel()
		}
		return nil, err
	}
	return &dbWatch{c: c, ready: ready, own: own, created: max(ready.created, own.created)}, nil
}

func (w *dbWatch) stop() {
	w.ready.cancel()
	w.own.cancel()
}

func (w *dbWatch) next(ctx context.Context, s *Session) (dbEvent, error) {
	for {
		select {
		case <-ctx.Done():
			return dbEvent{}, ctx.Err()
		case <-s.expired(): // not Done: an orphaned lease lives on
			return dbEvent{}, ErrSessionExpired
		case wr, ok := <-w.ready.ch:
			if !ok || wr.Err() != nil {
				if err := remake(ctx, w.c, w.ready, wr, ok); err != nil {
					return dbEvent{}, err
				}
				return dbEvent{rev: w.ready.created}, nil
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.PUT {
					return dbEvent{ready: ev.Kv.CreateRevision}, nil
				}
			}
		case wr, ok := <-w.own.ch:
			if !ok || wr.Err() != nil {
				if err := remake(ctx, w.c, w.own, wr, ok); err != nil {
					return dbEvent{}, err
				}
				return dbEvent{rev: w.own.created}, nil
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					return dbEvent{ownGone: true}, nil
				}
			}
		}
	}
}
