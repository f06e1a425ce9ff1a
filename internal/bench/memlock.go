package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/bsm/redislock"
	"github.com/redis/go-redis/v9"

	"github.com/batonhq/baton/memlock"
	"github.com/batonhq/baton/memlock/memlocktest"
)

// runMemlock measures memlock's TryWithLock with an empty f, uncontended,
// on a memcached and a redis-server started for the run: ops/s and round
// trips per call, memlock's Redis cache against bsm/redislock's
// Obtain+Release on the same server, and the raw floors.
func runMemlock(ctx context.Context, o Options) ([]Row, error) {
	n := 20000
	if o.Quick {
		n = 3000
	}
	mc, err := memlocktest.StartMemcached()
	if err != nil {
		return nil, fmt.Errorf("memlock suite needs memcached: %w", err)
	}
	defer mc.Close()
	rs, err := memlocktest.StartRedis()
	if err != nil {
		return nil, fmt.Errorf("memlock suite needs redis-server: %w", err)
	}
	defer rs.Close()

	// Every request either client sends is one write on its connection:
	// both flush one buffered request at a time.
	var mcWrites, rsWrites memlocktest.RequestCounter
	mcc := memcache.New(mc.Addr())
	mcc.DialContext = mcWrites.Dial
	defer mcc.Close()
	rc := redis.NewClient(&redis.Options{Addr: rs.Addr(), ContextTimeoutEnabled: true, Dialer: rsWrites.Dial})
	defer rc.Close()

	mlMC, err := memlock.New(memlock.NewMemcache(mcc))
	if err != nil {
		return nil, err
	}
	mlRedis, err := memlock.New(memlock.NewRedis(rc))
	if err != nil {
		return nil, err
	}
	peer := redislock.New(rc)
	empty := func(context.Context) error { return nil }

	type loop struct {
		name   string
		writes *memlocktest.RequestCounter
		op     func() error
	}
	loops := map[string]loop{
		"mc": {"memlock memcached", &mcWrites, func() error {
			return mlMC.TryWithLock(ctx, "bench-mc", "bench", empty)
		}},
		"mcFloor": {"memcached Add+Delete", &mcWrites, func() error {
			if err := mcc.Add(&memcache.Item{Key: "bench-floor", Value: []byte("x"), Expiration: 16}); err != nil {
				return err
			}
			return mcc.Delete("bench-floor")
		}},
		"redis": {"memlock Redis", &rsWrites, func() error {
			return mlRedis.TryWithLock(ctx, "bench-redis", "bench", empty)
		}},
		"redislock": {"redislock", &rsWrites, func() error {
			l, err := peer.Obtain(ctx, "bench-redislock", memlock.DefaultTTL, nil)
			if err != nil {
				return err
			}
			return l.Release(ctx)
		}},
		"redisFloor": {"Redis SET NX PX+DEL", &rsWrites, func() error {
			ok, err := rc.SetNX(ctx, "bench-redis-floor", "x", memlock.DefaultTTL).Result()
			if err == nil && !ok {
				err = errors.New("floor key already set")
			}
			if err != nil {
				return err
			}
			return rc.Del(ctx, "bench-redis-floor").Err()
		}},
	}
	type result struct {
		elapsed time.Duration
		writes  int64
		calls   int
	}
	results := map[string]*result{}
	// Warm up each loop (connections, script cache), then run them in
	// turns, one call each, so that the load of the machine weighs on all
	// of them alike. The order of a turn is shuffled: the first call to a
	// server that idled through calls to the other pays for waking it.
	order := []string{"mc", "mcFloor", "redis", "redislock", "redisFloor"}
	for _, k := range order {
		results[k] = &result{}
		for range 100 {
			if err := loops[k].op(); err != nil {
				return nil, fmt.Errorf("%s: %w", loops[k].name, err)
			}
		}
	}
	for i := range n {
		if i%(n/4) == 0 {
			o.logf("  memlock: %d/%d calls of each", i, n)
		}
		rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, k := range order {
			lp, r := loops[k], results[k]
			w0, t0 := lp.writes.Count(), time.Now()
			if err := lp.op(); err != nil {
				return nil, fmt.Errorf("%s: %w", lp.name, err)
			}
			r.elapsed += time.Since(t0)
			r.writes += lp.writes.Count() - w0
			r.calls++
		}
	}
	ops := func(k string) float64 { return float64(results[k].calls) / results[k].elapsed.Seconds() }
	rts := func(k string) float64 { return float64(results[k].writes) / float64(results[k].calls) }
	return []Row{
		{Workload: "memlock TryWithLock, empty f, uncontended, memcached", Unit: "ops/s", Baton: ops("mc"), HigherIsBetter: true,
			Note: "take: Add; release: Get + CAS to the free value"},
		{Workload: "memlock round trips per call, memcached", Unit: "round trips", Baton: rts("mc")},
		{Workload: "floor: raw memcached Add+Delete", Unit: "ops/s", Baton: ops("mcFloor"), HigherIsBetter: true,
			Note: "no peer: two round trips, no ownership check"},
		{Workload: "memlock TryWithLock, empty f, uncontended, Redis", Unit: "ops/s", Baton: ops("redis"), HigherIsBetter: true,
			Peer: ops("redislock"), PeerName: "bsm/redislock Obtain+Release"},
		{Workload: "memlock round trips per call, Redis", Unit: "round trips", Baton: rts("redis"),
			Peer: rts("redislock"), PeerName: "bsm/redislock Obtain+Release"},
		{Workload: "floor: raw Redis SET NX PX + DEL", Unit: "ops/s", Baton: ops("redisFloor"), HigherIsBetter: true,
			Note: "no peer: two round trips, no ownership check"},
	}, nil
}
