package concurrency

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Errors of Queue and PriorityQueue.
var (
	// ErrQueueEmpty is returned by TryDequeue when the queue has no item.
	ErrQueueEmpty = errors.New("queue: empty")
	// ErrClaimUnknown is returned by Dequeue when the request that takes
	// an item failed in transit (not because ctx ended: that request is
	// never cancelled) and the item is gone: it may have been taken by
	// this call, with the answer lost, or by another consumer.
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
// it fails in transit Dequeue says so (ErrClaimUnknown).
//
// Under competition, a consumer that has lost the race for the oldest item
// tries one of the oldest few, so items taken at about the same time may
// be returned slightly out of order; a single consumer sees strict FIFO.
// A consumer waiting on an empty queue watches the item range: each new
// item wakes every waiting consumer, one of which takes it (the queue has
// no session to register waiters with).
//
// A Queue is safe for use by several goroutines.
type Queue struct{ q *queueCore }

// PriorityQueue is a Queue whose items carry a priority: Dequeue returns
// an item of the lowest priority value present, first in, first out
// within a priority. Items are keys key/<priority>/<sequence>.
type PriorityQueue struct{ q *queueCore }

// NewQueue makes a Queue on key. A nil client or an empty key is reported
// by the first call, which then touches nothing.
func NewQueue(c *clientv3.Client, key string) *Queue {
	return &Queue{q: newQueueCore(c, key, false)}
}

// NewPriorityQueue makes a PriorityQueue on key. A nil client or an empty
// key is reported by the first call, which then touches nothing.
func NewPriorityQueue(c *clientv3.Client, key string) *PriorityQueue {
	return &PriorityQueue{q: newQueueCore(c, key, true)}
}

// Enqueue appends val to the queue.
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

// Enqueue adds val with priority pr; lower values come out first.
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
	priority bool
	err      error

	// Producer state: what this handle believes the counter holds. A wrong
	// guess costs one failed transaction, which returns the truth.
	mu     sync.Mutex
	seqVal string // "" when the counter is believed absent
	next   int64

	// contended counts down the Dequeue calls for which this consumer
	// still spreads its claims (see claimAny).
	contended atomic.Int32
}

func newQueueCore(c *clientv3.Client, key string, priority bool) *queueCore {
	q := &queueCore{c: c, dir: key + "/", seqKey: key + "/seq", priority: priority, next: 1}
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
		return fmt.Sprintf("%s%05d/%020d", q.dir, pr, seq)
	}
	return fmt.Sprintf("%s%020d", q.dir, seq)
}

// itemSeq parses an item key, and reports false for a key in the item
// range that is not an item of this kind of queue.
func (q *queueCore) itemSeq(k string) (int64, bool) {
	s, ok := strings.CutPrefix(k, q.dir)
	if !ok {
		return 0, false
	}
	if q.priority {
		if len(s) != 26 || s[5] != '/' || !queueDigits(s[:5]) {
			return 0, false
		}
		if _, err := strconv.ParseUint(s[:5], 10, 16); err != nil {
			return 0, false
		}
		s = s[6:]
	}
	if len(s) != 20 || !queueDigits(s) {
		return 0, false
	}
	seq, err := strconv.ParseInt(s, 10, 64)
	return seq, err == nil
}

func queueDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func (q *queueCore) enqueue(ctx context.Context, val string, pr uint16) error {
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
		resp, err := q.c.Txn(ctx).
			If(counter, clientv3.Compare(clientv3.CreateRevision(item), "=", 0)).
			Then(clientv3.OpPut(q.seqKey, seqVal), clientv3.OpPut(item, val)).
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
		r, rev, err := recipeGetAt(ctx, q.c, at, from, opts...)
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
//  1. Read the oldest items (keys only) and try to take the first.
//  2. Taking is one transaction: delete the item if its revision is still
//     the one read, and return its value; otherwise return the oldest
//     items now, and try one of those.
//  3. When there is none, watch the item range for new items from now,
//     read it at the revision the watch starts after, and take the items
//     that appear.
func (q *queueCore) dequeue(ctx context.Context, wait bool) (string, error) {
	if q.err != nil {
		return "", q.err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	var w *keyWatch
	defer func() {
		if w != nil {
			w.cancel()
		}
	}()
	read, at := true, int64(0)
	for {
		if read {
			kvs, err := q.items(ctx, at)
			if err != nil {
				return "", err
			}
			if val, ok, err := q.claimAny(ctx, kvs); ok || err != nil {
				return val, err
			}
			if !wait {
				return "", ErrQueueEmpty
			}
			if w == nil {
				if w, err = q.watch(ctx); err != nil {
					return "", err
				}
				at = w.created // read again where the watch starts
				continue
			}
			read = false
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case wr, ok := <-w.ch:
			if err := recipeWatchErr(ctx, q.c, wr, ok); err != nil {
				if !ok && (ctx.Err() != nil || q.c.Ctx().Err() != nil) {
					return "", err
				}
				// Items are state, not events: a new watch and a read at
				// its start lose nothing.
				w.cancel()
				if w, err = q.watch(ctx); err != nil {
					return "", err
				}
				read, at = true, w.created
				continue
			}
			var fresh []*mvccpb.KeyValue
			for _, ev := range wr.Events {
				fresh = append(fresh, ev.Kv)
			}
			// When every race is lost, the last failed claim saw the queue
			// empty; later items come through the watch.
			if val, ok, err := q.claimAny(ctx, q.filter(fresh)); ok || err != nil {
				return val, err
			}
		}
	}
}

func (q *queueCore) watch(ctx context.Context) (*keyWatch, error) {
	return recipeWatch(ctx, q.c, q.lo, clientv3.WithRange(q.hi), clientv3.WithFilterDelete())
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
		val, ok, rest, err := q.claim(ctx, kvs[i])
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
func (q *queueCore) claim(ctx context.Context, kv *mvccpb.KeyValue) (string, bool, []*mvccpb.KeyValue, error) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), claimTimeout)
	defer cancel()
	key := string(kv.Key)
	resp, err := q.c.Txn(cctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
		Then(clientv3.OpDelete(key, clientv3.WithPrevKV())).
		Else(clientv3.OpGet(q.lo, clientv3.WithRange(q.hi), clientv3.WithKeysOnly(), clientv3.WithLimit(queueBatch))).
		Commit()
	if err != nil {
		// Did the delete happen? If the item is still there, it did not.
		r, gerr := q.c.Get(cctx, key)
		if gerr == nil && len(r.Kvs) > 0 && r.Kvs[0].ModRevision == kv.ModRevision {
			return "", false, nil, err
		}
		return "", false, nil, fmt.Errorf("%w: item %q: %w", ErrClaimUnknown, key, err)
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
