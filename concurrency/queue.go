package concurrency

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/internal/layout"
	"github.com/batonhq/baton/internal/obs"
	"github.com/batonhq/baton/metrics"
)

// Errors of Queue and PriorityQueue.
var (
	// ErrQueueEmpty is returned by TryDequeue when the queue has no item.
	ErrQueueEmpty = errors.New("queue: empty")
	// ErrClaimUnknown is returned by Dequeue when the answer to the
	// request that takes an item was lost (not because ctx ended: that
	// request is never cancelled) and its outcome could not be learned:
	// the cluster stayed out of reach for claimTimeout (10 s), or the
	// claim record that tells expired with the consumer's lease. The item
	// may have been taken by this call, or by another consumer.
	ErrClaimUnknown = errors.New("queue: outcome of a claim is unknown")
)

const (
	// queueBatch is how many items a consumer reads at once.
	queueBatch = 16
	// queueSpread is how many of the oldest items a consumer that competes
	// with others picks from.
	queueSpread = 4
	// queueContendedFor is how many Dequeue calls without a lost race it
	// takes a consumer to go back to always taking the oldest item.
	queueContendedFor = 16
	// claimTimeout bounds the request that takes an item, which does not
	// obey the caller's context (an item taken must be returned).
	claimTimeout = 10 * time.Second
	// queueWaiterTTL is the lease TTL of waiting consumers' keys: how long
	// a consumer that died while waiting holds up those behind it.
	queueWaiterTTL = 10 * time.Second
)

// Queue is a distributed first-in, first-out queue of strings, shared by
// any number of producers and consumers.
//
// Items are keys key/<sequence>, the sequence taken from a counter key
// key/seq by a compare-and-swap in the same transaction that puts the
// item, so the order of the keys is the order in which Enqueue calls
// committed. Items are not attached to any lease: they outlive their
// producer.
//
// Each item is delivered to exactly one Dequeue: consumers take an item
// by deleting it in a transaction guarded on its revision, and only the
// one whose delete succeeded returns it. Dequeue never deletes an item it
// does not return: the taking request is not cancelled by ctx, and when
// its answer is lost (a member crashed, a connection broke) Dequeue learns
// the outcome from a claim record the same transaction wrote, and makes
// sure a request still on its way can no longer take effect: the item is
// returned, or left for others. Only when that cannot be learned does
// Dequeue say so (ErrClaimUnknown).
//
// Under competition, a consumer that has lost the race for the oldest item
// tries one of the oldest few, so items taken at about the same time may
// be returned slightly out of order; a single consumer sees strict FIFO.
//
// Consumers that find no item for them wait in line, first come first
// served, under key/w/ with keys on a short lease of the handle
// (queueWaiterTTL, kept alive while a Dequeue waits). The first in line
// watches the item range; the one of rank r watches only the key of the
// r-th item still to come (items are numbered by the counter) and the key
// of the waiter ahead of it. So an arriving item wakes the waiter it is
// for, and a waiter that leaves or takes its item wakes only the one
// behind it: no herd. A consumer that dies while waiting holds up the line
// until its lease ends: queueWaiterTTL after its last renewal, or longer
// if the raft leader changes meanwhile (a new leader restarts every
// lease's TTL, etcd #9395).
//
// The keys under key/: items (key/<sequence>), the counter (key/seq),
// waiting consumers (key/w/), claim records (key/c/, on the consumers'
// leases) and, for a PriorityQueue, arrival keys (key/n/<sequence>).
//
// A Queue is safe for use by several goroutines.
type Queue struct{ q *queueCore }

// PriorityQueue is a Queue whose items carry a priority: Dequeue returns
// an item of the lowest priority value present, first in, first out
// within a priority. Items are keys key/<priority>/<sequence>.
type PriorityQueue struct{ q *queueCore }

