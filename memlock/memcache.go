package memlock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"syscall"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// memcached limits, from its protocol.
const (
	memcacheMaxKey = 250
	// memcacheMaxRelative is the largest expiration memcached reads as
	// seconds from now; larger values are Unix times.
	memcacheMaxRelative = 30 * 24 * time.Hour
	// takeRaces is how many times a take retries when the key changes
	// under it between two operations; after that, someone else is busy
	// with the key and the take fails.
	takeRaces = 3
)

type memcacheCache struct {
	c *memcache.Client
}

// NewMemcache returns a Cache on memcached through c. It returns nil for a
// nil c (New then reports ErrNilCache).
//
// How it works, since memcached's text protocol has no compare-and-delete:
//   - take: Add. When the key exists: Get, and if it is free (the empty
//     value) or held by the same clientID, CompareAndSwap to ours.
//   - refresh: Get, compare with our value, CompareAndSwap with a fresh
//     expiration. A miss, another value, a CAS conflict or a refused
//     connection (memcached keeps nothing across a restart) lose the lock.
//   - release: Get, compare, then CompareAndSwap to the empty "free" value
//     with expiration -1, which memcached's protocol defines as "expire at
//     once". A plain Delete could remove a lock that someone else took after
//     ours expired, so it is never used.
//
// gomemcache takes no context: c.Timeout (default 500 ms) bounds each
// operation, and the Locker's timeout is checked between operations.
// Expirations are whole seconds: the TTL is rounded up, and memcached's
// clock may expire an item up to a second early, so a lock is counted as
// sure to live one second less than its TTL.
func NewMemcache(c *memcache.Client) Cache {
	if c == nil {
		return nil
	}
	return &memcacheCache{c: c}
}

func memcacheExpiration(ttl time.Duration) int32 {
	return int32((ttl + time.Second - 1) / time.Second)
}

func (m *memcacheCache) backend() string { return "memcached" }

func (m *memcacheCache) lifetime(ttl time.Duration) time.Duration {
	if ttl > memcacheMaxRelative {
		return 0
	}
	return time.Duration(memcacheExpiration(ttl)-1) * time.Second
}

func (m *memcacheCache) checkKey(key string, fencing bool) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	prefix := lockPrefix
	if fencing {
		prefix = fencePrefix
	}
	if n := len(prefix) + len(key); n > memcacheMaxKey {
		return fmt.Errorf("%w: key of %d bytes is too long for memcached: with the prefix %q it makes %d bytes, over %d",
			ErrInvalidKey, len(key), prefix, n, memcacheMaxKey)
	}
	for i := 0; i < len(key); i++ {
		if b := key[i]; b <= ' ' || b == 0x7f {
			return fmt.Errorf("%w: memcached keys cannot hold spaces or control characters: byte %#x at %d in %q",
				ErrInvalidKey, b, i, key)
		}
	}
	return nil
}

func (m *memcacheCache) take(ctx context.Context, h *hold) (bool, error) {
	exp := memcacheExpiration(h.ttl)
	for range takeRaces {
		err := m.retry(ctx, func() error {
			return m.c.Add(&memcache.Item{Key: h.key, Value: []byte(h.value), Expiration: exp})
		})
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, memcache.ErrNotStored) {
			return false, err
		}
		it, err := m.get(ctx, h.key)
		if errors.Is(err, memcache.ErrCacheMiss) {
			continue // gone since the Add
		}
		if err != nil {
			return false, err
		}
		if !h.mayTake(string(it.Value)) {
			return false, nil
		}
		if err := ctx.Err(); err != nil {
			return false, err
		}
		it.Value, it.Expiration = []byte(h.value), exp
		err = m.c.CompareAndSwap(it)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, memcache.ErrCASConflict), errors.Is(err, memcache.ErrCacheMiss):
			continue // changed since the Get
		default:
			return false, err
		}
	}
	return false, nil
}

func (m *memcacheCache) extend(ctx context.Context, h *hold) error {
	it, err := m.get(ctx, h.key)
	switch {
	case errors.Is(err, memcache.ErrCacheMiss), refused(err):
		return errGone
	case err != nil:
		return err
	case string(it.Value) != h.value:
		return errChanged
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	it.Expiration = memcacheExpiration(h.ttl)
	err = m.c.CompareAndSwap(it)
	switch {
	case errors.Is(err, memcache.ErrCASConflict):
		return errChanged // written since the Get
	// gomemcache reports a CAS on a missing item as ErrCacheMiss, although
	// its doc says ErrNotStored.
	case errors.Is(err, memcache.ErrCacheMiss), refused(err):
		return errGone
	}
	return err
}

func (m *memcacheCache) release(ctx context.Context, h *hold) error {
	it, err := m.get(ctx, h.key)
	switch {
	case errors.Is(err, memcache.ErrCacheMiss):
		return nil
	case err != nil:
		return err
	case string(it.Value) != h.value:
		return nil // not ours any more
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	it.Value, it.Expiration = nil, -1
	err = m.c.CompareAndSwap(it)
	if errors.Is(err, memcache.ErrCASConflict) || errors.Is(err, memcache.ErrCacheMiss) {
		return nil // someone else's write came first: not ours any more
	}
	return err
}

func (m *memcacheCache) fence(ctx context.Context, h *hold) (int64, error) {
	var n uint64
	incr := func() (err error) {
		n, err = m.c.Increment(h.fenceKey(), 1)
		return err
	}
	err := m.do(ctx, incr)
	if errors.Is(err, memcache.ErrCacheMiss) {
		// No counter (first use, restart, flush or eviction): seed it from
		// the clock. ErrNotStored means another client seeded it first.
		seed := strconv.FormatInt(fenceSeed(), 10)
		err = m.retry(ctx, func() error {
			return m.c.Add(&memcache.Item{Key: h.fenceKey(), Value: []byte(seed)})
		})
		if err == nil || errors.Is(err, memcache.ErrNotStored) {
			err = m.do(ctx, incr)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("memlock: fencing counter: %w", err)
	}
	return int64(n), nil
}

func (m *memcacheCache) get(ctx context.Context, key string) (*memcache.Item, error) {
	var it *memcache.Item
	err := m.retry(ctx, func() (err error) {
		it, err = m.c.Get(key)
		return err
	})
	return it, err
}

// do runs one operation if ctx is not done yet.
func (m *memcacheCache) do(ctx context.Context, op func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return op()
}

// retry runs an operation that is safe to repeat (a Get, an Add) again when
// it failed on a pooled connection that the server had closed: after a
// restart, every idle connection gomemcache keeps is dead, and each is
// dropped only when an operation fails on it.
func (m *memcacheCache) retry(ctx context.Context, op func() error) error {
	idle := m.c.MaxIdleConns
	if idle <= 0 {
		idle = memcache.DefaultMaxIdleConns
	}
	var err error
	for range idle + 1 {
		if err = m.do(ctx, op); !brokenConn(err) {
			return err
		}
	}
	return err
}

// brokenConn reports whether err says the connection was closed by the other
// side.
func brokenConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// refused reports whether nothing listens at the server's address: a
// memcached that is not running, whose locks are therefore gone.
func refused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
