package concurrency

// This file is the waiting engine that every primitive runs: Mutex,
// Election, RWMutex, Semaphore and DoubleBarrier join and wait with it
// (waitTurn, or the pair of watches directly); a Semaphore's first waiters
// and an Election's observers follow the whole queue (mirror); Barrier and
// the queues use its watches, reads and join. What a holder holds once its
// turn came is hold.go's.
//
// A primitive is a queue of keys under a directory, ordered by create
// revision, the order etcd's package and etcdctl use, so that mixed fleets
// exclude each other. A participant joins the queue, waits until no key
// blocks its own, and leaves. Step by step:
//
//  1. Join (join): one transaction puts our key, on our lease, unless it
//     exists or a guard of the primitive's fails, and reads the queue. The
//     guard makes the request safe to repeat after a transient failure: a
//     repeat whose first answer was lost finds the key the first one put.
//     It runs to its answer whatever the caller's context does, so that a
//     deadline cannot leave a key behind that appears after we gave up.
//  2. Decide, from the queue as of a known revision R: if our key is
//     missing, our session is gone (ErrSessionExpired). Otherwise the
//     primitive names the one key B that blocks us (turn.blocker): the
//     youngest older key for a Mutex, the youngest older writer for a
//     reader. None: our turn came at R.
//  3. Watch B and our own key from "now" (pair.watch). A watch that starts
//     at the store's current revision is "synced" on the server and sees
//     each event at once; one that starts at an older revision is caught
//     up only by a loop that runs every 100 ms (etcd's package starts its
//     watch at R, which costs a waiter up to 100 ms a step). The watch's
//     creation tells the revision W it starts after. Watching our own key
//     sees the end of our session at once (etcd #19597: etcd's waiter waits
//     for its predecessors first).
//  4. If W > R, repeat step 2 at W: B may have gone between R and W (the
//     race of a predecessor that leaves just before the watch is made).
//  5. Otherwise wait (pair.wait) until B goes at revision D, or our own key
//     is written at D (a waiter ahead calls us forward): repeat step 2 at
//     D. Our key going, or our session's end, is ErrSessionExpired. A watch
//     that breaks is made again from now, at W': repeat step 2 at W'.
//  6. Leave (leave, abandon): delete our key only if it is still the one
//     we created, so a late delete never removes a newer participant's.
//
// Every read of step 2 is readAt: a read at a fixed revision, served by
// the member's in-memory index (no raft round trip), never behind what we
// know. It is exact at R, so each step is correct on its own; a blocker
// that dies (its session expired, its waiter gave up) is skipped over at
// the next step.
//
// One rule of retries covers the steps: a request that is safe to repeat
// (a join, a watch, a read) and fails with a transient error (transient:
// the cluster between leaders, a member down) is repeated after a pause.
// Reads and remade watches are repeated until the caller's context ends or
// the client closes; a join and the first watch of a step for leaderWait
// (untilLeader), so that a waiter on a member cut off from the cluster
// gives up with the error. Once the caller's context has ended, a call
// returns ctx.Err() or one of its documented sentinels (ctxEnded).

