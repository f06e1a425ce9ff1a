package concurrency

// This file holds the queue logic that Mutex and Election share: joining
// the queue under a prefix, waiting for one's turn, and leaving.
//
// The queue is every key under dir (= pfx + "/"), ordered by create
// revision, the same order etcd's package and etcdctl use, so mixed fleets
// exclude each other. The head of the queue holds the lock (or leads).
//
// Waiting, step by step:
//  1. Read the keys of the queue that were created no later than ours, at a
//     known revision R. If ours is missing, our session is gone. If none is
//     older, we are the head at R. Otherwise the youngest older key is our
//     predecessor P.
//  2. Watch P (and, once, our own key) from "now". A watch that starts at
//     the store's current revision is "synced" on the server and sees each
//     event at once; one that starts at an older revision is caught up only
//     by a loop that runs every 100 ms. etcd's package starts its watch at
//     R, which costs a waiter up to 100 ms per step. The watch's creation
//     tells the revision W it starts after.
//  3. If W > R, repeat step 1 at W: P may have gone between R and W (the
//     race of a predecessor that leaves just before the watch is made).
//  4. When P's key is deleted at revision D, repeat step 1 at D.
//
// Step 1 is a keys-only, unsorted range with a create-revision filter, read
// at a fixed revision from the member's in-memory index: no values, no sort
// and no raft round trip. It is exact at R, so each step is correct on its
// own; a predecessor that dies (its session expired, its waiter gave up) is
// skipped over at the next step.

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// cleanupTimeout bounds the delete of a waiter's key after Lock or Campaign
// failed, when the caller's context may already be over.
const cleanupTimeout = 5 * time.Second

// errClientClosed is returned when the client closes under a waiter.
var errClientClosed = errors.New("concurrency: client closed")

// withClient returns ctx, also cancelled when c closes. etcd's client
// retries a unary call that the closing connection cancels for as long as
// the call's own context lives, a few seconds; a call under this context
// fails at once instead.
func withClient(ctx context.Context, c *clientv3.Client) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.Ctx(), cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// joined is the result of joining a queue.
type joined struct {
	hdr     *pb.ResponseHeader
	rev     int64 // our key's create revision
	existed bool  // our key was there already (a resumed session)
	value   []byte
	queue   []*mvccpb.KeyValue // keys of the queue at hdr.Revision, keys only
}

// join puts key (attached to the session's lease) unless it exists, and
// reads the queue, in one transaction. The guard makes the request safe to
// repeat, so a transient failure (the member that had it stopped, the
// cluster between leaders) is retried as untilLeader does: a retry after an
// answer that was lost finds the key the first request put.
func join(ctx context.Context, s *Session, dir, key, val string) (*joined, error) {
	c := s.Client()
	queue := clientv3.OpGet(dir, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	var resp *clientv3.TxnResponse
	err := untilLeader(ctx, c, func() (err error) {
		resp, err = c.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, val, clientv3.WithLease(s.Lease())), queue).
			Else(clientv3.OpGet(key), queue).
			Commit()
		return err
	})
	if err != nil {
		return nil, err
	}
	j := &joined{hdr: resp.Header, rev: resp.Header.Revision}
	if resp.Succeeded {
		j.value = []byte(val)
	} else {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return nil, fmt.Errorf("concurrency: key %q vanished inside a transaction", key)
		}
		j.existed, j.rev, j.value = true, kvs[0].CreateRevision, kvs[0].Value
	}
	j.queue = resp.Responses[1].GetResponseRange().Kvs
	return j, nil
}

// place reports whether key (created at rev) is in queue, and the youngest
// key older than it: the predecessor to wait for, nil at the head.
func place(queue []*mvccpb.KeyValue, key string, rev int64) (present bool, pred *mvccpb.KeyValue) {
	for _, kv := range queue {
		switch {
		case kv.CreateRevision == rev && string(kv.Key) == key:
			present = true
		case kv.CreateRevision < rev && (pred == nil || kv.CreateRevision > pred.CreateRevision):
			pred = kv
		}
	}
	return present, pred
}

