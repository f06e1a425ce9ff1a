package memlock_test

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/redis/go-redis/v9"

	"github.com/batonhq/baton/internal/testutil"
	"github.com/batonhq/baton/memlock"
	"github.com/batonhq/baton/memlock/memlocktest"
)

func TestMain(m *testing.M) {
	// A test that needs several processes runs this binary again as a
	// worker (see contention_test.go).
	if os.Getenv(workerEnv) != "" {
		os.Exit(runWorker())
	}
	testutil.VerifyMain(m)
}

// Timings for tests: short, so that faults show quickly, and with room for
// several refreshes in a lock's life as New demands. memcached needs a
// TTL of whole seconds and is sure of one second less.
const (
	testRefresh = 250 * time.Millisecond
	testTimeout = 200 * time.Millisecond
	// memcachedTTL lives at least 2 s: eight refreshes.
	memcachedTTL = 3 * time.Second
	redisTTL     = 2 * time.Second
)

// backend is one cache under test, with a second, independent client on
// the same store to play "another client" and to look at what is stored.
type backend struct {
	name  string
	cache memlock.Cache
	ttl   time.Duration
	// life is how long the lock is sure to live: the bound on detecting
	// a loss that only expiry reveals.
	life time.Duration
	srv  *memlocktest.Server // nil for the in-process cache

	set func(t *testing.T, key, value string) // overwrite the lock key
	get func(t *testing.T, key string) (string, bool)
	del func(t *testing.T, key string)
	// writes counts requests the locker's client sent (memcached and
	// Redis), nil for the in-process cache.
	writes *memlocktest.RequestCounter
}

func (b *backend) locker(t *testing.T, opts ...memlock.Option) *memlock.Locker {
	t.Helper()
	base := []memlock.Option{
		memlock.WithTTL(b.ttl), memlock.WithRefreshInterval(testRefresh), memlock.WithTimeout(testTimeout),
	}
	l, err := memlock.New(b.cache, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func memcachedBackend(t *testing.T) *backend {
	t.Helper()
	testutil.RequireBinary(t, "memcached", "memcached")
	s, err := memlocktest.StartMemcached()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	writes := new(memlocktest.RequestCounter)
	c := memcache.New(s.Addr())
	c.Timeout = testTimeout
	c.DialContext = writes.Dial
	t.Cleanup(func() { c.Close() })
	raw := memcache.New(s.Addr())
	t.Cleanup(func() { raw.Close() })
	return &backend{
		name: "memcached", cache: memlock.NewMemcache(c), ttl: memcachedTTL, life: memcachedTTL - time.Second, srv: s,
		writes: writes,
		set: func(t *testing.T, key, value string) {
			if err := raw.Set(&memcache.Item{Key: "memlock:" + key, Value: []byte(value), Expiration: 60}); err != nil {
				t.Fatal(err)
			}
		},
		get: func(t *testing.T, key string) (string, bool) {
			it, err := raw.Get("memlock:" + key)
			if errors.Is(err, memcache.ErrCacheMiss) {
				return "", false
			}
			if err != nil {
				t.Fatal(err)
			}
			return string(it.Value), true
		},
		del: func(t *testing.T, key string) {
			if err := raw.Delete("memlock:" + key); err != nil {
				t.Fatal(err)
			}
		},
	}
}

func redisBackend(t *testing.T) *backend {
	t.Helper()
	testutil.RequireBinary(t, "redis-server", "redis-server")
	s, err := memlocktest.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	writes := new(memlocktest.RequestCounter)
	c := redisClient(t, s.Addr(), writes.Dial)
	raw := redisClient(t, s.Addr(), nil)
	ctx := context.Background()
	return &backend{
		name: "redis", cache: memlock.NewRedis(c), ttl: redisTTL, life: redisTTL, srv: s, writes: writes,
		set: func(t *testing.T, key, value string) {
			if err := raw.Set(ctx, "memlock:"+key, value, time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
		},
		get: func(t *testing.T, key string) (string, bool) {
			v, err := raw.Get(ctx, "memlock:"+key).Result()
			if errors.Is(err, redis.Nil) {
				return "", false
			}
			if err != nil {
				t.Fatal(err)
			}
			return v, true
		},
		del: func(t *testing.T, key string) {
			if err := raw.Del(ctx, "memlock:"+key).Err(); err != nil {
				t.Fatal(err)
			}
		},
	}
}

func memoryBackend(t *testing.T) *backend {
	c := memlock.NewMemory()
	return &backend{
		name: "memory", cache: c, ttl: redisTTL, life: redisTTL,
		set: func(t *testing.T, key, value string) { memlock.MemorySet(c, key, value, time.Minute) },
		get: func(t *testing.T, key string) (string, bool) { return memlock.MemoryGet(c, key) },
		del: func(t *testing.T, key string) { memlock.MemoryDelete(c, key) },
	}
}

// eachBackend runs test on memcached, Redis and the in-process cache.
func eachBackend(t *testing.T, test func(t *testing.T, b *backend)) {
	for _, mk := range []func(*testing.T) *backend{memcachedBackend, redisBackend, memoryBackend} {
		b := mk(t)
		t.Run(b.name, func(t *testing.T) { test(t, b) })
	}
}

// redisClient dials addr (through dial, if not nil) with context deadlines
// honoured, as memlock's doc recommends, and closes the client when the test
// ends.
func redisClient(t testing.TB, addr string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *redis.Client {
	c := redis.NewClient(&redis.Options{
		Addr:                  addr,
		Dialer:                dial,
		ContextTimeoutEnabled: true,
		DialTimeout:           testTimeout,
		ReadTimeout:           testTimeout,
		WriteTimeout:          testTimeout,
		MaxRetries:            1,
	})
	t.Cleanup(func() { c.Close() })
	return c
}