import (
	"context"
	"errors"
	"fmt"
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

// Step 1: joining.

// joinReq is what a participant asks the joining transaction for.
type joinReq struct {
	key, val string
	lease    clientv3.LeaseID
	guard    []clientv3.Cmp // further conditions of the put (TryLock: the queue is empty)
	reads    []clientv3.Op  // run in the same transaction, put or not
	repeat   bool           // repeat after a transient failure (untilLeader)
}

// joined is the answer of the joining transaction.
type joined struct {
	hdr     *pb.ResponseHeader
	put     bool  // this request put our key
	existed bool  // our key was there already (a resumed lease, another handle)
	rev     int64 // our key's create revision, when put or existed
	value   []byte
	reads   []*pb.ResponseOp // the answers of joinReq.reads
}

// kvs is the answer of the i-th read.
func (j *joined) kvs(i int) []*mvccpb.KeyValue { return j.reads[i].GetResponseRange().Kvs }

// join is step 1: it puts r.key unless it exists or r.guard fails, and
// runs r.reads, in one transaction. It runs to its answer (joinContext);
// the caller checks ctx right after, and leaves through the ordinary path.
// A repeat stops once ctx has ended, so the outcome of the last attempt
// is the one reported.
func join(ctx context.Context, c *clientv3.Client, r joinReq) (*joined, error) {
	jctx, stop := joinContext(ctx, c)
	defer stop()
	cmps := append([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(r.key), "=", 0)}, r.guard...)
	then := append([]clientv3.Op{clientv3.OpPut(r.key, r.val, clientv3.WithLease(r.lease))}, r.reads...)
	els := append([]clientv3.Op{clientv3.OpGet(r.key)}, r.reads...)
	var resp *clientv3.TxnResponse
	start := time.Now()
	err := repeated(jctx, c, func(err error) bool {
		// A join without repeat (TryLock) is still sent again after an
		// attempt that got no answer: it is as safe to repeat, and one
		// slow member must not make it fail.
		return (r.repeat || errors.Is(err, errNoAnswer)) && ctx.Err() == nil && time.Since(start) < leaderWait
	}, func(actx context.Context) (err error) {
		resp, err = c.Txn(actx).If(cmps...).Then(then...).Else(els...).Commit()
		return err
	})
	if err != nil {
		return nil, err
	}
	j := &joined{hdr: resp.Header, put: resp.Succeeded, reads: resp.Responses[1:]}
	if j.put {
		j.rev, j.value = resp.Header.Revision, []byte(r.val)
	} else if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		j.existed, j.rev, j.value = true, kvs[0].CreateRevision, kvs[0].Value
	}
	return j, nil
}

// keysUnder reads the keys under dir, keys only.
func keysUnder(dir string, opts ...clientv3.OpOption) clientv3.Op {
	return clientv3.OpGet(dir, append([]clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithKeysOnly()}, opts...)...)
}

// Step 2: who blocks whom.

// turn is one participant's place in a queue: the keys under dir, ours
// among them, and the primitive's rule of who blocks us.
type turn struct {
	s      *Session
	dir    string
	key    string
	rev    int64 // our key's create revision
	values bool  // the rule needs the keys' values (a Semaphore's permits)
	all    bool  // the rule needs keys younger than ours too

	// blocker names the key that blocks ours in queue, nil when it is our
	// turn. queue holds our key.
	blocker func(queue []*mvccpb.KeyValue) *mvccpb.KeyValue
}

// inQueue reports whether our key (created at rev) is in queue.
func inQueue(queue []*mvccpb.KeyValue, key string, rev int64) bool {
	for _, kv := range queue {
		if kv.CreateRevision == rev && string(kv.Key) == key {
			return true
		}
	}
	return false
}

// youngest is the youngest key of queue, ours left out, that blocks
// accepts; nil when none does.
func youngest(queue []*mvccpb.KeyValue, key string, rev int64, blocks func(kv *mvccpb.KeyValue) bool) *mvccpb.KeyValue {
	var b *mvccpb.KeyValue
	for _, kv := range queue {
		if kv.CreateRevision == rev && string(kv.Key) == key {
			continue
		}
		if blocks(kv) && (b == nil || kv.CreateRevision > b.CreateRevision) {
			b = kv
		}
	}
	return b
}

// older is the blocker of a Mutex or an Election: the youngest key older
// than ours, our predecessor.
func (t *turn) older(queue []*mvccpb.KeyValue) *mvccpb.KeyValue {
	return youngest(queue, t.key, t.rev, func(kv *mvccpb.KeyValue) bool { return kv.CreateRevision < t.rev })
}

