package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	etcdc "go.etcd.io/etcd/client/v3/concurrency"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/metrics"
)

// locker is what the mutex workloads need from either implementation.
type locker interface {
	Lock(ctx context.Context) error
	Unlock(ctx context.Context) error
}

// candidate is what the election workload needs from either one.
type candidate interface {
	Campaign(ctx context.Context, val string) error
	Resign(ctx context.Context) error
}

// impl makes sessions, mutexes and elections of one implementation.
type impl struct {
	name     string
	session  func(c *clientv3.Client) (closer, error)
	mutex    func(s closer, pfx string) locker
	election func(s closer, pfx string) candidate
}

type closer interface{ Close() error }

var batonImpl = impl{
	name: "baton",
	session: func(c *clientv3.Client) (closer, error) {
		return concurrency.NewSession(c, concurrency.WithTTL(30))
	},
	mutex: func(s closer, pfx string) locker { return concurrency.NewMutex(s.(*concurrency.Session), pfx) },
	election: func(s closer, pfx string) candidate {
		return concurrency.NewElection(s.(*concurrency.Session), pfx)
	},
}

// batonObservedImpl is baton with metrics (a registry of its own) and a
// JSON logger that discards its output, to measure what they cost.
var batonObservedImpl = impl{
	name: "baton+metrics",
	session: func(c *clientv3.Client) (closer, error) {
		m := metrics.New(prometheus.NewRegistry())
		l := slog.New(slog.NewJSONHandler(io.Discard, nil))
		return concurrency.NewSession(c, concurrency.WithTTL(30), concurrency.WithMetrics(m), concurrency.WithLogger(l))
	},
	mutex:    batonImpl.mutex,
	election: batonImpl.election,
}

var etcdImpl = impl{
	name: "etcd",
	session: func(c *clientv3.Client) (closer, error) {
		return etcdc.NewSession(c, etcdc.WithTTL(30))
	},
	mutex: func(s closer, pfx string) locker { return etcdc.NewMutex(s.(*etcdc.Session), pfx) },
	election: func(s closer, pfx string) candidate {
		return etcdc.NewElection(s.(*etcdc.Session), pfx)
	},
}

// runCore runs the Session/Mutex/Election workloads, baton and etcd's
// package on one server.
func runCore(ctx context.Context, o Options) ([]Row, error) {
	e, err := startEtcd()
	if err != nil {
		return nil, err
	}
	defer e.close()
	dur, floorN, elections, uncontended, drain := 3*time.Second, 500, 50, 300, 1000
	if o.Quick {
		dur, floorN, elections, uncontended, drain = time.Second, 100, 15, 100, 200
	}
	rows, err := floorRows(ctx, e, floorN)
	if err != nil {
		return nil, err
	}
	// Uncontended latency is close to the floor for both, so the two are
	// measured interleaved, one operation each in turn, to share whatever
	// the machine is doing.
	ub, ue, err := uncontendedLock(ctx, e, uncontended, batonImpl, etcdImpl)
	if err != nil {
		return nil, fmt.Errorf("uncontended Lock+Unlock: %w", err)
	}
	rows = append(rows, Row{Workload: "uncontended Lock+Unlock", Unit: "ms p50", Baton: ub, Peer: ue,
		PeerName: "etcd concurrency", Note: "measured interleaved, one operation of each in turn"})
	// The cost of metrics and logs: baton with both against baton without,
	// interleaved the same way.
	mo, mf, err := uncontendedLock(ctx, e, uncontended, batonObservedImpl, batonImpl)
	if err != nil {
		return nil, fmt.Errorf("uncontended Lock+Unlock with metrics: %w", err)
	}
	rows = append(rows, Row{Workload: "uncontended Lock+Unlock, metrics and logger on", Unit: "ms p50", Baton: mo, Peer: mf,
		PeerName: "baton, metrics off", Note: "measured interleaved; the overhead should be within noise"})
	type pair struct {
		workload, unit string
		higher         bool
		run            func(impl) (float64, error)
	}
	pairs := []pair{
		{"contended Lock+Unlock, 2 clients", "handoffs/s", true, func(im impl) (float64, error) {
			return contendedLock(ctx, e, im, 2, dur)
		}},
		{"contended Lock+Unlock, 8 clients", "handoffs/s", true, func(im impl) (float64, error) {
			return contendedLock(ctx, e, im, 8, dur)
		}},
		{"Resign -> next Campaign returns", "ms p50", false, func(im impl) (float64, error) {
			return electionHandoff(ctx, e, im, elections)
		}},
		{fmt.Sprintf("drain %d queued waiters", drain), "s", false, func(im impl) (float64, error) {
			return drainWaiters(ctx, e, im, drain)
		}},
	}
	for _, p := range pairs {
		row := Row{Workload: p.workload, Unit: p.unit, HigherIsBetter: p.higher, PeerName: "etcd concurrency"}
		for _, im := range []impl{batonImpl, etcdImpl} {
			o.logf("  %s: %s", p.workload, im.name)
			v, err := p.run(im)
			if err != nil {
				return nil, fmt.Errorf("%s (%s): %w", p.workload, im.name, err)
			}
			if im.name == "baton" {
				row.Baton = v
			} else {
				row.Peer = v
			}
		}
		rows = append(rows, row)
	}
	return rows, nil
}

var runID atomic.Int64

func uniquePrefix(what string) string {
	return fmt.Sprintf("bench/%s/%d", what, runID.Add(1))
}