// readQueue reads the keys under dir created no later than rev, as of
// revision at (0 = now), and returns the revision the result describes.
func readQueue(ctx context.Context, c *clientv3.Client, dir string, rev, at int64) (*clientv3.GetResponse, int64, error) {
	return getAt(ctx, c, at, dir, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithMaxCreateRev(rev))
}

// getAt reads key (with opts) as of revision at (0 = now), and returns the
// revision the answer describes. It reads locally first; a member behind at
// falls back to a linearizable read, and a compacted at to a read of now.
// Callers read state that decides a wait, which is equally valid at any
// later revision.
//
// The revision returned is not the response header's: a read at an older
// revision carries the store's current revision in its header, and taking
// that for the state's revision would skip the changes in between.
func getAt(ctx context.Context, c *clientv3.Client, at int64, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, int64, error) {
	if at > 0 {
		r, err := c.Get(ctx, key, append(opts, clientv3.WithRev(at), clientv3.WithSerializable())...)
		switch {
		case err == nil:
			return r, at, nil
		case errors.Is(err, rpctypes.ErrFutureRev):
			// The member that served us is behind the one that sent the
			// event; a linearizable read waits for it.
			r, err = c.Get(ctx, key, append(opts, clientv3.WithRev(at))...)
			if err == nil {
				return r, at, nil
			}
			if !errors.Is(err, rpctypes.ErrCompacted) {
				return nil, 0, err
			}
		case !errors.Is(err, rpctypes.ErrCompacted):
			return nil, 0, err
		}
	}
	r, err := c.Get(ctx, key, opts...)
	if err != nil {
		return nil, 0, err
	}
	return r, r.Header.Revision, nil
}

// keyWatch is a watch on one key, started at the current revision.
type keyWatch struct {
	key     string
	cancel  context.CancelFunc
	ch      clientv3.WatchChan
	created int64 // the watch reports every change after this revision
}

// watchKey watches key from now and waits for the watch to be created.
// WithRequireLeader makes a watch on a member cut off from the cluster end
// with an error instead of going silent.
// A watch refused while the cluster is between leaders is asked for again
// (untilLeader).
func watchKey(ctx context.Context, c *clientv3.Client, key string) (w *keyWatch, err error) {
	err = untilLeader(ctx, c, func() error {
		w, err = startWatch(ctx, c, key).created(ctx, c)
		return err
	})
	return w, err
}

// leaderWait is how long untilLeader asks again for a watch (or repeats a
// request that is safe to repeat) that a member between leaders refuses or
// a stopping member drops: long enough for an election, short enough that
// a waiter on a member cut off from the cluster gives up with the error.
// A variable only so that a test can stretch it.
var leaderWait = 5 * time.Second

// untilLeader runs start until it succeeds, fails with an error that is not
// transient, or has failed for leaderWait.
func untilLeader(ctx context.Context, c *clientv3.Client, start func() error) error {
	deadline := time.Now().Add(leaderWait)
	for {
		err := start()
		if err == nil || !transient(err) || ctx.Err() != nil || c.Ctx().Err() != nil || time.Now().After(deadline) {
			return err
		}
		pause(ctx)
	}
}

// watchPair makes sure own watches ownKey and other watches otherKey,
// creating the missing watches from now in one round trip (replacing other
// if it watches another key). It returns the watches to keep, which the
// caller cancels, also on error. A member between leaders refuses watches
// that require a leader: those are asked for again (untilLeader), so that
// a leader election does not fail a waiter.
func watchPair(ctx context.Context, c *clientv3.Client, own *keyWatch, ownKey string, other *keyWatch, otherKey string) (*keyWatch, *keyWatch, error) {
	err := untilLeader(ctx, c, func() (err error) {
		own, other, err = watchPairOnce(ctx, c, own, ownKey, other, otherKey)
		return err
	})
	return own, other, err
}

