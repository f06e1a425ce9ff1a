package concurrency_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/internal/testutil"
)

func dequeueAsync(ctx context.Context, dq func(context.Context) (string, error)) <-chan string {
	ch := make(chan string, 1)
	go func() {
		v, err := dq(ctx)
		if err != nil {
			v = "error: " + err.Error()
		}
		ch <- v
	}()
	return ch
}

func recvString(t *testing.T, ch <-chan string, what string) string {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not return", what)
		return ""
	}
}

func TestQueueFIFO(t *testing.T) {
	e := newEnv(t)
	q := concurrency.NewQueue(e.client(), "fifo")
	for i := range 20 {
		if err := q.Enqueue(e.ctx, fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Another producer handle continues the same sequence.
	if err := concurrency.NewQueue(e.client(), "fifo").Enqueue(e.ctx, "20"); err != nil {
		t.Fatal(err)
	}
	consumer := concurrency.NewQueue(e.client(), "fifo")
	for i := range 21 {
		v, err := consumer.Dequeue(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if v != fmt.Sprint(i) {
			t.Fatalf("item %d is %q", i, v)
		}
	}
	if _, err := consumer.TryDequeue(e.ctx); !errors.Is(err, concurrency.ErrQueueEmpty) {
		t.Fatalf("TryDequeue of an empty queue: %v", err)
	}
}

func TestQueueDequeueWaitsForAnItem(t *testing.T) {
	e := newEnv(t)
	q := concurrency.NewQueue(e.client(), "wait")
	ch := dequeueAsync(e.ctx, q.Dequeue)
	roundTrip(t, e.ctx, e.client())
	select {
	case v := <-ch:
		t.Fatalf("Dequeue of an empty queue returned %q", v)
	default:
	}
	if err := concurrency.NewQueue(e.client(), "wait").Enqueue(e.ctx, "hello"); err != nil {
		t.Fatal(err)
	}
	if v := recvString(t, ch, "Dequeue"); v != "hello" {
		t.Fatalf("got %q", v)
	}
}

func TestPriorityQueueOrder(t *testing.T) {
	e := newEnv(t)
	q := concurrency.NewPriorityQueue(e.client(), "pq")
	items := []struct {
		val string
		pr  uint16
	}{{"c1", 3}, {"a1", 1}, {"b1", 2}, {"a2", 1}, {"z1", 65535}, {"c2", 3}, {"zero", 0}, {"a3", 1}}
	for _, it := range items {
		if err := q.Enqueue(e.ctx, it.val, it.pr); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for range items {
		v, err := q.Dequeue(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, v)
	}
	if want := "[zero a1 a2 a3 b1 c1 c2 z1]"; fmt.Sprint(got) != want {
		t.Fatalf("order %v, want %s", got, want)
	}
	if _, err := q.TryDequeue(e.ctx); !errors.Is(err, concurrency.ErrQueueEmpty) {
		t.Fatalf("TryDequeue of an empty queue: %v", err)
	}
	// A waiting consumer takes a new item of any priority.
	ch := dequeueAsync(e.ctx, q.Dequeue)
	if err := q.Enqueue(e.ctx, "late", 9); err != nil {
		t.Fatal(err)
	}
	if v := recvString(t, ch, "Dequeue"); v != "late" {
		t.Fatalf("got %q", v)
	}
}

// Property: with N producers and M consumers working at once, every item
// is delivered exactly once.
func TestQueueEveryItemExactlyOnce(t *testing.T) {
	e := newEnv(t)
	const producers, consumers, perProducer = 3, 4, 25
	total := producers * perProducer
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	done := make(chan struct{})
	for c := range consumers {
		q := concurrency.NewQueue(e.client(), "once")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				v, err := q.Dequeue(ctx)
				if err != nil {
					if ctx.Err() == nil {
						t.Errorf("consumer %d: %v", c, err)
					}
					return
				}
				mu.Lock()
				seen[v]++
				if len(seen) == total {
					close(done)
				}
				mu.Unlock()
			}
		}()
	}
	var pwg sync.WaitGroup
	for p := range producers {
		q := concurrency.NewQueue(e.client(), "once")
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for i := range perProducer {
				if err := q.Enqueue(e.ctx, fmt.Sprintf("p%d-%d", p, i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	pwg.Wait()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("only %d of %d items delivered", len(seen), total)
	}
	cancel()
	wg.Wait()
	for v, n := range seen {
		if n != 1 {
			t.Errorf("item %s delivered %d times", v, n)
		}
	}
	if len(seen) != total {
		t.Fatalf("%d distinct items, want %d", len(seen), total)
	}
}

// Consumers whose contexts end at random moments, mid-Dequeue, lose no
// item: every item is either returned to exactly one of them or still in
// the queue.
func TestQueueCancelledDequeueLosesNothing(t *testing.T) {
	e := newEnv(t)
	const items, consumers = 60, 4
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	got := make(chan struct{}, items)
	for c := range consumers {
		q := concurrency.NewQueue(e.client(), "cancel")
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(c), 3))
			for {
				select {
				case <-stop:
					return
				default:
				}
				// Most deadlines fall inside Dequeue's requests; one in
				// eight is long enough to finish even on a busy machine,
				// so that the consumers make progress however slow
				// the requests get.
				d := time.Duration(r.IntN(3000)) * time.Microsecond
				if r.IntN(8) == 0 {
					d = 2 * time.Second
				}
				ctx, cancel := context.WithTimeout(e.ctx, d)
				v, err := q.Dequeue(ctx)
				cancel()
				switch {
				case err == nil:
					mu.Lock()
					seen[v]++
					mu.Unlock()
					got <- struct{}{}
				case errors.Is(err, context.DeadlineExceeded):
				default:
					t.Errorf("consumer %d: %v", c, err)
					return
				}
			}
		}()
	}
	p := concurrency.NewQueue(e.client(), "cancel")
	for i := range items {
		if err := p.Enqueue(e.ctx, fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Let the consumers take at least half, then drain what is left.
	for range items / 2 {
		select {
		case <-got:
		case <-time.After(30 * time.Second):
			t.Fatal("consumers make no progress")
		}
	}
	close(stop)
	wg.Wait()
	drain := concurrency.NewQueue(e.client(), "cancel")
	for {
		v, err := drain.TryDequeue(e.ctx)
		if errors.Is(err, concurrency.ErrQueueEmpty) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seen[v]++
	}
	for i := range items {
		if n := seen[fmt.Sprint(i)]; n != 1 {
			t.Errorf("item %d delivered %d times", i, n)
		}
	}
	if len(seen) != items {
		t.Fatalf("%d distinct items, want %d", len(seen), items)
	}
}

// The queue's analogue of a session loss: the consumer's client closes
// while it waits. Dequeue reports it, and an item enqueued afterwards is
// still there for others.
func TestQueueConsumerClientClosed(t *testing.T) {
	e := newEnv(t)
	c, err := clientv3.New(clientv3.Config{Endpoints: e.eps, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	ch := dequeueAsync(e.ctx, concurrency.NewQueue(c, "closed").Dequeue)
	roundTrip(t, e.ctx, e.client())
	c.Close()
	if v := recvString(t, ch, "Dequeue on a closed client"); len(v) < 6 || v[:6] != "error:" {
		t.Fatalf("Dequeue on a closed client returned %q, want an error", v)
	}
	q := concurrency.NewQueue(e.client(), "closed")
	if err := q.Enqueue(e.ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	if v, err := q.TryDequeue(e.ctx); err != nil || v != "kept" {
		t.Fatalf("TryDequeue: %q %v", v, err)
	}
}

// Deleting the counter key does not break the order: producers continue
// after the highest item present.
func TestQueueCounterDeleted(t *testing.T) {
	e := newEnv(t)
	for _, prio := range []bool{false, true} {
		name := fmt.Sprintf("ctr-%v", prio)
		enq := func(q any, v string) error {
			if pq, ok := q.(*concurrency.PriorityQueue); ok {
				return pq.Enqueue(e.ctx, v, 5)
			}
			return q.(*concurrency.Queue).Enqueue(e.ctx, v)
		}
		deq := func(q any) (string, error) {
			if pq, ok := q.(*concurrency.PriorityQueue); ok {
				return pq.Dequeue(e.ctx)
			}
			return q.(*concurrency.Queue).Dequeue(e.ctx)
		}
		var q any = concurrency.NewQueue(e.client(), name)
		if prio {
			q = concurrency.NewPriorityQueue(e.client(), name)
		}
		for _, v := range []string{"a", "b"} {
			if err := enq(q, v); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := e.client().Delete(e.ctx, name+"/seq"); err != nil {
			t.Fatal(err)
		}
		var fresh any = concurrency.NewQueue(e.client(), name)
		if prio {
			fresh = concurrency.NewPriorityQueue(e.client(), name)
		}
		if err := enq(fresh, "c"); err != nil {
			t.Fatal(err)
		}
		if err := enq(q, "d"); err != nil {
			t.Fatal(err)
		}
		var got []string
		for range 4 {
			v, err := deq(q)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, v)
		}
		if fmt.Sprint(got) != "[a b c d]" {
			t.Fatalf("priority %v: order %v after the counter was deleted", prio, got)
		}
	}
}

// Keys sharing the queue's prefix are not items.
func TestQueueIgnoresForeignKeys(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	for _, k := range []string{"fq/0abc", "fq/1/2", "fq/zzz", "fq/9999999999999999999999"} {
		if _, err := admin.Put(e.ctx, k, "foreign"); err != nil {
			t.Fatal(err)
		}
	}
	q := concurrency.NewQueue(e.client(), "fq")
	if _, err := q.TryDequeue(e.ctx); !errors.Is(err, concurrency.ErrQueueEmpty) {
		t.Fatalf("TryDequeue with only foreign keys: %v", err)
	}
	if err := q.Enqueue(e.ctx, "mine"); err != nil {
		t.Fatal(err)
	}
	if v, err := q.Dequeue(e.ctx); err != nil || v != "mine" {
		t.Fatalf("Dequeue: %q %v", v, err)
	}
}

func TestQueueBadInput(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct {
		q    *concurrency.Queue
		pq   *concurrency.PriorityQueue
		want error
	}{
		{concurrency.NewQueue(nil, "q"), concurrency.NewPriorityQueue(nil, "q"), concurrency.ErrNilClient},
		{concurrency.NewQueue(e.client(), ""), concurrency.NewPriorityQueue(e.client(), ""), concurrency.ErrEmptyPrefix},
	} {
		if err := c.q.Enqueue(e.ctx, "x"); !errors.Is(err, c.want) {
			t.Errorf("Enqueue: %v", err)
		}
		if _, err := c.q.Dequeue(e.ctx); !errors.Is(err, c.want) {
			t.Errorf("Dequeue: %v", err)
		}
		if _, err := c.q.TryDequeue(e.ctx); !errors.Is(err, c.want) {
			t.Errorf("TryDequeue: %v", err)
		}
		if err := c.pq.Enqueue(e.ctx, "x", 1); !errors.Is(err, c.want) {
			t.Errorf("priority Enqueue: %v", err)
		}
		if _, err := c.pq.Dequeue(e.ctx); !errors.Is(err, c.want) {
			t.Errorf("priority Dequeue: %v", err)
		}
		if _, err := c.pq.TryDequeue(e.ctx); !errors.Is(err, c.want) {
			t.Errorf("priority TryDequeue: %v", err)
		}
	}
	assertEmpty(t, e)
}

// On a 3-member cluster, producers and consumers keep going while the raft
// leader is stopped and restarted. No item is delivered twice; every item
// whose Enqueue succeeded is delivered or still queued, except at most one
// per Dequeue that reported ErrClaimUnknown.
func TestQueueClusterMemberRestart(t *testing.T) {
	cl := testutil.Cluster(t)
	ctx := testCtx(t)
	const producers, consumers, per = 2, 3, 30
	var mu sync.Mutex
	enqueued := map[string]bool{} // value -> Enqueue returned nil
	delivered := map[string]int{}
	unknownClaims := 0
	prog := make(progress, 4096) // room for every item: none is dropped
	cctx, stopConsumers := context.WithCancel(ctx)
	defer stopConsumers()
	var cwg sync.WaitGroup
	for range consumers {
		q := concurrency.NewQueue(testutil.Client(t, cl.Endpoints()), "cq")
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			for cctx.Err() == nil {
				v, err := q.Dequeue(cctx)
				mu.Lock()
				switch {
				case err == nil:
					delivered[v]++
				case errors.Is(err, concurrency.ErrClaimUnknown):
					unknownClaims++
				}
				mu.Unlock()
				if err == nil {
					prog.done()
				}
			}
		}()
	}
	var pwg sync.WaitGroup
	for p := range producers {
		q := concurrency.NewQueue(testutil.Client(t, cl.Endpoints()), "cq")
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for i := range per {
				for attempt := 0; ctx.Err() == nil; attempt++ {
					v := fmt.Sprintf("p%d-%d-a%d", p, i, attempt)
					ectx, cancel := context.WithTimeout(ctx, 3*time.Second)
					err := q.Enqueue(ectx, v)
					cancel()
					mu.Lock()
					enqueued[v] = err == nil
					mu.Unlock()
					if err == nil {
						break
					}
				}
			}
		}()
	}
	prog.await(t, 10, "before the outage")
	lead := stopLeader(t, cl)
	prog.await(t, 10, "with the leader stopped")
	if err := cl.Members[lead].Restart(); err != nil {
		t.Fatal(err)
	}
	pwg.Wait()
	// Wait until every acknowledged item is delivered, or as many are
	// missing as claims were unknown.
	for {
		mu.Lock()
		missing := 0
		for v, ok := range enqueued {
			if ok && delivered[v] == 0 {
				missing++
			}
		}
		done := missing <= unknownClaims
		mu.Unlock()
		if done {
			break
		}
		prog.await(t, 1, "while items are missing")
	}
	stopConsumers()
	cwg.Wait()
	drain := concurrency.NewQueue(testutil.Client(t, cl.Endpoints()), "cq")
	for {
		v, err := drain.TryDequeue(ctx)
		if errors.Is(err, concurrency.ErrQueueEmpty) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		delivered[v]++
	}
	missing := 0
	for v, n := range delivered {
		if n > 1 {
			t.Errorf("%s delivered %d times", v, n)
		}
		if _, made := enqueued[v]; !made {
			t.Errorf("%s delivered but never enqueued", v)
		}
	}
	for v, ok := range enqueued {
		if ok && delivered[v] == 0 {
			missing++
		}
	}
	if missing > unknownClaims {
		t.Fatalf("%d acknowledged items lost, only %d claims were unknown", missing, unknownClaims)
	}
	t.Logf("%d items enqueued (%d acknowledged), %d unknown claims, %d items lost", len(enqueued), producers*per, unknownClaims, missing)
}

// etcd #6278/#16156 family: items of "jobs2" are not items of "jobs".
func TestQueuePrefixSibling(t *testing.T) {
	e := newEnv(t)
	if err := concurrency.NewQueue(e.client(), "jobs2").Enqueue(e.ctx, "other"); err != nil {
		t.Fatal(err)
	}
	q := concurrency.NewQueue(e.client(), "jobs")
	if v, err := q.TryDequeue(e.ctx); !errors.Is(err, concurrency.ErrQueueEmpty) {
		t.Fatalf("TryDequeue on jobs took %q, %v", v, err)
	}
}