// uncontendedLock measures Lock+Unlock on an uncontended mutex for a and
// b, interleaved, and returns the p50 of each in ms.
func uncontendedLock(ctx context.Context, e *etcdEnv, n int, a, b impl) (aP50, bP50 float64, err error) {
	var ms [2]locker
	for i, im := range []impl{a, b} {
		c, err := e.client()
		if err != nil {
			return 0, 0, err
		}
		s, err := im.session(c)
		if err != nil {
			return 0, 0, err
		}
		defer s.Close()
		ms[i] = im.mutex(s, uniquePrefix("uncontended"))
	}
	var ds [2][]time.Duration
	for range n {
		for i, m := range ms {
			t0 := time.Now()
			if err := m.Lock(ctx); err != nil {
				return 0, 0, err
			}
			if err := m.Unlock(ctx); err != nil {
				return 0, 0, err
			}
			ds[i] = append(ds[i], time.Since(t0))
		}
	}
	return Percentile(ds[0], 50), Percentile(ds[1], 50), nil
}

// contendedLock runs k clients, each with its own connection and session,
// that Lock and Unlock one mutex in a loop for d, and returns handoffs/s.
// It also checks that no two hold the lock at once.
func contendedLock(ctx context.Context, e *etcdEnv, im impl, k int, d time.Duration) (float64, error) {
	pfx := uniquePrefix("contended")
	var (
		holders atomic.Int32
		count   atomic.Int64
		wg      sync.WaitGroup
		errMu   sync.Mutex
		firstE  error
	)
	fail := func(err error) {
		errMu.Lock()
		if firstE == nil {
			firstE = err
		}
		errMu.Unlock()
	}
	sessions := make([]closer, k)
	for i := range k {
		c, err := e.client()
		if err != nil {
			return 0, err
		}
		if sessions[i], err = im.session(c); err != nil {
			return 0, err
		}
	}
	defer func() {
		for _, s := range sessions {
			s.Close()
		}
	}()
	start := time.Now()
	deadline := start.Add(d)
	for i := range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := im.mutex(sessions[i], pfx)
			for time.Now().Before(deadline) {
				if err := m.Lock(ctx); err != nil {
					fail(err)
					return
				}
				if holders.Add(1) != 1 {
					fail(fmt.Errorf("two holders at once"))
				}
				count.Add(1)
				holders.Add(-1)
				if err := m.Unlock(ctx); err != nil {
					fail(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstE != nil {
		return 0, firstE
	}
	return float64(count.Load()) / time.Since(start).Seconds(), nil
}

// electionHandoff has two candidates take turns: the leader resigns while
// the other waits in Campaign, and it measures from Resign until the
// other's Campaign returns.
func electionHandoff(ctx context.Context, e *etcdEnv, im impl, n int) (float64, error) {
	pfx := uniquePrefix("election")
	var cands [2]candidate
	for i := range cands {
		c, err := e.client()
		if err != nil {
			return 0, err
		}
		s, err := im.session(c)
		if err != nil {
			return 0, err
		}
		defer s.Close()
		cands[i] = im.election(s, pfx)
	}
	obs, err := e.client()
	if err != nil {
		return 0, err
	}
	if err := cands[0].Campaign(ctx, "0"); err != nil {
		return 0, err
	}
	leader := 0
	ds := make([]time.Duration, 0, n)
	for range n {
		next := 1 - leader
		won := make(chan error, 1)
		go func() { won <- cands[next].Campaign(ctx, fmt.Sprint(next)) }()
		// The waiter is queued once its key exists; resign right then, as
		// a busy service would.
		for {
			r, err := obs.Get(ctx, pfx+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				return 0, err
			}
			if r.Count == 2 {
				break
			}
		}
		t0 := time.Now()
		if err := cands[leader].Resign(ctx); err != nil {
			return 0, err
		}
		if err := <-won; err != nil {
			return 0, err
		}
		ds = append(ds, time.Since(t0))
		leader = next
	}
	if err := cands[leader].Resign(ctx); err != nil {
		return 0, err
	}
	return Percentile(ds, 50), nil
}

// drainWaiters queues n waiters behind a holder, releases, and measures the
// time until every waiter has taken and released the lock in turn.
func drainWaiters(ctx context.Context, e *etcdEnv, im impl, n int) (float64, error) {
	pfx := uniquePrefix("drain")
	const conns = 8
	clients := make([]*clientv3.Client, conns)
	for i := range clients {
		c, err := e.client()
		if err != nil {
			return 0, err
		}
		clients[i] = c
	}
	sessions := make([]closer, n+1)
	defer func() {
		for _, s := range sessions {
			if s != nil {
				s.Close()
			}
		}
	}()
	for i := range sessions {
		s, err := im.session(clients[i%conns])
		if err != nil {
			return 0, err
		}
		sessions[i] = s
	}
	holder := im.mutex(sessions[0], pfx)
	if err := holder.Lock(ctx); err != nil {
		return 0, err
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 1; i <= n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := im.mutex(sessions[i], pfx)
			if err := m.Lock(ctx); err != nil {
				errs <- err
				return
			}
			if err := m.Unlock(ctx); err != nil {
				errs <- err
			}
		}()
	}
	for {
		r, err := clients[0].Get(ctx, pfx+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return 0, err
		}
		if r.Count == int64(n+1) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Let every waiter reach its wait; etcd's waiters also get past the
	// watch resync this way, so the drain measures handoffs only.
	time.Sleep(300 * time.Millisecond)
	t0 := time.Now()
	if err := holder.Unlock(ctx); err != nil {
		return 0, err
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return time.Since(t0).Seconds(), nil
}
