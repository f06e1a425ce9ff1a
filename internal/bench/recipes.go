package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	etcdc "go.etcd.io/etcd/client/v3/concurrency"
	recipe "go.etcd.io/etcd/client/v3/experimental/recipes"

	"github.com/batonhq/baton/concurrency"
)

// runRecipes compares baton's RWMutex, Queue, Barrier and DoubleBarrier
// with etcd's experimental recipes, and measures baton's Semaphore, on one
// server in the same run.
func runRecipes(ctx context.Context, o Options) ([]Row, error) {
	e, err := startEtcd()
	if err != nil {
		return nil, err
	}
	defer e.close()
	dur, items, barriers, rounds := 3*time.Second, 2000, 30, 20
	if o.Quick {
		dur, items, barriers, rounds = time.Second, 300, 8, 5
	}
	type pair struct {
		workload, unit, peer, note string
		higher                     bool
		baton, etcd                func() (float64, error)
	}
	pairs := []pair{
		{
			workload: "RWMutex, 8 clients, 90% reads", unit: "ops/s", higher: true, peer: "etcd recipes",
			baton: func() (float64, error) { return rwMix(ctx, e, batonRW, 8, dur) },
			etcd:  func() (float64, error) { return rwMix(ctx, e, etcdRW, 8, dur) },
		},
		{
			workload: "Queue, 1 producer, 4 consumers", unit: "items/s", higher: true, peer: "etcd recipes",
			baton: func() (float64, error) { return queueRate(ctx, e, batonQueue, 4, items) },
			etcd:  func() (float64, error) { return queueRate(ctx, e, etcdQueue, 4, items) },
			note:  "bound by the producer's one durable write per item on both sides",
		},
		{
			workload: "Queue, 1 producer, no consumers", unit: "items/s", higher: true, peer: "etcd recipes",
			baton: func() (float64, error) { return queueProduce(ctx, e, batonQueue, items) },
			etcd:  func() (float64, error) { return queueProduce(ctx, e, etcdQueue, items) },
			note:  "the ceiling of the row above: no consumer design delivers faster than one producer enqueues",
		},
		{
			workload: fmt.Sprintf("Queue, drain %d queued items, 4 consumers", items), unit: "items/s", higher: true, peer: "etcd recipes",
			baton: func() (float64, error) { return queueDrain(ctx, e, batonQueue, 4, items) },
			etcd:  func() (float64, error) { return queueDrain(ctx, e, etcdQueue, 4, items) },
		},
		{
			workload: "Semaphore acquire+release, limit 4, 16 clients", unit: "ops/s", higher: true,
			peer: "etcd Mutex x4 (slots)",
			note: "etcd has no semaphore; the peer is the usual stand-in, 4 etcd Mutexes used as slots " +
				"(client i locks slot i mod 4): unweighted and not FIFO across slots",
			baton: func() (float64, error) { return semLoop(ctx, e, batonSem, 16, 4, dur) },
			etcd:  func() (float64, error) { return semLoop(ctx, e, etcdSlots, 16, 4, dur) },
		},
		{
			workload: "Barrier Release -> 8 waiters return", unit: "ms p50", peer: "etcd recipes",
			baton: func() (float64, error) { return barrierRelease(ctx, e, batonBarrier, 8, barriers) },
			etcd:  func() (float64, error) { return barrierRelease(ctx, e, etcdBarrier, 8, barriers) },
			note: "one watch event either way: etcd's Wait already watches from rev+1, so on a quiet server it is " +
				"as fast; baton's gain here is correctness (#16156, #16223, compaction)",
		},
		{
			workload: "DoubleBarrier Enter+Leave round, 8 participants", unit: "ms p50", peer: "etcd recipes",
			baton: func() (float64, error) { return doubleBarrierRound(ctx, e, batonDB, 8, rounds) },
			etcd:  func() (float64, error) { return doubleBarrierRound(ctx, e, etcdDB, 8, rounds) },
		},
	}
	var rows []Row
	for _, p := range pairs {
		row := Row{Workload: p.workload, Unit: p.unit, HigherIsBetter: p.higher, PeerName: p.peer, Note: p.note}
		o.logf("  %s: baton", p.workload)
		if row.Baton, err = p.baton(); err != nil {
			return nil, fmt.Errorf("%s (baton): %w", p.workload, err)
		}
		o.logf("  %s: %s", p.workload, p.peer)
		if row.Peer, err = p.etcd(); err != nil {
			return nil, fmt.Errorf("%s (%s): %w", p.workload, p.peer, err)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// recipeClients dials k clients, each with its own connection and a
// session of each implementation on demand.
func recipeClients(e *etcdEnv, k int) ([]*clientv3.Client, error) {
	cs := make([]*clientv3.Client, k)
	for i := range cs {
		c, err := e.client()
		if err != nil {
			return nil, err
		}
		cs[i] = c
	}
	return cs, nil
}

// firstErr keeps the first error of many goroutines.
type firstErr struct {
	mu  sync.Mutex
	err error
}

func (f *firstErr) set(err error) {
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.mu.Unlock()
}

func (f *firstErr) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// rwLock is what the RWMutex workload needs from either implementation.
type rwLock interface {
	rlock(ctx context.Context) error
	runlock(ctx context.Context) error
	lock(ctx context.Context) error
	unlock(ctx context.Context) error
}

type rwImpl func(c *clientv3.Client, pfx string) (rwLock, func(), error)

type batonRWLock struct{ m *concurrency.RWMutex }

func (l batonRWLock) rlock(ctx context.Context) error   { return l.m.RLock(ctx) }
func (l batonRWLock) runlock(ctx context.Context) error { return l.m.RUnlock(ctx) }
func (l batonRWLock) lock(ctx context.Context) error    { return l.m.Lock(ctx) }
func (l batonRWLock) unlock(ctx context.Context) error  { return l.m.Unlock(ctx) }

func batonRW(c *clientv3.Client, pfx string) (rwLock, func(), error) {
	s, err := concurrency.NewSession(c, concurrency.WithTTL(30))
	if err != nil {
		return nil, nil, err
	}
	return batonRWLock{concurrency.NewRWMutex(s, pfx)}, func() { s.Close() }, nil
}

// etcdRWLock adapts etcd's recipe, which takes no context.
type etcdRWLock struct{ m *recipe.RWMutex }

func (l etcdRWLock) rlock(context.Context) error   { return l.m.RLock() }
func (l etcdRWLock) runlock(context.Context) error { return l.m.RUnlock() }
func (l etcdRWLock) lock(context.Context) error    { return l.m.Lock() }
func (l etcdRWLock) unlock(context.Context) error  { return l.m.Unlock() }

func etcdRW(c *clientv3.Client, pfx string) (rwLock, func(), error) {
	s, err := etcdc.NewSession(c, etcdc.WithTTL(30))
	if err != nil {
		return nil, nil, err
	}
	return etcdRWLock{recipe.NewRWMutex(s, pfx)}, func() { s.Close() }, nil
}

// rwMix runs k clients that each loop for d over read locks (90%) and
// write locks (10%) on one RWMutex, and returns operations per second. It
// checks that no writer overlaps anyone.
func rwMix(ctx context.Context, e *etcdEnv, impl rwImpl, k int, d time.Duration) (float64, error) {
	pfx := uniquePrefix("rwmutex")
	cs, err := recipeClients(e, k)
	if err != nil {
		return 0, err
	}
	locks := make([]rwLock, k)
	for i := range locks {
		l, closeFn, err := impl(cs[i], pfx)
		if err != nil {
			return 0, err
		}
		defer closeFn()
		locks[i] = l
	}
	var (
		readers, writers atomic.Int32
		ops              atomic.Int64
		fe               firstErr
		wg               sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for i, l := range locks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 90))
			for time.Now().Before(deadline) && fe.get() == nil {
				if r.IntN(10) == 0 {
					if err := l.lock(ctx); err != nil {
						fe.set(err)
						return
					}
					if writers.Add(1) != 1 || readers.Load() != 0 {
						fe.set(errors.New("a writer overlapped another holder"))
					}
					writers.Add(-1)
					if err := l.unlock(ctx); err != nil {
						fe.set(err)
						return
					}
				} else {
					if err := l.rlock(ctx); err != nil {
						fe.set(err)
						return
					}
					readers.Add(1)
					if writers.Load() != 0 {
						fe.set(errors.New("a reader overlapped a writer"))
					}
					readers.Add(-1)
					if err := l.runlock(ctx); err != nil {
						fe.set(err)
						return
					}
				}
				ops.Add(1)
			}
		}()
	}
	wg.Wait()
	if err := fe.get(); err != nil {
		return 0, err
	}
	return float64(ops.Load()) / time.Since(start).Seconds(), nil
}

