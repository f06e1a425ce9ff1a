// Package memlock provides best-effort locks on memcached and Redis, with the
// API of luci's memlock (go.chromium.org/luci/appengine/memlock), which ran
// on App Engine's first-generation memcache and was deleted with it:
//
//	ctx = memlock.Use(ctx, memlock.NewMemcache(memcache.New("127.0.0.1:11211")))
//	err := memlock.TryWithLock(ctx, "rebuild-index", hostname, func(ctx context.Context) error {
//		return rebuild(ctx) // stop when ctx is done
//	})
//	if errors.Is(err, memlock.ErrFailedToLock) {
//		// someone else is rebuilding it
//	}
//
// TryWithLock tries once to take the lock; it never waits for it. While f
// runs the lock is refreshed (by default every second, for 16 s), and f's
// context is cancelled when the lock is lost, with context.Cause
// ErrLockLost. After f the lock is released, even if the caller's context
// was cancelled. New makes a Locker with other options: TTL, refresh
// interval, timeout, fencing tokens.
//
// Beyond luci's memlock: loss is told apart from cancellation; release always
// runs and never frees a lock that is no longer ours; every call to the cache
// has a timeout; keys are checked before anything is sent; re-entry by the
// same clientID is defined (see Locker.TryWithLock); fencing tokens are
// optional (WithFencing, Token).
//
// # Metrics and logs
//
// WithMetrics records acquisitions, failed takes, refreshes and losses by
// cause (changed, gone, refresh) into a metrics.Metrics, labelled by backend
// and key; WithLogger logs a lost lock and refreshes that start failing or
// recover, and nothing per call. Without them (and through Use) nothing is
// recorded or logged.
//
// # What it does not promise
//
// These are efficiency locks: they keep two workers from doing the same
// work at the same time almost always, which saves work. They do not give
// mutual exclusion that correctness can rest on, because:
//
//   - the cache may drop a lock before its TTL: memcached evicts items under
//     memory pressure, a restart or flush_all drops every lock, a Redis
//     failover may promote a replica that never got the lock;
//   - a holder can be paused (GC, swap, SIGSTOP, a VM migration) for longer
//     than the TTL, and resume believing it still holds the lock while
//     someone else does: f's context is cancelled once the lock could have
//     expired, but f may run on until it next looks at it;
//   - TTLs are counted on clocks: memcached counts whole seconds and may
//     expire an item a second early, Redis counts on its wall clock, and
//     the holder counts on its own.
//
// Each of these lets two holders overlap, and the lock cannot tell the
// resource it guards that an old holder is stale. Loss is detected at the
// next refresh when the value is gone or changed or, on memcached, the
// server is no longer running; a refresh that fails otherwise (a timeout, a
// paused server) is retried, and the lock is given up when it could have
// expired.
//
// For correctness, use etcd's concurrency.Mutex with fencing, as this
// module's concurrency package provides (github.com/batonhq/baton/concurrency):
// it is held through a lease in a consensus store that does not drop it,
// and Mutex.Rev is a fencing token (the create revision of the holder's key)
// that the guarded resource checks so that a stale holder's writes are
// refused; Mutex.Guard does that check for writes to etcd itself.
// WithFencing gives memlock holders a token too, drawn from the cache: it
// lets a resource refuse a holder that was paused past its TTL, but the
// counter lives in the same cache and is only as durable as it is.
package memlock
