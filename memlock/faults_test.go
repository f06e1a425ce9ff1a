package memlock_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/redis/go-redis/v9"

	"github.com/batonhq/baton/memlock"
	"github.com/batonhq/baton/memlock/memlocktest"
)

// memcacheClientNowhere is a client for a port nothing listens on.
func memcacheClientNowhere() *memcache.Client {
	return memcache.New("127.0.0.1:1")
}

// A killed memcached lost every lock it held: the holder is told at its next
// refresh, which finds the port refused.
func TestMemcachedKilled(t *testing.T) {
	b := memcachedBackend(t)
	h := startHolder(context.Background(), b.locker(t), "job", "alice")
	h.waitHeld(t)
	at := time.Now()
	b.srv.Kill()
	h.lostWithin(t, at, 2*testRefresh)
}

func TestMemcachedRestarted(t *testing.T) {
	b := memcachedBackend(t)
	h := startHolder(context.Background(), b.locker(t), "job", "alice")
	h.waitHeld(t)
	at := time.Now()
	if err := b.srv.Restart(); err != nil {
		t.Fatal(err)
	}
	h.lostWithin(t, at, 2*testRefresh)
}

func TestMemcachedFlushAll(t *testing.T) {
	b := memcachedBackend(t)
	h := startHolder(context.Background(), b.locker(t), "job", "alice")
	h.waitHeld(t)
	raw := memcache.New(b.srv.Addr())
	defer raw.Close()
	at := time.Now()
	if err := raw.FlushAll(); err != nil {
		t.Fatal(err)
	}
	h.lostWithin(t, at, 2*testRefresh)
}

// A paused server answers nothing: refreshes time out, and the lock is given
// up when it could have expired, before the pause ends. No call hangs: the
// release that follows is bounded by the timeout.
func TestPausedLongerThanTTL(t *testing.T) {
	for _, mk := range []func(*testing.T) *backend{memcachedBackend, redisBackend} {
		b := mk(t)
		t.Run(b.name, func(t *testing.T) {
			h := startHolder(context.Background(), b.locker(t), "job", "alice")
			h.waitHeld(t)
			at := time.Now()
			if err := b.srv.Pause(); err != nil {
				t.Fatal(err)
			}
			defer b.srv.Resume()
			// The last refresh was sent at most one interval before the
			// pause, and the loss comes when its value could expire.
			h.lostWithin(t, at, b.life+testRefresh)
			// h.lostWithin waited for TryWithLock to return too: after
			// the loss, the release had only its timeout (gomemcache:
			// its own, per operation).
			if d, limit := time.Since(at), b.life+testRefresh+2*testTimeout; d > limit {
				t.Errorf("TryWithLock returned %v after the pause, want within %v", d, limit)
			}
		})
	}
}

// A server that is down or paused when TryWithLock starts: ErrFailedToLock
// within the timeout, and f never runs.
func TestServerDownAtStart(t *testing.T) {
	for _, mk := range []func(*testing.T) *backend{memcachedBackend, redisBackend} {
		b := mk(t)
		t.Run(b.name+"/paused", func(t *testing.T) {
			if err := b.srv.Pause(); err != nil {
				t.Fatal(err)
			}
			defer b.srv.Resume()
			failsFast(t, b)
		})
		t.Run(b.name+"/killed", func(t *testing.T) {
			b.srv.Kill()
			failsFast(t, b)
		})
	}
}

func failsFast(t *testing.T, b *backend) {
	t.Helper()
	start := time.Now()
	err := b.locker(t).TryWithLock(context.Background(), "job", "alice", mustNotRun(t))
	if !errors.Is(err, memlock.ErrFailedToLock) {
		t.Fatalf("TryWithLock = %v, want ErrFailedToLock", err)
	}
	// The take and the cleanup release after it each have the timeout;
	// memcached's client has the same per operation.
	if d := time.Since(start); d > 4*testTimeout+time.Second {
		t.Errorf("TryWithLock took %v to fail", d)
	}
	t.Logf("failed after %v: %v", time.Since(start), err)
}

func TestRedisRestarted(t *testing.T) {
	b := redisBackend(t)
	h := startHolder(context.Background(), b.locker(t), "job", "alice")
	h.waitHeld(t)
	at := time.Now()
	if err := b.srv.Restart(); err != nil {
		t.Fatal(err)
	}
	h.lostWithin(t, at, 2*testRefresh)
}

// Redis may persist locks, so a refused connection is not a loss; the lock
// is given up when it could have expired.
func TestRedisKilled(t *testing.T) {
	b := redisBackend(t)
	h := startHolder(context.Background(), b.locker(t), "job", "alice")
	h.waitHeld(t)
	at := time.Now()
	b.srv.Kill()
	h.lostWithin(t, at, b.life+testRefresh)
}

// failoverPair is a Redis primary and a second server, and a client whose
// dialer follows whichever is primary now, as a failover client or a
// virtual address would.
type failoverPair struct {
	primary, other *memlocktest.Server
	addr           atomic.Value // string: where the locker's client dials
	cache          memlock.Cache
}