// NewQueue makes a Queue on key. A nil client or an empty key is reported
// by the first call, which then touches nothing.
func NewQueue(c *clientv3.Client, key string, opts ...QueueOption) *Queue {
	return &Queue{q: newQueueCore(c, key, false, opts)}
}

// NewPriorityQueue makes a PriorityQueue on key. A nil client or an empty
// key is reported by the first call, which then touches nothing.
func NewPriorityQueue(c *clientv3.Client, key string, opts ...QueueOption) *PriorityQueue {
	return &PriorityQueue{q: newQueueCore(c, key, true, opts)}
}

// QueueOption configures a Queue or PriorityQueue.
type QueueOption func(*queueCore)

// WithQueueMetrics makes the queue record into m: items enqueued and
// delivered, the wait of each Dequeue that delivered, and claims whose
// outcome stayed unknown. Default (and a nil m): nothing is recorded.
func WithQueueMetrics(m *metrics.Metrics) QueueOption {
	return func(q *queueCore) { q.rec = m.Recorder() }
}

// WithQueueLogger makes the queue log its claims whose outcome stayed
// unknown (ErrClaimUnknown) to l. Default (and a nil l): no logs.
func WithQueueLogger(l *slog.Logger) QueueOption {
	return func(q *queueCore) { q.log = l }
}

// Enqueue appends val to the queue. It returns ctx.Err() when ctx ends
// first. An Enqueue cut short by ctx after its request was sent may still
// add the item, even after it returned: items are not on a lease, and etcd
// does not say whether a request it was not allowed to answer took effect.
func (q *Queue) Enqueue(ctx context.Context, val string) error {
	return q.q.enqueue(ctx, val, 0)
}

// Dequeue removes the oldest item and returns it, waiting for one if the
// queue is empty. It returns ctx.Err() when ctx ends first, having taken
// nothing; if an item was taken as ctx ended, it is returned with a nil
// error rather than dropped.
func (q *Queue) Dequeue(ctx context.Context) (string, error) {
	return q.q.dequeue(ctx, true)
}

// TryDequeue is Dequeue without waiting: it returns ErrQueueEmpty when the
// queue has no item.
func (q *Queue) TryDequeue(ctx context.Context) (string, error) {
	return q.q.dequeue(ctx, false)
}

// Enqueue adds val with priority pr; lower values come out first. As
// Queue.Enqueue, a call cut short by ctx may still add the item.
func (q *PriorityQueue) Enqueue(ctx context.Context, val string, pr uint16) error {
	return q.q.enqueue(ctx, val, pr)
}

// Dequeue removes and returns the oldest item of the lowest priority
// value, waiting for one if the queue is empty, as Queue.Dequeue.
func (q *PriorityQueue) Dequeue(ctx context.Context) (string, error) {
	return q.q.dequeue(ctx, true)
}

// TryDequeue is Dequeue without waiting: it returns ErrQueueEmpty when the
// queue has no item.
func (q *PriorityQueue) TryDequeue(ctx context.Context) (string, error) {
	return q.q.dequeue(ctx, false)
}

// queueCore is what Queue and PriorityQueue share.
type queueCore struct {
	c        *clientv3.Client
	dir      string // key + "/"
	seqKey   string // key + "/seq"
	lo, hi   string // items are in [lo, hi): their names start with a digit
	wdir     string // key + "/w/": waiting consumers
	ndir     string // key + "/n/": arrival keys of a priority queue's items
	priority bool
	err      error

	// The lease of this handle's waiter keys and claim records, granted
	// by the first Dequeue that waits or claims, renewed while one waits
	// (and by any claim once half its TTL has passed); a new one is
	// granted once it has expired.
	lmu     sync.Mutex
	lease   clientv3.LeaseID
	leaseAt time.Time // when the lease's TTL last restarted (at the latest)
	ttl     time.Duration
	waiterN atomic.Int64

	// Claim records: slots in use are not in freeSlots; claimN numbers
	// claims.
	smu       sync.Mutex
	slots     int
	freeSlots []int
	claimN    atomic.Int64

	// trace, when set (by tests), is told when a waiter blocks ("wait")
	// and when a watch event wakes it ("wake").
	trace func(what string)

	// Producer state: what this handle believes the counter holds. A wrong
	// guess costs one failed transaction, which returns the truth.
	mu     sync.Mutex
	seqVal string // "" when the counter is believed absent
	next   int64

	// contended counts down the Dequeue calls for which this consumer
	// still spreads its claims (see claimAny).
	contended atomic.Int32

	name string // the key as given, for metrics and logs
	rec  *obs.Recorder
	log  *slog.Logger
}