func watchPairOnce(ctx context.Context, c *clientv3.Client, own *keyWatch, ownKey string, other *keyWatch, otherKey string) (*keyWatch, *keyWatch, error) {
	var ownP, otherP *pendingWatch
	if own == nil {
		ownP = startWatch(ctx, c, ownKey)
	}
	if other != nil && other.key != otherKey {
		other.cancel()
		other = nil
	}
	if other == nil {
		otherP = startWatch(ctx, c, otherKey)
	}
	var err error
	if ownP != nil {
		if own, err = ownP.created(ctx, c); err != nil {
			if otherP != nil {
				otherP.cancel()
			}
			return nil, other, err
		}
	}
	if otherP != nil {
		if other, err = otherP.created(ctx, c); err != nil {
			return own, nil, err
		}
	}
	return own, other, nil
}

// pendingWatch is a watch whose creation has been requested but not yet
// confirmed; starting two and then awaiting both saves a round trip.
type pendingWatch struct {
	key    string
	cancel context.CancelFunc
	ch     clientv3.WatchChan
}

func startWatch(ctx context.Context, c *clientv3.Client, key string) *pendingWatch {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	return &pendingWatch{key: key, cancel: cancel, ch: c.Watch(wctx, key, clientv3.WithCreatedNotify())}
}

func (p *pendingWatch) created(ctx context.Context, c *clientv3.Client) (*keyWatch, error) {
	select {
	case wr, ok := <-p.ch:
		if !ok {
			p.cancel()
			return nil, watchClosedErr(ctx, c)
		}
		if err := wr.Err(); err != nil {
			p.cancel()
			return nil, err
		}
		return &keyWatch{key: p.key, cancel: p.cancel, ch: p.ch, created: wr.Header.Revision}, nil
	case <-ctx.Done():
		p.cancel()
		return nil, ctx.Err()
	}
}

// watchClosedErr explains why a watch channel closed.
func watchClosedErr(ctx context.Context, c *clientv3.Client) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.Ctx().Err() != nil {
		return errClientClosed
	}
	return errors.New("concurrency: watch closed")
}

// deleted scans a watch response for the deletion (or replacement) of the
// key created at rev, and returns the revision at which it happened.
func deleted(wr clientv3.WatchResponse, rev int64) (int64, bool) {
	for _, ev := range wr.Events {
		if ev.Type == mvccpb.DELETE || ev.Kv.CreateRevision != rev {
			return ev.Kv.ModRevision, true
		}
	}
	return 0, false
}

// waitTurn blocks until key, created at rev, heads the queue under dir, and
// returns the revision at which it did. queue is the queue as of at. It
// returns ErrSessionExpired when the key disappears (the session's lease
// ended, or someone deleted the key), ctx.Err() when ctx ends, and the
// error of the server otherwise. It never deletes anything: the caller
// cleans up.
func waitTurn(ctx context.Context, s *Session, dir, key string, rev int64, queue []*mvccpb.KeyValue, at int64) (int64, error) {
	c := s.Client()
	var own, pred *keyWatch
	defer func() {
		if own != nil {
			own.cancel()
		}
		if pred != nil {
			pred.cancel()
		}
	}()
	for {
		present, p := place(queue, key, rev)
		if !present {
			return 0, ErrSessionExpired
		}
		if p == nil {
			return at, nil
		}
		// Watch our own key once, so that the end of our session is seen
		// at once (etcd #19597: etcd's waiter waits for its predecessors
		// first).
		var err error
		if own, pred, err = watchPair(ctx, c, own, key, pred, string(p.Key)); err != nil {
			return 0, err
		}
		next := max(own.created, pred.created)
		if next <= at {
			// Both watches cover every change after at: wait for one.
			next, err = waitEvent(ctx, s, own, pred, rev, p.CreateRevision)
			if err != nil {
				return 0, err
			}
		}
		// Never read behind at: a watch made on a member that lags starts
		// before what we know, and the queue there may lack our own key.
		r, readAt, err := readQueue(ctx, c, dir, rev, max(next, at))
		for err != nil && transient(err) && ctx.Err() == nil {
			pause(ctx)
			r, readAt, err = readQueue(ctx, c, dir, rev, 0)
		}
		if err != nil {
			return 0, err
		}
		queue, at = r.Kvs, readAt
	}
}