func newFailoverPair(t *testing.T, replicate bool) *failoverPair {
	t.Helper()
	b := redisBackend(t)
	p := &failoverPair{primary: b.srv}
	var extra []string
	if replicate {
		host, port, _ := net.SplitHostPort(b.srv.Addr())
		extra = []string{"--replicaof", host, port}
	}
	other, err := memlocktest.StartRedis(extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)
	p.other = other
	p.addr.Store(b.srv.Addr())
	c := redisClient(t, "failover", func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, p.addr.Load().(string))
	})
	p.cache = memlock.NewRedis(c)
	return p
}

// failover kills the primary and promotes the other server.
func (p *failoverPair) failover(t *testing.T) {
	t.Helper()
	p.primary.Kill()
	c := redisClient(t, p.other.Addr(), nil)
	if err := c.Do(context.Background(), "REPLICAOF", "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	p.addr.Store(p.other.Addr())
}

// A failover to a replica that never got the lock (replication is
// asynchronous): the holder finds the key missing at its next refresh.
func TestRedisFailoverLosesKey(t *testing.T) {
	p := newFailoverPair(t, false)
	l, err := memlock.New(p.cache, memlock.WithTTL(redisTTL), memlock.WithRefreshInterval(testRefresh), memlock.WithTimeout(testTimeout))
	if err != nil {
		t.Fatal(err)
	}
	h := startHolder(context.Background(), l, "job", "alice")
	h.waitHeld(t)
	at := time.Now()
	p.failover(t)
	h.lostWithin(t, at, 2*testRefresh)
}

// A failover to a replica that has the lock keeps it: refreshes go on
// against the new primary, and the release removes it there.
func TestRedisFailoverKeepsReplicatedKey(t *testing.T) {
	p := newFailoverPair(t, true)
	l, err := memlock.New(p.cache, memlock.WithTTL(redisTTL), memlock.WithRefreshInterval(testRefresh), memlock.WithTimeout(testTimeout))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// This one waits for replication; it needs a longer read timeout.
	primary := redis.NewClient(&redis.Options{Addr: p.primary.Addr(), ReadTimeout: waitLimit})
	defer primary.Close()
	replica := redisClient(t, p.other.Addr(), nil)
	err = l.TryWithLock(ctx, "job", "alice", func(fctx context.Context) error {
		// WAIT returns once the replica has the write (or after 5 s).
		if n, err := primary.Do(ctx, "WAIT", 1, waitLimit.Milliseconds()).Int(); err != nil || n != 1 {
			t.Fatalf("WAIT for the replica: %d, %v", n, err)
		}
		p.failover(t)
		// Wait until a refresh reaches the new primary: its keyspace
		// notification for the key's expire.
		if err := replica.ConfigSet(ctx, "notify-keyspace-events", "Kg").Err(); err != nil {
			t.Fatal(err)
		}
		ps := replica.Subscribe(ctx, "__keyspace@0__:memlock:job")
		defer ps.Close()
		wctx, cancel := context.WithTimeout(ctx, waitLimit)
		defer cancel()
		for {
			m, err := ps.ReceiveMessage(wctx)
			if err != nil {
				t.Fatalf("no refresh reached the new primary: %v", err)
			}
			if m.Payload == "expire" {
				break
			}
		}
		if fctx.Err() != nil {
			t.Fatalf("f's context ended across a failover that kept the lock: %v", context.Cause(fctx))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := replica.Exists(ctx, "memlock:job").Result(); err != nil || n != 0 {
		t.Fatalf("after release the new primary still has the lock (%d, %v)", n, err)
	}
}

// Tokens stay increasing when the counter is lost with the server: it
// restarts from the clock.
func TestFencingAcrossRestart(t *testing.T) {
	for _, mk := range []func(*testing.T) *backend{memcachedBackend, redisBackend} {
		b := mk(t)
		t.Run(b.name, func(t *testing.T) {
			l := b.locker(t, memlock.WithFencing())
			token := func() int64 {
				var tok int64
				err := l.TryWithLock(context.Background(), "job", "alice", func(ctx context.Context) error {
					tok, _ = memlock.Token(ctx)
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				return tok
			}
			first := token()
			second := token()
			if second != first+1 {
				t.Errorf("tokens %d then %d, want consecutive", first, second)
			}
			if err := b.srv.Restart(); err != nil {
				t.Fatal(err)
			}
			var third int64
			// The first call after a restart may meet the client's
			// dead pooled connections.
			for range 3 {
				err := l.TryWithLock(context.Background(), "job", "alice", func(ctx context.Context) error {
					third, _ = memlock.Token(ctx)
					return nil
				})
				if err == nil {
					break
				}
				t.Logf("after restart: %v", err)
			}
			if third <= second {
				t.Errorf("token after restart %d, want > %d", third, second)
			}
		})
	}
}