func newQueueCore(c *clientv3.Client, key string, priority bool, opts []QueueOption) *queueCore {
	q := &queueCore{c: c, dir: layout.Dir(key), seqKey: layout.Dir(key) + layout.QueueSeq, wdir: layout.Dir(key) + layout.QueueWaiters, ndir: layout.Dir(key) + layout.QueueArrivals, priority: priority, next: 1, ttl: queueWaiterTTL, name: key}
	for _, opt := range opts {
		opt(q)
	}
	q.lo, q.hi = q.dir+"0", q.dir+":" // ':' follows '9'
	switch {
	case c == nil:
		q.err = ErrNilClient
	case key == "":
		q.err = ErrEmptyPrefix
	}
	return q
}

// itemKey names the item with sequence seq and priority pr.
func (q *queueCore) itemKey(seq int64, pr uint16) string {
	if q.priority {
		return layout.PriorityItem(q.dir, pr, seq)
	}
	return layout.QueueItem(q.dir, seq)
}

// arrivalKey is the key whose creation announces the item with sequence
// seq: the item itself in a FIFO queue, whose keys follow the sequence; a
// key of its own in a priority queue, whose item keys start with the
// priority, which a waiter cannot know in advance.
func (q *queueCore) arrivalKey(seq int64) string {
	if q.priority {
		return layout.ArrivalKey(q.dir, seq)
	}
	return q.itemKey(seq, 0)
}

// itemSeq parses an item key, and reports false for a key in the item
// range that is not an item of this kind of queue.
func (q *queueCore) itemSeq(k string) (int64, bool) {
	s, ok := strings.CutPrefix(k, q.dir)
	if !ok {
		return 0, false
	}
	seq, _, ok := layout.ParseQueueItem(s, q.priority)
	return seq, ok
}

func (q *queueCore) enqueue(ctx context.Context, val string, pr uint16) error {
	err := q.enqueueOnce(ctx, val, pr)
	if err == nil {
		q.rec.Enqueued(q.name)
	}
	return ctxEnded(ctx, err)
}

func (q *queueCore) enqueueOnce(ctx context.Context, val string, pr uint16) error {
	if q.err != nil {
		return q.err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// One producer handle enqueues one item at a time: its guesses of the
	// counter would only collide with each other.
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		seq := q.next
		counter := clientv3.Compare(clientv3.CreateRevision(q.seqKey), "=", 0)
		if q.seqVal != "" {
			counter = clientv3.Compare(clientv3.Value(q.seqKey), "=", q.seqVal)
		}
		item := q.itemKey(seq, pr)
		seqVal := strconv.FormatInt(seq, 10)
		puts := []clientv3.Op{clientv3.OpPut(q.seqKey, seqVal), clientv3.OpPut(item, val)}
		if q.priority {
			puts = append(puts, clientv3.OpPut(q.arrivalKey(seq), ""))
		}
		resp, err := q.c.Txn(ctx).
			If(counter, clientv3.Compare(clientv3.CreateRevision(item), "=", 0)).
			Then(puts...).
			Else(clientv3.OpGet(q.seqKey)).
			Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			q.seqVal, q.next = seqVal, seq+1
			return nil
		}
		// Another producer moved the counter: take its value and retry.
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			v, perr := strconv.ParseInt(string(kvs[0].Value), 10, 64)
			if perr != nil || v < 0 {
				return fmt.Errorf("queue: counter %q holds %q, not a sequence number", q.seqKey, kvs[0].Value)
			}
			q.seqVal, q.next = string(kvs[0].Value), v+1
			continue
		}
		// No counter: a new queue, or its counter was deleted. Continue
		// after the highest item present, so that FIFO order holds.
		last, err := q.lastSeq(ctx)
		if err != nil {
			return err
		}
		q.seqVal, q.next = "", last+1
	}
}

