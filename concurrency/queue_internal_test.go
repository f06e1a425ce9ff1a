package concurrency

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/internal/testutil"
)

// queueTracer counts, per consumer, how often it blocked and how often a
// watch event woke it, and lets a test wait for a total of blocks.
type queueTracer struct {
	mu    sync.Mutex
	waits map[int]int
	wakes map[int]int
	moved chan struct{} // signalled on every block
}

func newQueueTracer() *queueTracer {
	return &queueTracer{waits: map[int]int{}, wakes: map[int]int{}, moved: make(chan struct{}, 1000)}
}

func (tr *queueTracer) hook(id int) func(string) {
	return func(what string) {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		switch what {
		case "wait":
			tr.waits[id]++
			tr.moved <- struct{}{}
		case "wake":
			tr.wakes[id]++
		}
	}
}

func (tr *queueTracer) totalWaits() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := 0
	for _, w := range tr.waits {
		n += w
	}
	return n
}

// awaitWaits blocks until consumers have blocked n times in all.
func (tr *queueTracer) awaitWaits(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for tr.totalWaits() < n {
		select {
		case <-tr.moved:
		case <-deadline:
			t.Fatalf("consumers blocked %d times, want %d", tr.totalWaits(), n)
		}
	}
}

func (tr *queueTracer) wakesOf(id int) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.wakes[id]
}

type dequeued struct {
	id  int
	val string
	err error
}

// An arriving item wakes the consumer it is for, and the one behind it
// moves up a place; consumers further back are not woken at all. (etcd's
// recipe Queue, like ours before the line, woke every waiting consumer for
// every item.)
func TestQueueArrivalWakesOnlyTheNextConsumer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := testutil.Server(t)
	c := testutil.Client(t, srv.Endpoints())
	tr := newQueueTracer()
	const consumers = 4
	out := make(chan dequeued, consumers)
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	for id := range consumers {
		q := NewQueue(c, "line")
		q.q.trace = tr.hook(id)
		go func() {
			v, err := q.Dequeue(dctx)
			out <- dequeued{id, v, err}
		}()
		// One at a time, so that the line's order is the ids'.
		tr.awaitWaits(t, id+1)
	}
	if err := NewQueue(c, "line").Enqueue(ctx, "first"); err != nil {
		t.Fatal(err)
	}
	var got dequeued
	select {
	case got = <-out:
	case <-ctx.Done():
		t.Fatal("no consumer took the item")
	}
	if got.err != nil || got.val != "first" || got.id != 0 {
		t.Fatalf("took %q by consumer %d (err %v), want \"first\" by consumer 0, first in line", got.val, got.id, got.err)
	}
	// Consumer 1 moves to the head of the line and blocks again.
	tr.awaitWaits(t, consumers+1)
	for id := 2; id < consumers; id++ {
		if n := tr.wakesOf(id); n != 0 {
			t.Errorf("consumer %d, not next in line, was woken %d times", id, n)
		}
	}
	if n := tr.wakesOf(1); n != 1 {
		t.Errorf("consumer 1 was woken %d times, want once (its predecessor left)", n)
	}

	// Two items at once go to the next two in line, in parallel.
	p := NewQueue(c, "line")
	for _, v := range []string{"second", "third"} {
		if err := p.Enqueue(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[int]string{}
	for range 2 {
		select {
		case d := <-out:
			if d.err != nil {
				t.Fatal(d.err)
			}
			seen[d.id] = d.val
		case <-ctx.Done():
			t.Fatalf("only %v were delivered", seen)
		}
	}
	if len(seen) != 2 || seen[1] == "" || seen[2] == "" {
		t.Fatalf("delivered %v, want consumers 1 and 2 served", seen)
	}
	stop()
	if d := <-out; d.id != 3 || d.err == nil {
		t.Fatalf("consumer %d returned %q, %v after its ctx ended", d.id, d.val, d.err)
	}
	// Every consumer left the line.
	r, err := c.Get(ctx, "line/w/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if r.Count != 0 {
		t.Fatalf("%d waiter keys left behind", r.Count)
	}
}

// A consumer that dies while first in line holds the line up until its
// lease ends; then the next one takes the item.
func TestQueueDeadWaiterReleasesTheLineWithItsLease(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := testutil.Server(t)
	c := testutil.Client(t, srv.Endpoints())
	dying, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	tr := newQueueTracer()
	first := NewQueue(dying, "dead")
	first.q.ttl = 2 * time.Second
	first.q.trace = tr.hook(0)
	firstOut := make(chan error, 1)
	go func() {
		_, err := first.Dequeue(ctx)
		firstOut <- err
	}()
	tr.awaitWaits(t, 1)
	second := NewQueue(c, "dead")
	second.q.trace = tr.hook(1)
	secondOut := make(chan dequeued, 1)
	go func() {
		v, err := second.Dequeue(ctx)
		secondOut <- dequeued{1, v, err}
	}()
	tr.awaitWaits(t, 2)

	// The first consumer's process dies: its client goes away without
	// taking its key out of line.
	dying.Close()
	if err := <-firstOut; err == nil {
		t.Fatal("Dequeue on a closed client returned no error")
	}
	if err := NewQueue(c, "dead").Enqueue(ctx, "item"); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-secondOut:
		if d.err != nil || d.val != "item" {
			t.Fatalf("second consumer: %q, %v", d.val, d.err)
		}
	case <-ctx.Done():
		t.Fatal("the item was not delivered after the dead consumer's lease ended")
	}
}

