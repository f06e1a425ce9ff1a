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
	// ErrBarrierNotEntered is DoubleBarrier's "not held" error: Leave and
	// TryLeave return it when this DoubleBarrier has not entered.
	ErrBarrierNotEntered = errors.New("doublebarrier: not entered")
	// ErrBarrierLost is DoubleBarrier's "lost" error: Leave and TryLeave
	// return it when this participant's key had gone (its session ended)
	// before it left. It matches ErrSessionExpired, as Enter's error does
	// when the key goes while Enter waits.
	ErrBarrierLost error = &errKind{"doublebarrier: participant lost", ErrSessionExpired}
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
//     ErrBarrierLost.
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
var dbSentinels = []error{ErrTooManyParticipants, ErrBarrierNotFull, ErrBarrierNotEmpty, ErrBarrierNotEntered, ErrAlreadyEntered, ErrSessionExpired}

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
	//    the ready key and the participants in the same transaction
	//    (key.go's join).
	j, err := join(ctx, c, joinReq{key: key, lease: b.s.Lease(),
		guard:  []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(b.ready), "=", 0)},
		reads:  []clientv3.Op{clientv3.OpGet(b.ready), keysUnder(b.wdir)},
		repeat: true})
	if err != nil {
		// The request may have created the key (cancelled or timed out
		// after it was sent): withdraw it, or it would count as a
		// participant until the session ends.
		abandon(ctx, c, b.s.Lease(), key)
		return 0, 0, ctxErr(ctx, err)
	}
	if !j.put {
		ready, in := j.kvs(0), len(j.kvs(1))
		switch {
		case len(ready) > 0 && !j.existed && in == 0:
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
		case j.existed && len(ready) > 0:
			// Our key is there from a resumed lease, and the barrier is
			// full: we were in it.
			return j.rev, ready[0].CreateRevision, nil
		case j.existed:
			// A resumed participant that has not seen the barrier fill:
			// wait with it.
			return b.await(ctx, key, j.rev, j.hdr.Revision, nil, wait)
		default:
			return 0, 0, ErrTooManyParticipants
		}
	}
	return b.await(ctx, key, j.rev, j.rev, j.kvs(1), wait)
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
	var p pair
	defer p.stop()
	for {
		if !have {
			r, got, err := getAt(ctx, c, at, b.key+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
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
		// 4. Wait for the ready key to appear or our own key to go: key.go's
		//    steps 3 to 5, with the ready key for the blocker.
		next, err := p.watch(ctx, c, key, b.ready)
		if err != nil {
			return 0, err
		}
		if next <= at {
			var ev *clientv3.Event
			if next, ev, err = p.wait(ctx, b.s, rev, isPut); err != nil {
				return 0, err
			}
			if ev != nil {
				return ev.Kv.CreateRevision, nil
			}
		}
		// Never behind at: a watch made on a member that lags starts
		// before what we know, where our own key may not exist yet.
		have, at = false, max(next, at)
	}
}

// isPut is the event of the ready key appearing.
func isPut(ev *clientv3.Event) bool { return ev.Type == mvccpb.PUT }

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
	ctx, cancel := cleanupCtx(ctx, b.s.Client())
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
// It returns ErrBarrierNotEntered without Enter, and ErrBarrierLost when this
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
		return ErrBarrierNotEntered
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
			return true, ErrBarrierLost
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
		return true, ErrBarrierLost
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
	ctx, cancel := cleanupCtx(ctx, b.s.Client())
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
// other participant's key has gone, then deletes its key and the ready key
// together. It waits as key.go's waiters do, with the youngest of the
// others for the blocker.
func (b *DoubleBarrier) closeLast(ctx context.Context, key string, rev int64, waiters []*mvccpb.KeyValue, at int64) (bool, error) {
	c := b.s.Client()
	t := &turn{s: b.s, dir: b.wdir, key: key, rev: rev, all: true}
	t.blocker = func(queue []*mvccpb.KeyValue) *mvccpb.KeyValue {
		return youngest(queue, key, rev, func(*mvccpb.KeyValue) bool { return true })
	}
	for {
		if _, _, err := waitTurn(ctx, t, waiters, at); errors.Is(err, ErrSessionExpired) {
			return true, ErrBarrierLost
		} else if err != nil {
			return false, err
		}
		r, err := c.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev),
				clientv3.Compare(clientv3.CreateRevision(b.wdir).WithPrefix(), "=", rev)).
			Then(clientv3.OpDelete(key), clientv3.OpDelete(b.ready)).
			Else(keysUnder(b.wdir)).
			Commit()
		if err != nil {
			return false, err
		}
		if r.Succeeded {
			return true, nil
		}
		waiters, at = r.Responses[0].GetResponseRange().Kvs, r.Header.Revision
	}
}

// waitEmpty is Leave for a participant that has deleted its key: it waits
// until no participant is left, watching the oldest one still in. If the
// last participant's session ended instead of leaving, nobody deleted the
// ready key: the first to see the barrier empty deletes it.
func (b *DoubleBarrier) waitEmpty(ctx context.Context, waiters []*mvccpb.KeyValue, at, readyRev int64) error {
	c := b.s.Client()
	var p pair
	defer p.stop()
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
		// Our key is gone: watch the oldest one alone (key.go's steps 3 to
		// 5 without an own key).
		next, err := p.watch(ctx, c, "", string(oldest.Key))
		if err != nil {
			return err
		}
		if next <= at {
			if next, _, err = p.wait(ctx, b.s, 0, gone(oldest.CreateRevision)); err != nil {
				return err
			}
		}
		r, rev, err := getAt(ctx, c, max(next, at), b.wdir, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return err
		}
		waiters, at = r.Kvs, rev
	}
}