// lastSeq is the highest sequence number of the items present (0 for
// none). It reads every item key, which happens only when the counter is
// missing.
func (q *queueCore) lastSeq(ctx context.Context) (int64, error) {
	r, err := q.c.Get(ctx, q.lo, clientv3.WithRange(q.hi), clientv3.WithKeysOnly())
	if err != nil {
		return 0, err
	}
	var last int64
	for _, kv := range r.Kvs {
		if seq, ok := q.itemSeq(string(kv.Key)); ok {
			last = max(last, seq)
		}
	}
	return last, nil
}

// items reads the oldest items, keys only, at revision at (0: now,
// linearizable).
func (q *queueCore) items(ctx context.Context, at int64) ([]*mvccpb.KeyValue, error) {
	from := q.lo
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(q.hi), clientv3.WithKeysOnly(), clientv3.WithLimit(queueBatch)}
		r, rev, err := getAt(ctx, q.c, at, from, opts...)
		if err != nil {
			return nil, err
		}
		kvs := q.filter(r.Kvs)
		if len(kvs) > 0 || !r.More || len(r.Kvs) == 0 {
			return kvs, nil
		}
		// Only foreign keys in this page: read on after them.
		from = string(r.Kvs[len(r.Kvs)-1].Key) + "\x00"
		at = rev
	}
}

func (q *queueCore) filter(kvs []*mvccpb.KeyValue) []*mvccpb.KeyValue {
	out := kvs[:0:0]
	for _, kv := range kvs {
		if _, ok := q.itemSeq(string(kv.Key)); ok {
			out = append(out, kv)
		}
	}
	return out
}

// dequeue takes the oldest item it can.
//
//  1. Read the oldest items (keys only) and the waiting consumers. Items
//     beyond those the waiters are owed are free: try to take one.
//  2. Taking is one transaction: delete the item if its revision is still
//     the one read, and return its value; otherwise return the oldest
//     items now, and try one of those.
//  3. When none is free, wait in line (await).
//
// TryDequeue skips the line: it takes any item present.
//
// An error is ctx's own when ctx ended (etcd reports a request cut short by
// the deadline as a gRPC status, which callers cannot match with
// errors.Is), except ErrQueueEmpty and ErrClaimUnknown, which say more. An
// item taken is returned with a nil error, whatever became of ctx.
func (q *queueCore) dequeue(ctx context.Context, wait bool) (string, error) {
	start := time.Now()
	val, err := q.dequeueOnce(ctx, wait)
	if err != nil {
		if errors.Is(err, ErrClaimUnknown) {
			q.rec.ClaimUnknown(q.name)
			if q.log != nil {
				q.log.Warn("queue claim outcome unknown", slog.String("name", q.name), slog.String("why", err.Error()))
			}
		}
		return "", ctxEnded(ctx, err, ErrQueueEmpty, ErrClaimUnknown)
	}
	q.rec.Delivered(q.name, time.Since(start))
	return val, nil
}