// A waiter whose lease is revoked under it (its key gone) joins the line
// again and still gets the item.
func TestQueueWaiterLeaseRevoked(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := testutil.Server(t)
	c := testutil.Client(t, srv.Endpoints())
	tr := newQueueTracer()
	q := NewQueue(c, "revoked")
	q.q.trace = tr.hook(0)
	out := make(chan dequeued, 1)
	go func() {
		v, err := q.Dequeue(ctx)
		out <- dequeued{0, v, err}
	}()
	tr.awaitWaits(t, 1)
	q.q.lmu.Lock()
	lease := q.q.lease
	q.q.lmu.Unlock()
	if _, err := c.Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if err := NewQueue(c, "revoked").Enqueue(ctx, "item"); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-out:
		if d.err != nil || d.val != "item" {
			t.Fatalf("Dequeue: %q, %v", d.val, d.err)
		}
	case <-ctx.Done():
		t.Fatal("the waiter whose lease was revoked never got the item")
	}
}

// Waiters of a priority queue are woken by arrival keys, which claims
// delete with their items: none is left behind.
func TestPriorityQueueWaitersLeaveNoArrivalKeys(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := testutil.Server(t)
	c := testutil.Client(t, srv.Endpoints())
	tr := newQueueTracer()
	const consumers = 3
	out := make(chan dequeued, consumers)
	for id := range consumers {
		q := NewPriorityQueue(c, "pq")
		q.q.trace = tr.hook(id)
		go func() {
			v, err := q.Dequeue(ctx)
			out <- dequeued{id, v, err}
		}()
		tr.awaitWaits(t, id+1)
	}
	p := NewPriorityQueue(c, "pq")
	for i, pr := range []uint16{7, 3, 5} {
		if err := p.Enqueue(ctx, fmt.Sprint(i), pr); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]bool{}
	for range consumers {
		select {
		case d := <-out:
			if d.err != nil {
				t.Fatal(d.err)
			}
			got[d.val] = true
		case <-ctx.Done():
			t.Fatalf("delivered only %v", got)
		}
	}
	if len(got) != consumers {
		t.Fatalf("delivered %v, want 3 distinct items", got)
	}
	r, err := c.Get(ctx, "pq/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range r.Kvs {
		// Claim records stay until their consumer's lease ends.
		if string(kv.Key) != "pq/seq" && (!strings.HasPrefix(string(kv.Key), "pq/c/") || kv.Lease == 0) {
			t.Errorf("left behind: %s (lease %x)", kv.Key, kv.Lease)
		}
	}
}

// claimFault loses the answer to this client's first claim (a transaction
// that deletes and puts): "after" sends it and then fails; "before" fails
// at once and keeps the request, which the test sends later (a request
// delayed in the network); "revoke" sends it, revokes the consumer's lease
// (taking the claim record with it) and then fails.
type claimFault struct {
	clientv3.KV
	mode   string
	fired  atomic.Bool
	revoke func()
	held   func() (*clientv3.TxnResponse, error)
	logs   bytes.Buffer // the queue's WithQueueLogger
}

func (f *claimFault) Txn(ctx context.Context) clientv3.Txn {
	return &faultTxn{Txn: f.KV.Txn(ctx), f: f}
}

type faultTxn struct {
	clientv3.Txn
	f             *claimFault
	cmps          []clientv3.Cmp
	thens, elses  []clientv3.Op
	deletes, puts bool
}

func (t *faultTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.cmps = append(t.cmps, cs...)
	t.Txn = t.Txn.If(cs...)
	return t
}

