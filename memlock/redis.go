package memlock

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The scripts compare before they write, so that a holding can only extend
// or delete its own value. Values end in "/" and a 16-digit nonce (see
// hold.value); takeOverScript's test is ownerOf written in Lua.
var (
	takeOverScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false or v == '' or
   (string.len(v) > 17 and string.sub(v, -17, -17) == '/' and string.sub(v, 1, -18) == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0`)
	// extendScript returns 1 when it extended the lock, 0 when the key
	// holds another value, -1 when it is missing.
	extendScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if v == false then
  return -1
end
return 0`)
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)
	fenceScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
end
return redis.call('INCR', KEYS[1])`)
)

type redisCache struct {
	c redis.UniversalClient
}

// NewRedis returns a Cache on Redis (or Valkey) through c: a client, a
// cluster client or a failover client. It returns nil for a nil c (New then
// reports ErrNilCache).
//
// A take is one SET NX PX round trip when the lock is free; when it is held,
// a script checks for re-entry by the same clientID. Refresh and release are
// one script each that compares the value before it extends or deletes it.
// The fencing counter (WithFencing) is a separate key, so it works on Redis
// Cluster.
//
// Calls are bounded by the Locker's timeout when the client's options set
// ContextTimeoutEnabled; without it, go-redis bounds socket reads and writes
// by its ReadTimeout and WriteTimeout (3 s by default) and ignores context
// deadlines there. Redis may keep locks across a restart (RDB, AOF), so a
// refused connection is not taken as a lost lock: the lock is lost when the
// value is gone or changed, or when no refresh succeeded for a whole TTL.
// Redis counts TTLs on its wall clock.
func NewRedis(c redis.UniversalClient) Cache {
	if c == nil {
		return nil
	}
	return &redisCache{c: c}
}

func (r *redisCache) backend() string { return "redis" }

func (r *redisCache) lifetime(ttl time.Duration) time.Duration { return ttl }

func (r *redisCache) checkKey(key string, _ bool) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	return nil
}

func millis(d time.Duration) string {
	return strconv.FormatInt(max(1, d.Milliseconds()), 10)
}

func (r *redisCache) take(ctx context.Context, h *hold) (bool, error) {
	ok, err := r.c.SetNX(ctx, h.key, h.value, h.ttl).Result()
	if err != nil || ok {
		return ok, err
	}
	n, err := takeOverScript.Run(ctx, r.c, []string{h.key}, h.value, h.clientID, millis(h.ttl)).Int()
	return n == 1, err
}

func (r *redisCache) extend(ctx context.Context, h *hold) error {
	n, err := extendScript.Run(ctx, r.c, []string{h.key}, h.value, millis(h.ttl)).Int()
	switch {
	case err != nil:
		return err
	case n == -1:
		return errGone
	case n != 1:
		return errChanged
	}
	return nil
}

func (r *redisCache) release(ctx context.Context, h *hold) error {
	return releaseScript.Run(ctx, r.c, []string{h.key}, h.value).Err()
}

func (r *redisCache) fence(ctx context.Context, h *hold) (int64, error) {
	n, err := fenceScript.Run(ctx, r.c, []string{h.fenceKey()}, fenceSeed()).Int64()
	if err != nil {
		return 0, fmt.Errorf("memlock: fencing counter: %w", err)
	}
	return n, nil
}