func (q *queueCore) dequeueOnce(ctx context.Context, wait bool) (string, error) {
	if q.err != nil {
		return "", q.err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if !wait {
		kvs, err := q.items(ctx, 0)
		if err != nil {
			return "", err
		}
		if val, ok, err := q.claimAny(ctx, kvs); ok || err != nil {
			return val, err
		}
		return "", ErrQueueEmpty
	}
	st, err := q.state(ctx, 0)
	if err != nil {
		return "", err
	}
	if len(st.items) > len(st.waiters) {
		if val, ok, err := q.claimAny(ctx, st.items[len(st.waiters):]); ok || err != nil {
			return val, err
		}
	}
	for {
		val, again, err := q.await(ctx)
		if !again {
			return val, err
		}
	}
}

// queueState is what a consumer decides on: the oldest items, the counter
// and the waiting consumers, all as of one revision.
type queueState struct {
	items   []*mvccpb.KeyValue // the oldest items, at most queueBatch
	more    bool               // there are items beyond those
	last    int64              // the counter: the sequence of the newest item enqueued
	waiters []*mvccpb.KeyValue // by create revision
}

// rank is the place in line of the waiter created at rev, counting from 0,
// and the key of the waiter ahead of it; -1 when the waiter is not in line
// (its lease ended).
func (st queueState) rank(rev int64) (int, string) {
	for i, w := range st.waiters {
		if w.CreateRevision == rev {
			if i == 0 {
				return 0, ""
			}
			return i, string(st.waiters[i-1].Key)
		}
	}
	return -1, ""
}

// stateOps read a queueState in one transaction.
func (q *queueCore) stateOps(opts ...clientv3.OpOption) []clientv3.Op {
	with := func(o ...clientv3.OpOption) []clientv3.OpOption { return append(o, opts...) }
	return []clientv3.Op{
		clientv3.OpGet(q.lo, with(clientv3.WithRange(q.hi), clientv3.WithKeysOnly(), clientv3.WithLimit(queueBatch))...),
		clientv3.OpGet(q.seqKey, opts...),
		clientv3.OpGet(q.wdir, with(clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))...),
	}
}

func (q *queueCore) parseState(ctx context.Context, rs []*etcdserverpb.ResponseOp, rev int64) (queueState, error) {
	items, counter, waiters := rs[0].GetResponseRange(), rs[1].GetResponseRange(), rs[2].GetResponseRange()
	st := queueState{items: q.filter(items.Kvs), more: items.More, waiters: waiters.Kvs}
	if len(st.items) == 0 && items.More {
		// Only foreign keys in the first page: page on past them.
		kvs, err := q.items(ctx, rev)
		if err != nil {
			return st, err
		}
		st.items = kvs
	}
	if len(counter.Kvs) > 0 {
		st.last, _ = strconv.ParseInt(string(counter.Kvs[0].Value), 10, 64)
	}
	return st, nil
}

// state reads the queue as of revision at (0: now), see readAt.
func (q *queueCore) state(ctx context.Context, at int64) (queueState, error) {
	r, rev, err := readAt(ctx, q.c, at, func(opts ...clientv3.OpOption) clientv3.Op {
		return clientv3.OpTxn(nil, q.stateOps(opts...), nil)
	})
	if err != nil {
		return queueState{}, err
	}
	return q.parseState(ctx, r.Txn().Responses, rev)
}