// queueImpl makes a producer/consumer handle of one implementation.
type queueImpl func(c *clientv3.Client, key string) (enqueue func(ctx context.Context, v string) error, dequeue func(ctx context.Context) (string, error))

func batonQueue(c *clientv3.Client, key string) (func(context.Context, string) error, func(context.Context) (string, error)) {
	q := concurrency.NewQueue(c, key)
	return q.Enqueue, q.Dequeue
}

func etcdQueue(c *clientv3.Client, key string) (func(context.Context, string) error, func(context.Context) (string, error)) {
	q := recipe.NewQueue(c, key)
	return func(_ context.Context, v string) error { return q.Enqueue(v) },
		func(context.Context) (string, error) { return q.Dequeue() }
}

// queueRate has one producer enqueue n items as fast as it can while k
// consumers dequeue them, and returns items per second from the start
// until the last item was taken. The producer then enqueues one "stop"
// item per consumer, since etcd's Dequeue cannot be cancelled.
func queueRate(ctx context.Context, e *etcdEnv, impl queueImpl, k, n int) (float64, error) {
	key := uniquePrefix("queue")
	cs, err := recipeClients(e, k+1)
	if err != nil {
		return 0, err
	}
	enqueue, _ := impl(cs[0], key)
	var (
		taken atomic.Int64
		last  atomic.Int64 // unix nanos of the n-th item taken
		fe    firstErr
		wg    sync.WaitGroup
		seen  sync.Map
	)
	start := time.Now()
	for i := range k {
		requeue, dequeue := impl(cs[i+1], key)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				v, err := dequeue(ctx)
				if err != nil {
					fe.set(err)
					return
				}
				if v == "stop" {
					// baton's consumers spread their claims over the oldest
					// items once contended, so a stop marker can be taken
					// while items remain: put it back until all are taken.
					if taken.Load() == int64(n) {
						return
					}
					if err := requeue(ctx, "stop"); err != nil {
						fe.set(err)
						return
					}
					continue
				}
				if _, dup := seen.LoadOrStore(v, true); dup {
					fe.set(fmt.Errorf("item %s delivered twice", v))
				}
				if taken.Add(1) == int64(n) {
					last.Store(time.Now().UnixNano())
				}
			}
		}()
	}
	for i := range n {
		if err := enqueue(ctx, fmt.Sprint(i)); err != nil {
			return 0, err
		}
	}
	for range k {
		if err := enqueue(ctx, "stop"); err != nil {
			return 0, err
		}
	}
	wg.Wait()
	if err := fe.get(); err != nil {
		return 0, err
	}
	if taken.Load() != int64(n) {
		return 0, fmt.Errorf("%d of %d items taken", taken.Load(), n)
	}
	return float64(n) / time.Unix(0, last.Load()).Sub(start).Seconds(), nil
}