func (t *faultTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	for _, op := range ops {
		t.deletes = t.deletes || op.IsDelete()
		t.puts = t.puts || op.IsPut()
	}
	t.thens = append(t.thens, ops...)
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *faultTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.elses = append(t.elses, ops...)
	t.Txn = t.Txn.Else(ops...)
	return t
}

var errAnswerLost = status.Error(codes.Unavailable, "injected: the answer was lost")

func (t *faultTxn) Commit() (*clientv3.TxnResponse, error) {
	if !t.deletes || !t.puts || !t.f.fired.CompareAndSwap(false, true) {
		return t.Txn.Commit()
	}
	switch t.f.mode {
	case "before":
		t.f.held = func() (*clientv3.TxnResponse, error) {
			return t.f.KV.Txn(context.Background()).If(t.cmps...).Then(t.thens...).Else(t.elses...).Commit()
		}
		return nil, errAnswerLost
	case "revoke":
		if _, err := t.Txn.Commit(); err != nil {
			return nil, err
		}
		t.f.revoke()
		return nil, errAnswerLost
	default:
		if _, err := t.Txn.Commit(); err != nil {
			return nil, err
		}
		return nil, errAnswerLost
	}
}

// claimFaultQueue makes a queue "lost" holding one item, and a consumer
// of it whose first claim meets a fault of the given mode.
func claimFaultQueue(t *testing.T, ctx context.Context, mode string) (*Queue, *claimFault, *clientv3.Client) {
	srv := testutil.Server(t)
	admin := testutil.Client(t, srv.Endpoints())
	if err := NewQueue(admin, "lost").Enqueue(ctx, "item"); err != nil {
		t.Fatal(err)
	}
	c := testutil.Client(t, srv.Endpoints())
	f := &claimFault{KV: c.KV, mode: mode}
	c.KV = f
	q := NewQueue(c, "lost", WithQueueLogger(slog.New(slog.NewTextHandler(&f.logs, nil))))
	f.revoke = func() {
		q.q.lmu.Lock()
		lease := q.q.lease
		q.q.lmu.Unlock()
		if _, err := admin.Revoke(ctx, lease); err != nil {
			t.Error(err)
		}
	}
	return q, f, admin
}

// The claim took effect but its answer was lost: the claim record says
// so, and Dequeue returns the item (it used to report ErrClaimUnknown,
// and the item was lost to everyone).
func TestQueueClaimAnswerLostAfterItTookEffect(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	q, f, admin := claimFaultQueue(t, ctx, "after")
	v, err := q.TryDequeue(ctx)
	if err != nil || v != "item" {
		t.Fatalf("TryDequeue: %q, %v; want the item", v, err)
	}
	if !f.fired.Load() {
		t.Fatal("no fault was injected")
	}
	if _, err := NewQueue(admin, "lost").TryDequeue(ctx); !errors.Is(err, ErrQueueEmpty) {
		t.Fatalf("the item is still in the queue: %v", err)
	}
}

// The claim's answer was lost before it took effect, and the request is
// still on its way: Dequeue fails without the item, the request can no
// longer take it when it arrives, and the item stays for other consumers.
func TestQueueClaimDelayedCannotTakeEffectLater(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	q, f, admin := claimFaultQueue(t, ctx, "before")
	v, err := q.TryDequeue(ctx)
	if !errors.Is(err, errAnswerLost) || errors.Is(err, ErrClaimUnknown) {
		t.Fatalf("TryDequeue: %q, %v; want the lost answer's error, the outcome known", v, err)
	}
	late, err := f.held()
	if err != nil {
		t.Fatal(err)
	}
	if late.Succeeded {
		t.Fatal("the delayed claim took the item after Dequeue had reported it not taken")
	}
	if v, err := NewQueue(admin, "lost").TryDequeue(ctx); err != nil || v != "item" {
		t.Fatalf("another consumer: %q, %v; want the item", v, err)
	}
}

// With the claim record gone with its lease, the outcome is unknown, and
// Dequeue says so.
func TestQueueClaimOutcomeUnknownWithoutRecord(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	q, f, _ := claimFaultQueue(t, ctx, "revoke")
	if v, err := q.TryDequeue(ctx); !errors.Is(err, ErrClaimUnknown) {
		t.Fatalf("TryDequeue: %q, %v; want ErrClaimUnknown", v, err)
	}
	if logs := f.logs.String(); !strings.Contains(logs, `level=WARN msg="queue claim outcome unknown" name=lost`) {
		t.Fatalf("WithQueueLogger's logger got %q; want the unknown claim", logs)
	}
}