// await waits in line for an item and takes it. It returns again when its
// place in line was lost with the handle's lease, to join the line anew.
//
// The waiter of rank r is owed the r-th item of the queue: it takes that
// one when present. Otherwise the first in line watches the item range,
// which wakes it for any item; a waiter further back watches the arrival
// key of the item it will be owed when all ahead of it have theirs, and
// the waiter ahead of it, whose leaving changes what it is owed. Neither
// watch is needed for safety, which rests on the guarded delete of claim;
// the first one's watch alone guarantees progress.
func (q *queueCore) await(ctx context.Context) (val string, again bool, err error) {
	lease, err := q.waiterLease(ctx)
	if err != nil {
		return "", false, err
	}
	wkey := layout.QueueWaiter(q.dir, int64(lease), q.waiterN.Add(1))
	// The request that puts the waiter key runs to its answer (key.go's
	// join), so that a key it made is known and deleted below.
	j, err := join(ctx, q.c, joinReq{key: wkey, lease: lease, reads: q.stateOps()})
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			q.dropLease(lease)
			return "", true, nil
		}
		// The key may have been created: take it out of line.
		abandon(ctx, q.c, lease, wkey)
		return "", false, err
	}
	rev := j.rev
	taken := false
	defer func() {
		if !taken {
			_ = leave(ctx, q.c, wkey, rev)
		}
	}()
	st, err := q.parseState(ctx, j.reads, rev)
	if err != nil {
		return "", false, err
	}
	// head watches the item range; line the arrival key (own) and the
	// waiter ahead (other).
	var head *keyWatch
	var line pair
	stop := func(w **keyWatch) {
		if *w != nil {
			(*w).cancel()
			*w = nil
		}
	}
	defer func() { stop(&head); line.stop() }()
	renew := time.NewTicker(q.ttl / 3)
	defer renew.Stop()
	for {
		rank, predKey := st.rank(rev)
		if rank < 0 {
			return "", true, nil
		}
		if rank < len(st.items) || (st.more && len(st.items) > 0) {
			val, ok, _, err := q.claim(ctx, st.items[min(rank, len(st.items)-1)], wkey)
			if err != nil {
				return "", false, err
			}
			if ok {
				taken = true
				return val, false, nil
			}
			if st, err = q.state(ctx, 0); err != nil {
				return "", false, err
			}
			continue
		}
		// Nothing for us yet: make sure the right watches run. New ones
		// start now; the state is read again where they start.
		created := int64(0)
		if rank == 0 {
			line.stop()
			if head == nil {
				if head, err = q.watch(ctx); err != nil {
					return "", false, err
				}
				created = head.created
			}
		} else {
			stop(&head)
			akey := q.arrivalKey(st.last + 1 + int64(rank-len(st.items)))
			if line.own == nil || line.other == nil || line.own.key != akey || line.other.key != predKey {
				if created, err = line.watch(ctx, q.c, akey, predKey); err != nil {
					return "", false, err
				}
			}
		}
		if created > 0 {
			// Not before our own key (a watch's member may lag).
			if st, err = q.state(ctx, max(created, rev)); err != nil {
				return "", false, err
			}
			continue
		}
		var (
			wr     clientv3.WatchResponse
			ok     bool
			source **keyWatch
		)
		q.traceEvent("wait")
		select {
		case <-ctx.Done():
			return "", false, ctx.Err()
		case <-renew.C:
			if gone, err := q.renewLease(ctx, lease); gone || err != nil {
				return "", gone, err
			}
			continue
		case wr, ok = <-wchan(head):
			source = &head
		case wr, ok = <-wchan(line.own):
			source = &line.own
		case wr, ok = <-wchan(line.other):
			source = &line.other
		}
		q.traceEvent("wake")
		at := int64(0)
		if err := watchErr(ctx, q.c, wr, ok); err != nil {
			if !ok && (ctx.Err() != nil || q.c.Ctx().Err() != nil) {
				return "", false, err
			}
			stop(source) // made again on the next turn
		} else if len(wr.Events) > 0 {
			at = wr.Events[len(wr.Events)-1].Kv.ModRevision
		} else {
			continue // a progress notification
		}
		if st, err = q.state(ctx, at); err != nil {
			return "", false, err
		}
	}
}

func (q *queueCore) traceEvent(what string) {
	if q.trace != nil {
		q.trace(what)
	}
}

// wchan is w's channel, nil (never ready) without a watch.
func wchan(w *keyWatch) clientv3.WatchChan {
	if w == nil {
		return nil
	}
	return w.ch
}