// queueProduce has one producer enqueue n items with nobody consuming, and
// returns items per second.
func queueProduce(ctx context.Context, e *etcdEnv, impl queueImpl, n int) (float64, error) {
	cs, err := recipeClients(e, 1)
	if err != nil {
		return 0, err
	}
	enqueue, _ := impl(cs[0], uniquePrefix("produce"))
	start := time.Now()
	for i := range n {
		if err := enqueue(ctx, fmt.Sprint(i)); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// queueDrain fills a queue with n items (4 producers, not timed), then has
// k consumers take them all, and returns items per second.
func queueDrain(ctx context.Context, e *etcdEnv, impl queueImpl, k, n int) (float64, error) {
	key := uniquePrefix("drain")
	cs, err := recipeClients(e, k)
	if err != nil {
		return 0, err
	}
	var fill sync.WaitGroup
	var fe firstErr
	for p := range k {
		enqueue, _ := impl(cs[p], key)
		fill.Add(1)
		go func() {
			defer fill.Done()
			for i := p; i < n; i += k {
				if err := enqueue(ctx, fmt.Sprint(i)); err != nil {
					fe.set(err)
					return
				}
			}
		}()
	}
	fill.Wait()
	if err := fe.get(); err != nil {
		return 0, err
	}
	enqueue, _ := impl(cs[0], key)
	for range k {
		if err := enqueue(ctx, "stop"); err != nil {
			return 0, err
		}
	}
	var (
		taken atomic.Int64
		last  atomic.Int64
		wg    sync.WaitGroup
	)
	start := time.Now()
	for i := range k {
		requeue, dequeue := impl(cs[i], key)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				v, err := dequeue(ctx)
				if err != nil {
					fe.set(err)
					return
				}
				if v == "stop" {
					// baton's consumers spread their claims over the oldest
					// items once contended, so a stop marker can be taken
					// while items remain: put it back until all are taken.
					if taken.Load() == int64(n) {
						return
					}
					if err := requeue(ctx, "stop"); err != nil {
						fe.set(err)
						return
					}
					continue
				}
				if taken.Add(1) == int64(n) {
					last.Store(time.Now().UnixNano())
				}
			}
		}()
	}
	wg.Wait()
	if err := fe.get(); err != nil {
		return 0, err
	}
	if taken.Load() != int64(n) {
		return 0, fmt.Errorf("%d of %d items taken", taken.Load(), n)
	}
	return float64(n) / time.Unix(0, last.Load()).Sub(start).Seconds(), nil
}