// read reads the queue as of revision at (0 = now), see readAt.
func (t *turn) read(ctx context.Context, at int64) ([]*mvccpb.KeyValue, int64, error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if !t.values {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	if !t.all {
		opts = append(opts, clientv3.WithMaxCreateRev(t.rev))
	}
	r, rev, err := getAt(ctx, t.s.Client(), at, t.dir, opts...)
	if err != nil {
		return nil, 0, err
	}
	return r.Kvs, rev, nil
}

// waitTurn runs steps 2 to 5: it blocks until our key heads its queue by
// t's rule, and returns the queue and the revision at which it did. queue
// is the queue as of at. It returns ErrSessionExpired when our key
// disappears (the session's lease ended, or someone deleted the key),
// ctx.Err() when ctx ends, and the error of the server otherwise. It
// never deletes anything: the caller leaves.
func waitTurn(ctx context.Context, t *turn, queue []*mvccpb.KeyValue, at int64) ([]*mvccpb.KeyValue, int64, error) {
	var p pair
	defer p.stop()
	for {
		if !inQueue(queue, t.key, t.rev) {
			return nil, 0, ErrSessionExpired
		}
		b := t.blocker(queue)
		if b == nil {
			return queue, at, nil
		}
		next, err := p.watch(ctx, t.s.Client(), t.key, string(b.Key))
		if err != nil {
			return nil, 0, err
		}
		if next <= at {
			// Both watches cover every change after at: wait for one.
			if next, _, err = p.wait(ctx, t.s, t.rev, gone(b.CreateRevision)); err != nil {
				return nil, 0, err
			}
		}
		// Never read behind at: a watch made on a member that lags starts
		// before what we know, and the queue there may lack our own key.
		if queue, at, err = t.read(ctx, max(next, at)); err != nil {
			return nil, 0, err
		}
	}
}

// Steps 3 and 5: watching and waiting.

// keyWatch is a watch started at the current revision.
type keyWatch struct {
	key     string
	cancel  context.CancelFunc
	ch      clientv3.WatchChan
	created int64 // the watch reports every change after this revision
}

// pendingWatch is a watch whose creation has been asked for but not yet
// confirmed; starting two and then awaiting both saves a round trip.
type pendingWatch struct {
	key    string
	cancel context.CancelFunc
	ch     clientv3.WatchChan
}

// startWatch asks for a watch on key (with opts, for a prefix or a range)
// from now. WithRequireLeader makes a watch on a member cut off from the
// cluster end with an error instead of going silent.
func startWatch(ctx context.Context, c *clientv3.Client, key string, opts ...clientv3.OpOption) *pendingWatch {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	opts = append([]clientv3.OpOption{clientv3.WithCreatedNotify()}, opts...)
	return &pendingWatch{key: key, cancel: cancel, ch: c.Watch(wctx, key, opts...)}
}

// created waits until the server has made the watch.
func (p *pendingWatch) created(ctx context.Context, c *clientv3.Client) (*keyWatch, error) {
	select {
	case wr, ok := <-p.ch:
		if err := watchErr(ctx, c, wr, ok); err != nil {
			p.cancel()
			return nil, err
		}
		return &keyWatch{key: p.key, cancel: p.cancel, ch: p.ch, created: wr.Header.Revision}, nil
	case <-ctx.Done():
		p.cancel()
		return nil, ctx.Err()
	}
}

// newWatch is the one watch maker: it watches key (with opts) from now and
// waits until the watch is made. A watch refused while the cluster is
// between leaders is asked for again (untilLeader).
func newWatch(ctx context.Context, c *clientv3.Client, key string, opts ...clientv3.OpOption) (w *keyWatch, err error) {
	err = untilLeader(ctx, c, func() error {
		w, err = startWatch(ctx, c, key, opts...).created(ctx, c)
		return err
	})
	return w, err
}

// errWatchCanceled is the error of a watch that the server cancelled
// without saying why.
var errWatchCanceled = errors.New("concurrency: watch cancelled by the server")

// watchErr is the one definition of a broken watch: the error a watch
// response stands for (a closed channel, a compaction, a cancellation by a
// member that lost its leader). It is nil for a response with events or a
// progress notification.
func watchErr(ctx context.Context, c *clientv3.Client, wr clientv3.WatchResponse, ok bool) error {
	if !ok {
		return watchClosedErr(ctx, c)
	}
	if err := wr.Err(); err != nil {
		return err
	}
	if wr.Canceled {
		return errWatchCanceled
	}
	return nil
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

// remake replaces a broken watch with a new one from now, asking again
// while the failure is transient. A channel that closed because ctx ended
// or the client closed is not remade.
func remake(ctx context.Context, c *clientv3.Client, w *keyWatch, wr clientv3.WatchResponse, ok bool) error {
	w.cancel()
	if !ok && (ctx.Err() != nil || c.Ctx().Err() != nil) {
		return watchClosedErr(ctx, c)
	}
	for {
		nw, err := newWatch(ctx, c, w.key)
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

// pair is a waiter's two watches: on its own key, and on the key it waits
// for (its blocker, or a key that is to appear).
type pair struct {
	own, other *keyWatch
}

// watch makes sure p watches own ("" for none) and other, making the
// missing watches from now in one round trip (a watch on another key is
// replaced). It returns the revision after which both report every
// change. On error the caller still stops p.
func (p *pair) watch(ctx context.Context, c *clientv3.Client, own, other string) (int64, error) {
	if p.own != nil && p.own.key != own {
		p.own.cancel()
		p.own = nil
	}
	if p.other != nil && p.other.key != other {
		p.other.cancel()
		p.other = nil
	}
	err := untilLeader(ctx, c, func() (err error) {
		var po, pt *pendingWatch
		if p.own == nil && own != "" {
			po = startWatch(ctx, c, own)
		}
		if p.other == nil {
			pt = startWatch(ctx, c, other)
		}
		if po != nil {
			if p.own, err = po.created(ctx, c); err != nil {
				if pt != nil {
					pt.cancel()
				}
				return err
			}
		}
		if pt != nil {
			p.other, err = pt.created(ctx, c)
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	created := p.other.created
	if p.own != nil {
		created = max(created, p.own.created)
	}
	return created, nil
}

// stop ends both watches.
func (p *pair) stop() {
	if p.own != nil {
		p.own.cancel()
		p.own = nil
	}
	if p.other != nil {
		p.other.cancel()
		p.other = nil
	}
}

// wait is the one waiter over two watches. It blocks until an event on
// the other key satisfies hit (it returns the event and its revision), our
// own key (created at ownRev) is written (its revision), or a watch broke
// and was made again (the revision the new one starts after): each means
// "read the state again at this revision". It returns ErrSessionExpired
// when our own key goes or the session's lease ends (not s.Done(): an
// orphaned session's lease lives on, and its waiter with it, until the
// server deletes our key), and ctx.Err() when ctx ends. Without an own
// watch, only the other key is waited for.
func (p *pair) wait(ctx context.Context, s *Session, ownRev int64, hit func(ev *clientv3.Event) bool) (int64, *clientv3.Event, error) {
	c := s.Client()
	var own clientv3.WatchChan
	var expired <-chan struct{}
	if p.own != nil {
		own, expired = p.own.ch, s.expired()
	}
	broken := func(w *keyWatch, wr clientv3.WatchResponse, ok bool) (int64, *clientv3.Event, error) {
		if err := remake(ctx, c, w, wr, ok); err != nil {
			return 0, nil, err
		}
		s.watchRemade(w.key, wr.Err())
		return w.created, nil, nil
	}
	for {
		select {
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		case <-expired:
			return 0, nil, ErrSessionExpired
		case wr, ok := <-own:
			if watchErr(ctx, c, wr, ok) != nil {
				return broken(p.own, wr, ok)
			}
			if _, g := deleted(wr, ownRev); g {
				return 0, nil, ErrSessionExpired
			}
			if n := len(wr.Events); n > 0 {
				return wr.Events[n-1].Kv.ModRevision, nil, nil
			}
		case wr, ok := <-p.other.ch:
			if watchErr(ctx, c, wr, ok) != nil {
				return broken(p.other, wr, ok)
			}
			for _, ev := range wr.Events {
				if hit(ev) {
					return ev.Kv.ModRevision, ev, nil
				}
			}
		}
	}
}

// deleted scans a watch response for the deletion (or replacement) of the
// key created at rev, and returns the revision at which it happened.
func deleted(wr clientv3.WatchResponse, rev int64) (int64, bool) {
	for _, ev := range wr.Events {
		if gone(rev)(ev) {
			return ev.Kv.ModRevision, true
		}
	}
	return 0, false
}

// gone is the event of a blocker (created at rev) going: its deletion, or
// its replacement by a key of the same name.
func gone(rev int64) func(ev *clientv3.Event) bool {
	return func(ev *clientv3.Event) bool { return ev.Type == mvccpb.DELETE || ev.Kv.CreateRevision != rev }
}

// Following a whole queue.

// mirror keeps a copy of the keys under dir (with opts) up to date, for a
// waiter that decides on the whole queue rather than on one blocker: a
// Semaphore's first waiters, an Election's observers. It watches dir from
// now, reads it at the revision the watch starts after (never before
// from), and applies each batch of events to the copy, skipping those the
// read already holds. It calls state with the copy and its revision after
// the read and after each batch, until state returns done or an error.
//
// A watch that breaks is made again, after a pause, and the copy read
// anew. mirror returns state's error, ctx.Err() when ctx ends,
// ErrSessionExpired when end closes (nil: never), and the error of a
// watch or a read that could not be made.
func mirror(ctx context.Context, c *clientv3.Client, dir string, from int64, end <-chan struct{}, state func(kvs map[string]*mvccpb.KeyValue, rev int64) (bool, error)) error {
	for {
		w, err := newWatch(ctx, c, dir, clientv3.WithPrefix())
		if err != nil {
			return err
		}
		err = follow(ctx, c, w, dir, from, end, state)
		w.cancel()
		if !errors.Is(err, errWatchBroken) {
			return err
		}
		if c.Ctx().Err() != nil {
			return errClientClosed
		}
		pause(ctx)
	}
}

// errWatchBroken tells mirror to remake its watch.
var errWatchBroken = errors.New("concurrency: watch broken")

// follow is mirror with one watch, w.
func follow(ctx context.Context, c *clientv3.Client, w *keyWatch, dir string, from int64, end <-chan struct{}, state func(map[string]*mvccpb.KeyValue, int64) (bool, error)) error {
	r, at, err := getAt(ctx, c, max(w.created, from), dir, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	kvs := make(map[string]*mvccpb.KeyValue, len(r.Kvs))
	for _, kv := range r.Kvs {
		kvs[string(kv.Key)] = kv
	}
	for rev := at; ; {
		if done, err := state(kvs, rev); done || err != nil {
			return err
		}
		var evs []*clientv3.Event
		for len(evs) == 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-end:
				return ErrSessionExpired
			case wr, ok := <-w.ch:
				if err := watchErr(ctx, c, wr, ok); err != nil {
					if !ok && (ctx.Err() != nil || c.Ctx().Err() != nil) {
						return err
					}
					return errWatchBroken
				}
				// Events arrive in revision order: the copy is the state
				// as of the last one.
				evs = wr.Events
				for len(evs) > 0 && evs[0].Kv.ModRevision <= at {
					evs = evs[1:]
				}
			}
		}
		applyEvents(kvs, evs)
		rev = evs[len(evs)-1].Kv.ModRevision
	}
}

// applyEvents applies a batch of watch events to a copy of the keys.
func applyEvents(kvs map[string]*mvccpb.KeyValue, evs []*clientv3.Event) {
	for _, ev := range evs {
		if ev.Type == mvccpb.DELETE {
			delete(kvs, string(ev.Kv.Key))
		} else {
			kvs[string(ev.Kv.Key)] = ev.Kv
		}
	}
}

// Reading at a revision.

// getAt is the one read at a revision: it reads key (with opts) as of
// revision at (0 = now), and returns the revision the answer describes.
// See readAt.
func getAt(ctx context.Context, c *clientv3.Client, at int64, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, int64, error) {
	r, rev, err := readAt(ctx, c, at, func(o ...clientv3.OpOption) clientv3.Op {
		return clientv3.OpGet(key, append(opts, o...)...)
	})
	if err != nil {
		return nil, 0, err
	}
	return r.Get(), rev, nil
}

// readAt runs the read op(...) as of revision at (0 = now), and returns
// the revision the answer describes. op is a Get or a read-only Txn, made
// with the options given.
//
// It reads locally first; a member behind at falls back to a linearizable
// read, and a compacted at to a read of now. Callers read state that
// decides a wait, which is equally valid at any later revision.
//
// The revision returned is not the response header's: a read at an older
// revision carries the store's current revision in its header, and taking
// that for the state's revision would skip the changes in between.
//
// A transient failure, or an attempt without an answer in time, is read
// again at the same revision, after a pause, until ctx ends or the client
// closes.
func readAt(ctx context.Context, c *clientv3.Client, at int64, op func(...clientv3.OpOption) clientv3.Op) (r clientv3.OpResponse, rev int64, err error) {
	err = repeated(ctx, c, func(error) bool { return c.Ctx().Err() == nil }, func(actx context.Context) (err error) {
		r, rev, err = readOnce(actx, c, at, op)
		return err
	})
	return r, rev, err
}

func readOnce(ctx context.Context, c *clientv3.Client, at int64, op func(...clientv3.OpOption) clientv3.Op) (clientv3.OpResponse, int64, error) {
	if at > 0 {
		r, err := c.Do(ctx, op(clientv3.WithRev(at), clientv3.WithSerializable()))
		switch {
		case err == nil:
			return r, at, nil
		case errors.Is(err, rpctypes.ErrFutureRev):
			// The member that served us is behind the one that sent the
			// event; a linearizable read waits for it.
			r, err = c.Do(ctx, op(clientv3.WithRev(at)))
			if err == nil {
				return r, at, nil
			}
			if !errors.Is(err, rpctypes.ErrCompacted) {
				return r, 0, err
			}
		case !errors.Is(err, rpctypes.ErrCompacted):
			return r, 0, err
		}
	}
	r, err := c.Do(ctx, op())
	if err != nil {
		return r, 0, err
	}
	return r, opHeader(r).Revision, nil
}

// opHeader is the header of a Get's or a Txn's answer.
func opHeader(r clientv3.OpResponse) *pb.ResponseHeader {
	if t := r.Txn(); t != nil {
		return t.Header
	}
	return r.Get().Header
}

// Retries.

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

// attemptTimeout is how long the n-th attempt (from 0) of a request that
// is safe to repeat may take before it is given up and sent again: 1 s
// for each of the first three. A request that a healthy cluster
// answers in milliseconds can hang much longer on a fault: on a member
// that stopped without closing its connections until NewClient's probes
// cut them, or as a proposal that a follower forwarded to a leader that
// died, until the server gives up on it (its request timeout, 7 s by
// default). A second attempt, on another connection or to the new leader,
// is answered as soon as the cluster is. From the fourth attempt on, the
// time doubles, up to 16 s, so that a cluster that is merely slow is not
// asked again and again.
func attemptTimeout(n int) time.Duration {
	return time.Second << max(0, min(n-2, 4))
}

// errNoAnswer is the error of an attempt that got no answer within its
// time. It matches etcd's "request timed out", which is transient.
var errNoAnswer = fmt.Errorf("concurrency: no answer in time: %w", rpctypes.ErrTimeout)

// always lets repeated go on for as long as its context lives.
func always(error) bool { return true }

// repeated runs req, a request that is safe to repeat, under rctx, each
// attempt with a deadline of its own (attemptTimeout), and given up early
// when c's probes see a new leader (newTerm; NewClient's clients only). After a transient
// failure it sends req again, after a pause, while more(err) allows and
// rctx lives. An attempt cut short by its deadline, or by rctx's, fails
// with errNoAnswer; one cut short by rctx's end fails as it did.
func repeated(rctx context.Context, c *clientv3.Client, more func(err error) bool, req func(actx context.Context) error) error {
	for n := 0; ; n++ {
		actx, cancel := context.WithTimeout(rctx, attemptTimeout(n))
		done := make(chan struct{})
		if term := newTerm(c); term != nil {
			go func() {
				select {
				case <-term:
					cancel()
				case <-done:
				}
			}()
		}
		err := req(actx)
		close(done)
		timedOut := actx.Err() != nil && rctx.Err() == nil
		cancel()
		if err != nil && timedOut {
			err = errNoAnswer
		}
		if err == nil || !transient(err) || rctx.Err() != nil || !more(err) {
			return err
		}
		pause(rctx)
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

// pause waits a little before a retry, or until ctx ends.
func pause(ctx context.Context) {
	t := time.NewTimer(50 * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// Step 6: leaving.

// abandon deletes key if it is attached to lease. It cleans up after a
// join whose outcome is unknown: a request that timed out or was cancelled
// after it was sent may have created the key, which would then sit in the
// queue, never take its turn, and block everyone behind it until the
// lease ends. Only the lease's owner writes keys named after it
// (claimName, sharedName), so the lease compare is enough; the caller
// makes sure that no other handle uses the key.
func abandon(ctx context.Context, c *clientv3.Client, lease clientv3.LeaseID, key string) error {
	ctx, cancel := cleanupCtx(ctx, c)
	defer cancel()
	return repeated(ctx, c, always, func(actx context.Context) error {
		_, err := c.Txn(actx).
			If(clientv3.Compare(clientv3.LeaseValue(key), "=", lease)).
			Then(clientv3.OpDelete(key)).
			Commit()
		return err
	})
}

// leave deletes key if it is still the one created at rev. It runs with its
// own timeout, so that it also works after the caller's context ended.
func leave(ctx context.Context, c *clientv3.Client, key string, rev int64) error {
	ctx, cancel := cleanupCtx(ctx, c)
	defer cancel()
	return repeated(ctx, c, always, func(actx context.Context) error {
		_, err := c.Txn(actx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
			Then(clientv3.OpDelete(key)).
			Commit()
		return err
	})
}

// releaseTxn sends the transaction that send makes: a release whose every
// write is guarded by the create revision of the key it deletes or
// rewrites, so that it is safe to send again. It is repeated as a join is,
// for leaderWait of failures in a row. unknown reports that an attempt
// failed: that attempt may have taken effect, so a key that the answer
// finds gone may have been released by it rather than lost.
func releaseTxn(ctx context.Context, c *clientv3.Client, send func(actx context.Context) (*clientv3.TxnResponse, error)) (resp *clientv3.TxnResponse, unknown bool, err error) {
	start := time.Now()
	err = repeated(ctx, c, func(error) bool {
		unknown = true
		return time.Since(start) < leaderWait
	}, func(actx context.Context) (err error) {
		resp, err = send(actx)
		return err
	})
	return resp, unknown, err
}

// releaseKey is the release of one held key: it deletes key if it is still
// the one created at rev (etcd #22082), and reports whether it was there,
// counting a key gone after an attempt that failed as there (releaseTxn).
// When it fails, nothing is known to be released.
func releaseKey(ctx context.Context, c *clientv3.Client, key string, rev int64) (present bool, hdr *pb.ResponseHeader, err error) {
	resp, unknown, err := releaseTxn(ctx, c, func(actx context.Context) (*clientv3.TxnResponse, error) {
		return c.Txn(actx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
			Then(clientv3.OpDelete(key)).
			Commit()
	})
	if err != nil {
		return false, nil, err
	}
	return resp.Succeeded || unknown, resp.Header, nil
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

// headerAt is h with its revision set to rev: the revision at which a
// waiter's turn came, which may be later than the request that joined.
func headerAt(h *pb.ResponseHeader, rev int64) *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: h.ClusterId, MemberId: h.MemberId, RaftTerm: h.RaftTerm, Revision: rev}
}