// waiterLease returns the lease for this handle's waiter keys, renewing it
// when half its TTL has passed, or granting a new one.
func (q *queueCore) waiterLease(ctx context.Context) (clientv3.LeaseID, error) {
	ctx, stop := withClient(ctx, q.c)
	defer stop()
	q.lmu.Lock()
	defer q.lmu.Unlock()
	if q.lease != 0 && time.Since(q.leaseAt) < q.ttl/2 {
		return q.lease, nil
	}
	now := time.Now()
	if q.lease != 0 {
		_, err := q.c.KeepAliveOnce(ctx, q.lease)
		if err == nil {
			q.leaseAt = now
			return q.lease, nil
		}
		if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return 0, err
		}
	}
	r, err := q.c.Grant(ctx, int64((q.ttl+time.Second-1)/time.Second))
	if err != nil {
		return 0, err
	}
	q.lease, q.leaseAt = r.ID, now
	return r.ID, nil
}

// renewLease keeps lease alive while a Dequeue waits; gone reports that it
// has expired, taking the waiter's key with it.
func (q *queueCore) renewLease(ctx context.Context, lease clientv3.LeaseID) (gone bool, err error) {
	now := time.Now()
	_, err = q.c.KeepAliveOnce(ctx, lease)
	switch {
	case err == nil:
		q.lmu.Lock()
		if q.lease == lease {
			q.leaseAt = now
		}
		q.lmu.Unlock()
		return false, nil
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		q.dropLease(lease)
		return true, nil
	case transient(err) && ctx.Err() == nil:
		return false, nil // the next tick tries again
	}
	return false, err
}

func (q *queueCore) dropLease(lease clientv3.LeaseID) {
	q.lmu.Lock()
	if q.lease == lease {
		q.lease = 0
	}
	q.lmu.Unlock()
}

func (q *queueCore) watch(ctx context.Context) (*keyWatch, error) {
	return newWatch(ctx, q.c, q.lo, clientv3.WithRange(q.hi), clientv3.WithFilterDelete())
}

// claimAny tries to take one of kvs, oldest first, and returns false when
// every item was taken by others.
//
// Consumers that compete all go for the oldest item, and all but one lose
// a round trip. So a consumer that lost a race recently starts at one of
// the queueSpread oldest items at random instead, which spreads competing
// consumers over different items; a consumer alone always takes the
// oldest, so it sees strict FIFO order.
func (q *queueCore) claimAny(ctx context.Context, kvs []*mvccpb.KeyValue) (string, bool, error) {
	lost := false
	for len(kvs) > 0 {
		if err := ctx.Err(); err != nil {
			return "", false, err // nothing taken yet
		}
		i := 0
		if lost || q.contended.Load() > 0 {
			i = rand.IntN(min(len(kvs), queueSpread))
		}
		val, ok, rest, err := q.claim(ctx, kvs[i], "")
		if ok || err != nil {
			if ok && !lost && q.contended.Load() > 0 {
				q.contended.Add(-1)
			}
			return val, ok, err
		}
		lost = true
		q.contended.Store(queueContendedFor)
		kvs = q.filter(rest)
	}
	return "", false, nil
}