// waitEvent waits until own's key or pred's key (created at ownRev and
// predRev) goes away, and returns the revision to read the queue at. A
// broken watch is remade and reported as "read again now".
func waitEvent(ctx context.Context, s *Session, own, pred *keyWatch, ownRev, predRev int64) (int64, error) {
	c := s.Client()
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-s.expired():
			// Not s.Done(): an orphaned session's lease lives on, and its
			// waiter with it, until the server deletes our key.
			return 0, ErrSessionExpired
		case wr, ok := <-own.ch:
			if !ok || wr.Err() != nil {
				err := remake(ctx, c, own, wr, ok)
				if err == nil {
					s.watchRemade(own.key, wr.Err())
				}
				return 0, err
			}
			if _, gone := deleted(wr, ownRev); gone {
				return 0, ErrSessionExpired
			}
		case wr, ok := <-pred.ch:
			if !ok || wr.Err() != nil {
				if err := remake(ctx, c, pred, wr, ok); err != nil {
					return 0, err
				}
				s.watchRemade(pred.key, wr.Err())
				return pred.created, nil
			}
			if d, gone := deleted(wr, predRev); gone {
				return d, nil
			}
		}
	}
}

// remake replaces a broken watch (compacted after a reconnect, cancelled by
// a member that lost its leader) with a new one from now.
func remake(ctx context.Context, c *clientv3.Client, w *keyWatch, wr clientv3.WatchResponse, ok bool) error {
	w.cancel()
	if !ok && (ctx.Err() != nil || c.Ctx().Err() != nil) {
		return watchClosedErr(ctx, c)
	}
	for {
		nw, err := watchKey(ctx, c, w.key)
		if err == nil {
			*w = *nw
			return nil
		}
		if !transient(err) || ctx.Err() != nil || c.Ctx().Err() != nil {
			return err
		}
		pause(ctx)
	}
}

// transient reports whether err is worth retrying: the cluster is between
// leaders, a member is down, or a request timed out inside the server.
func transient(err error) bool {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case errors.Is(err, rpctypes.ErrNoLeader), errors.Is(err, rpctypes.ErrLeaderChanged),
		errors.Is(err, rpctypes.ErrTimeout), errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail),
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost), errors.Is(err, rpctypes.ErrStopped):
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// abandon deletes key if it is attached to the session's lease. It cleans
// up after a join whose outcome is unknown: a request that timed out or was
// cancelled after it was sent may have created the key, which would then
// sit in the queue, never take its turn, and block everyone behind it until
// the session ends. Only this session writes keys named after its lease
// (claimName, sharedName), so the lease compare is enough; the caller makes
// sure that no other handle of the session uses the key.
func abandon(ctx context.Context, s *Session, key string) error {
	ctx, cancel := cleanupCtx(ctx, s.Client())
	defer cancel()
	_, err := s.Client().Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(key), "=", s.Lease())).
		Then(clientv3.OpDelete(key)).
		Commit()
	return err
}

// cleanupCtx is the context of a delete that cleans up after a call: it
// keeps ctx's values but not its end, lasts cleanupTimeout, and ends at once
// when the client closes. etcd's client retries a request that a closing
// connection cut for as long as the request's context lives; without the
// last rule a cleanup would hold its caller for seconds after Close.
func cleanupCtx(ctx context.Context, c *clientv3.Client) (context.Context, context.CancelFunc) {
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	cctx, stop := withClient(tctx, c)
	return cctx, func() {
		stop()
		cancel()
	}
}

// ctxErr returns ctx's error when ctx has ended (or its deadline has
// passed) and err is the failure of a request it cut short, and err
// otherwise (see ctxEnded): a request cut short by the caller's deadline
// comes back from the server as "request timed out" or a cancelled RPC,
// and the caller should see the reason it can act on. ErrSessionExpired
// passes through.
func ctxErr(ctx context.Context, err error) error {
	return ctxEnded(ctx, err, ErrSessionExpired)
}

