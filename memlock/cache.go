package memlock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Key prefixes. The lock key is luci's: "memlock:" + key.
const (
	lockPrefix  = "memlock:"
	fencePrefix = "memlock-fence:"
)

// Cache is where locks live: a memcached, Redis or in-process store, made by
// NewMemcache, NewRedis or NewMemory; only this package makes Caches. Its
// methods are unexported: the interface is the seam between the locking
// algorithm, which is the same for every store, and the few atomic
// operations each store does its own way.
type Cache interface {
	// take stores h when its key is absent, free (the empty value), or held
	// by a value of the same clientID (re-entry: h replaces it). It reports
	// whether h is now stored.
	take(ctx context.Context, h *hold) (bool, error)
	// extend resets the expiry of h's key to h.ttl if it still holds h's
	// value. When the lock is certainly no longer ours it returns errGone
	// (the item is not there) or errChanged (it holds another value); any
	// other error leaves the question open.
	extend(ctx context.Context, h *hold) error
	// release frees h's key if it still holds h's value, and otherwise
	// leaves it alone.
	release(ctx context.Context, h *hold) error
	// fence returns the next fencing token for h's key.
	fence(ctx context.Context, h *hold) (int64, error)
	// checkKey validates a user key (and the fence key when fencing) before
	// anything is sent.
	checkKey(key string, fencing bool) error
	// lifetime is how long a value written with ttl is sure to live,
	// counted from the moment the write was sent.
	lifetime(ttl time.Duration) time.Duration
	// backend names the store in metrics and logs: "memcached", "redis"
	// or "memory".
	backend() string
}

// What extend returns when the lock is certainly no longer ours; both wrap
// errLost. The difference is the cause of the loss in metrics and logs.
var (
	errLost = errors.New("memlock: lock not held")
	// errGone: the item vanished (expired, evicted, deleted, flushed, or
	// the server that held it is gone).
	errGone = fmt.Errorf("%w: item gone", errLost)
	// errChanged: the item holds a value that is not ours.
	errChanged = fmt.Errorf("%w: value changed", errLost)
)

// hold is one holding of a lock: what is stored, and for how long.
type hold struct {
	name     string // the user's key
	key      string // the cache key: lockPrefix + name
	clientID string
	// value is what the cache holds while the lock is ours: the clientID, a
	// '/' and a nonce unique to this holding, so that a later holding by
	// the same clientID (re-entry) is told apart from this one.
	value string
	ttl   time.Duration
}

// nonceLen is the length of the hex nonce at the end of a value; with the
// '/' before it, the suffix after the clientID is nonceLen+1 bytes.
const nonceLen = 16

func (h *hold) init(name, clientID string, ttl time.Duration) {
	var b strings.Builder
	b.Grow(len(clientID) + 1 + nonceLen)
	b.WriteString(clientID)
	b.WriteByte('/')
	n := rand.Uint64()
	for shift := 60; shift >= 0; shift -= 4 {
		b.WriteByte("0123456789abcdef"[n>>shift&0xf])
	}
	*h = hold{name: name, key: lockPrefix + name, clientID: clientID, value: b.String(), ttl: ttl}
}

// fenceKey is the key of the fencing counter.
func (h *hold) fenceKey() string { return fencePrefix + h.name }

// ownerOf returns the clientID inside a stored value, and false when the
// value is free (empty) or not one of ours.
func ownerOf(v string) (string, bool) {
	i := len(v) - nonceLen - 1
	if i < 1 || v[i] != '/' {
		return "", false
	}
	return v[:i], true
}

// mayTake reports whether a take by h may replace the stored value v: v is
// the free value, or a holding by the same clientID.
func (h *hold) mayTake(v string) bool {
	if v == "" {
		return true
	}
	owner, ok := ownerOf(v)
	return ok && owner == h.clientID
}

// fenceSeed is the value a fencing counter starts from when it is missing:
// the wall clock in microseconds. A counter that a restart, a flush or an
// eviction dropped thus restarts above every token it gave before, as long
// as the key saw fewer than a million takes per second on average and the
// clocks of the clients are roughly right.
func fenceSeed() int64 { return time.Now().UnixMicro() }