// claim deletes kv if it is still there, and returns its value. Otherwise
// it returns the oldest items now. The request does not obey ctx: once it
// is sent, its answer decides whether we own an item.
//
// A waiter passes its key (wkey), which leaves the line in the same
// transaction; a priority queue's item takes its arrival key along.
//
// The same transaction writes a claim record: a key of this handle's (one
// per claim in progress, on the handle's lease) holding a claim ID. When
// the answer is lost, settle reads the record to learn whether the claim
// took effect.
func (q *queueCore) claim(ctx context.Context, kv *mvccpb.KeyValue, wkey string) (string, bool, []*mvccpb.KeyValue, error) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), claimTimeout)
	defer cancel()
	key := string(kv.Key)
	slot := q.takeSlot()
	defer q.putSlot(slot)
	for {
		if err := q.c.Ctx().Err(); err != nil {
			return "", false, nil, errClientClosed
		}
		// The caller's ctx: nothing has been sent yet.
		lease, err := q.waiterLease(ctx)
		if err != nil {
			return "", false, nil, err
		}
		rec := layout.QueueClaimRecord(q.dir, int64(lease), slot)
		id := strconv.FormatInt(q.claimN.Add(1), 10)
		ops := []clientv3.Op{clientv3.OpDelete(key, clientv3.WithPrevKV()), clientv3.OpPut(rec, id, clientv3.WithLease(lease))}
		if q.priority {
			if seq, ok := q.itemSeq(key); ok {
				ops = append(ops, clientv3.OpDelete(q.arrivalKey(seq)))
			}
		}
		if wkey != "" {
			ops = append(ops, clientv3.OpDelete(wkey))
		}
		resp, err := q.c.Txn(cctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(ops...).
			Else(clientv3.OpGet(q.lo, clientv3.WithRange(q.hi), clientv3.WithKeysOnly(), clientv3.WithLimit(queueBatch))).
			Commit()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			q.dropLease(lease) // the transaction was refused whole
			continue
		}
		if err != nil {
			return q.settle(cctx, kv, rec, id, lease, err)
		}
		if !resp.Succeeded {
			return "", false, resp.Responses[0].GetResponseRange().Kvs, nil
		}
		prev := resp.Responses[0].GetResponseDeleteRange().PrevKvs
		if len(prev) == 0 {
			return "", false, nil, fmt.Errorf("queue: item %q vanished inside a transaction", key)
		}
		return string(prev[0].Value), true, nil, nil
	}
}

// settle finds out what became of a claim whose answer was lost (cerr).
// One transaction does two things: if the item is still there, it touches
// it (a new mod revision, same value), so that the claim, should it still
// be on its way, can no longer take effect: the item stays for others and
// the claim failed. Otherwise it reads the claim record: ours means the
// claim took effect, at the record's revision, and the item's value is
// read as it was just before. A record missing while the lease still lives
// means the claim never took effect; with the lease gone too (the answer
// came later than the lease's TTL), the outcome is unknown.
func (q *queueCore) settle(ctx context.Context, kv *mvccpb.KeyValue, rec, id string, lease clientv3.LeaseID, cerr error) (string, bool, []*mvccpb.KeyValue, error) {
	key := string(kv.Key)
	unknown := func(err error) (string, bool, []*mvccpb.KeyValue, error) {
		return "", false, nil, fmt.Errorf("%w: item %q: %w (then: %w)", ErrClaimUnknown, key, cerr, err)
	}
	for {
		resp, err := q.c.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpPut(key, "", clientv3.WithIgnoreValue())).
			Else(clientv3.OpGet(rec)).
			Commit()
		if err != nil {
			if transient(err) && ctx.Err() == nil {
				pause(ctx)
				continue
			}
			return unknown(err)
		}
		if resp.Succeeded {
			return "", false, nil, cerr // fenced: not taken, and never will be
		}
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			if string(kvs[0].Value) != id {
				return "", false, nil, cerr // another claim of this slot: ours never took effect
			}
			old, err := q.c.Get(ctx, key, clientv3.WithRev(kvs[0].ModRevision-1))
			if err != nil || len(old.Kvs) == 0 {
				if err == nil {
					err = errors.New("no value before the claim")
				}
				return unknown(err)
			}
			return string(old.Kvs[0].Value), true, nil, nil
		}
		ttl, err := q.c.TimeToLive(ctx, lease)
		if err != nil {
			return unknown(err)
		}
		if ttl.TTL > 0 {
			return "", false, nil, cerr
		}
		return unknown(errors.New("the claim record expired with its lease"))
	}
}

// takeSlot returns a claim-record slot no other claim of this handle is
// using; putSlot gives it back.
func (q *queueCore) takeSlot() int {
	q.smu.Lock()
	defer q.smu.Unlock()
	if n := len(q.freeSlots); n > 0 {
		s := q.freeSlots[n-1]
		q.freeSlots = q.freeSlots[:n-1]
		return s
	}
	q.slots++
	return q.slots - 1
}

func (q *queueCore) putSlot(s int) {
	q.smu.Lock()
	q.freeSlots = append(q.freeSlots, s)
	q.smu.Unlock()
}