// leave deletes key if it is still the one created at rev. It runs with its
// own timeout, so that it also works after the caller's context ended.
func leave(ctx context.Context, c *clientv3.Client, key string, rev int64) error {
	ctx, cancel := cleanupCtx(ctx, c)
	defer cancel()
	_, err := c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
		Then(clientv3.OpDelete(key)).
		Commit()
	return err
}

// headerAt is h with its revision set to rev: the revision at which a
// waiter's turn came, which may be later than the request that joined.
func headerAt(h *pb.ResponseHeader, rev int64) *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: h.ClusterId, MemberId: h.MemberId, RaftTerm: h.RaftTerm, Revision: rev}
}

// slot is the key a Mutex or Election handle queues with. By default every
// handle of one session on one prefix shares the key dir + hex(lease), so
// that they are one participant, as in etcd's package: a second handle
// finds the key the first one made, holds when it holds and waits where it
// waits. A handle made WithExclusive has a key of its own instead.
type slot struct {
	s         *Session
	dir, key  string
	exclusive bool
	p         *participant // the shared key's bookkeeping; nil when exclusive
	over      atomic.Bool  // the acquisition was ended (giveUp or done)
}

// takeSlot claims the key for one acquisition. Every successful takeSlot
// is ended by exactly one giveUp (the acquisition failed) or done (it was
// released or found lost).
func takeSlot(s *Session, dir string, exclusive bool) (*slot, error) {
	if exclusive {
		key, err := s.claimExclusive(dir)
		if err != nil {
			return nil, err
		}
		return &slot{s: s, dir: dir, key: key, exclusive: true}, nil
	}
	key, err := s.useShared(dir)
	if err != nil {
		return nil, err
	}
	s.namesMu.Lock()
	p := s.shared[dir]
	s.namesMu.Unlock()
	return &slot{s: s, dir: dir, key: key, p: p}, nil
}

// serialize runs f with the shared key's operations serialized: a join, the
// delete of a failed acquisition and a release never overlap among the
// handles of one session, so that a join never adopts a key that another
// handle's cleanup is deleting.
func (sl *slot) serialize(f func() error) error {
	if sl.p == nil {
		return f()
	}
	sl.p.op.Lock()
	defer sl.p.op.Unlock()
	return f()
}

// giveUp ends a failed acquisition: it deletes the key, unless another
// handle of the session still waits for or holds the shared key. rev is
// the key's create revision, 0 when a join's outcome is unknown, and -1
// when nothing was written.
func (sl *slot) giveUp(ctx context.Context, rev int64) error {
	if sl.over.Swap(true) {
		return nil
	}
	var err error
	sl.serialize(func() error {
		if (sl.exclusive || sl.s.doneShared(sl.dir, 0, false)) && rev >= 0 {
			if rev > 0 {
				err = leave(ctx, sl.s.Client(), sl.key, rev)
			} else {
				err = abandon(ctx, sl.s, sl.key)
			}
		}
		return nil
	})
	if sl.exclusive {
		sl.s.releaseExclusive(sl.dir, sl.key)
	}
	return err
}

// release deletes the key if it is still the one created at rev, and ends
// the acquisition when the request got an answer. It reports whether the
// key was there to delete. A shared key that another handle of the session
// released already counts as there: the session released it on purpose.
func (sl *slot) release(ctx context.Context, rev int64) (present bool, hdr *pb.ResponseHeader, err error) {
	err = sl.serialize(func() error {
		resp, err := sl.s.Client().Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(sl.key), "=", rev)).
			Then(clientv3.OpDelete(sl.key)).
			Commit()
		if err != nil {
			return err
		}
		hdr, present = resp.Header, resp.Succeeded
		if !present && !sl.exclusive && sl.s.releasedShared(sl.dir, rev) {
			present = true
		}
		sl.done(rev, resp.Succeeded)
		return nil
	})
	return present, hdr, err
}

// done ends an acquisition that needs no request: released reports whether
// it was released on purpose (rather than found lost).
func (sl *slot) done(rev int64, released bool) {
	if sl.over.Swap(true) {
		return
	}
	if sl.exclusive {
		sl.s.releaseExclusive(sl.dir, sl.key)
		return
	}
	sl.s.doneShared(sl.dir, rev, released)
}