// semImpl makes one client's counting lock: baton's Semaphore, or one of
// limit etcd Mutexes used as slots.
type semImpl func(c *clientv3.Client, pfx string, i, limit int) (acquire, release func(ctx context.Context) error, closeFn func(), err error)

func batonSem(c *clientv3.Client, pfx string, _, limit int) (func(context.Context) error, func(context.Context) error, func(), error) {
	s, err := concurrency.NewSession(c, concurrency.WithTTL(30))
	if err != nil {
		return nil, nil, nil, err
	}
	sem := concurrency.NewSemaphore(s, pfx, int64(limit))
	return func(ctx context.Context) error { return sem.Acquire(ctx, 1) },
		func(ctx context.Context) error { return sem.Release(ctx, 1) },
		func() { s.Close() }, nil
}

func etcdSlots(c *clientv3.Client, pfx string, i, limit int) (func(context.Context) error, func(context.Context) error, func(), error) {
	s, err := etcdc.NewSession(c, etcdc.WithTTL(30))
	if err != nil {
		return nil, nil, nil, err
	}
	m := etcdc.NewMutex(s, fmt.Sprintf("%s/slot-%d", pfx, i%limit))
	return m.Lock, m.Unlock, func() { s.Close() }, nil
}

// semLoop runs k clients that acquire and release one permit of limit in a
// loop for d, and returns acquisitions per second. It checks that no more
// than limit are held at once.
func semLoop(ctx context.Context, e *etcdEnv, impl semImpl, k, limit int, d time.Duration) (float64, error) {
	pfx := uniquePrefix("semaphore")
	cs, err := recipeClients(e, k)
	if err != nil {
		return 0, err
	}
	type client struct{ acquire, release func(context.Context) error }
	clients := make([]client, k)
	for i := range clients {
		a, r, closeFn, err := impl(cs[i], pfx, i, limit)
		if err != nil {
			return 0, err
		}
		defer closeFn()
		clients[i] = client{a, r}
	}
	var (
		out, ops atomic.Int64
		fe       firstErr
		wg       sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for _, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && fe.get() == nil {
				if err := cl.acquire(ctx); err != nil {
					fe.set(err)
					return
				}
				if out.Add(1) > int64(limit) {
					fe.set(fmt.Errorf("more than %d permits out", limit))
				}
				out.Add(-1)
				ops.Add(1)
				if err := cl.release(ctx); err != nil {
					fe.set(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := fe.get(); err != nil {
		return 0, err
	}
	return float64(ops.Load()) / time.Since(start).Seconds(), nil
}

// barrierImpl makes a barrier handle of one implementation.
type barrierImpl func(c *clientv3.Client, key string) (hold, release, wait func(ctx context.Context) error)

func batonBarrier(c *clientv3.Client, key string) (func(context.Context) error, func(context.Context) error, func(context.Context) error) {
	b := concurrency.NewBarrier(c, key)
	return b.Hold, b.Release, b.Wait
}

func etcdBarrier(c *clientv3.Client, key string) (func(context.Context) error, func(context.Context) error, func(context.Context) error) {
	b := recipe.NewBarrier(c, key)
	return func(context.Context) error { return b.Hold() },
		func(context.Context) error { return b.Release() },
		func(context.Context) error { return b.Wait() }
}

// barrierRelease holds a barrier, lets k waiters (each on its own client)
// reach Wait, releases it, and measures until the last waiter returns;
// r times, p50 in ms.
func barrierRelease(ctx context.Context, e *etcdEnv, impl barrierImpl, k, r int) (float64, error) {
	cs, err := recipeClients(e, k+1)
	if err != nil {
		return 0, err
	}
	ds := make([]time.Duration, 0, r)
	for round := range r {
		key := uniquePrefix("barrier")
		hold, release, _ := impl(cs[0], key)
		if err := hold(ctx); err != nil {
			return 0, err
		}
		errs := make(chan error, k)
		for i := range k {
			_, _, wait := impl(cs[i+1], key)
			go func() { errs <- wait(ctx) }()
		}
		// Give every waiter time to reach its watch; neither
		// implementation can tell when it has.
		time.Sleep(50 * time.Millisecond)
		t0 := time.Now()
		if err := release(ctx); err != nil {
			return 0, err
		}
		for range k {
			if err := <-errs; err != nil {
				return 0, fmt.Errorf("round %d: %w", round, err)
			}
		}
		ds = append(ds, time.Since(t0))
	}
	return Percentile(ds, 50), nil
}

// dbImpl makes a double barrier participant of one implementation.
type dbImpl func(c *clientv3.Client, key string, count int) (enter, leave func(ctx context.Context) error, closeFn func(), err error)

func batonDB(c *clientv3.Client, key string, count int) (func(context.Context) error, func(context.Context) error, func(), error) {
	s, err := concurrency.NewSession(c, concurrency.WithTTL(30))
	if err != nil {
		return nil, nil, nil, err
	}
	b := concurrency.NewDoubleBarrier(s, key, count)
	return b.Enter, b.Leave, func() { s.Close() }, nil
}

func etcdDB(c *clientv3.Client, key string, count int) (func(context.Context) error, func(context.Context) error, func(), error) {
	s, err := etcdc.NewSession(c, etcdc.WithTTL(30))
	if err != nil {
		return nil, nil, nil, err
	}
	b := recipe.NewDoubleBarrier(s, key, count)
	return func(context.Context) error { return b.Enter() },
		func(context.Context) error { return b.Leave() },
		func() { s.Close() }, nil
}

// doubleBarrierRound has k participants (each on its own client) Enter and
// then Leave a double barrier together, r times, and returns the p50 of a
// round in ms.
func doubleBarrierRound(ctx context.Context, e *etcdEnv, impl dbImpl, k, r int) (float64, error) {
	cs, err := recipeClients(e, k)
	if err != nil {
		return 0, err
	}
	ds := make([]time.Duration, 0, r)
	for round := range r {
		key := uniquePrefix("doublebarrier")
		type part struct{ enter, leave func(context.Context) error }
		parts := make([]part, k)
		var closers []func()
		closeAll := func() {
			for _, f := range closers {
				f()
			}
		}
		for i := range parts {
			en, lv, closeFn, err := impl(cs[i], key, k)
			if err != nil {
				closeAll()
				return 0, err
			}
			closers = append(closers, closeFn)
			parts[i] = part{en, lv}
		}
		var fe firstErr
		var wg sync.WaitGroup
		t0 := time.Now()
		for _, p := range parts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := p.enter(ctx); err != nil {
					fe.set(err)
					return
				}
				if err := p.leave(ctx); err != nil {
					fe.set(err)
				}
			}()
		}
		wg.Wait()
		d := time.Since(t0)
		closeAll()
		if err := fe.get(); err != nil {
			return 0, fmt.Errorf("round %d: %w", round, err)
		}
		ds = append(ds, d)
	}
	return Percentile(ds, 50), nil
}
