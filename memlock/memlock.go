package memlock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batonhq/baton/internal/obs"
	"github.com/batonhq/baton/metrics"
)

// Defaults, luci's: a lock lives 16 s unless refreshed, and is refreshed
// every second, so fifteen refreshes in a row may fail before it expires.
const (
	DefaultTTL             = 16 * time.Second
	DefaultRefreshInterval = time.Second
	// DefaultTimeout bounds each call to the cache: a take, one refresh,
	// a release.
	DefaultTimeout = time.Second
)

// minRefreshes is how many refreshes must fit in the time a lock is sure to
// live, so that one or two failed refreshes do not lose it.
const minRefreshes = 3

// Errors. Errors from TryWithLock wrap them and are checked with errors.Is.
var (
	// ErrEmptyClientID is returned when TryWithLock is called with an empty
	// clientID.
	ErrEmptyClientID = errors.New("memlock: empty clientID")
	// ErrFailedToLock is returned when the lock could not be taken: someone
	// else holds it, or the cache could not be reached (then the cause is
	// wrapped too), or ctx was already done. f was not run.
	ErrFailedToLock = errors.New("memlock: failed to obtain lock")
	// ErrLockLost is the cause (see context.Cause) of the cancellation of
	// f's context when the lock was lost while f ran: its value changed,
	// its key vanished (expired, evicted, flushed, server restarted), or no
	// refresh succeeded for as long as the lock is sure to live.
	ErrLockLost = errors.New("memlock: lock lost")
	// ErrNoCache is returned by TryWithLock when the context carries no
	// cache: call Use first.
	ErrNoCache = errors.New("memlock: no cache in context (see memlock.Use)")
	// ErrNilCache is returned by New when given a nil Cache.
	ErrNilCache = errors.New("memlock: nil cache")
	// ErrInvalidKey is returned when a key cannot be stored in the cache:
	// empty, or (memcached) too long or holding spaces or control
	// characters. Nothing is sent.
	ErrInvalidKey = errors.New("memlock: invalid key")
	// ErrInvalidOption is returned by New for an option out of range.
	ErrInvalidOption = errors.New("memlock: invalid option")
)

// Option configures a Locker made by New.
type Option func(*options)

type options struct {
	ttl, refresh, timeout time.Duration
	fencing               bool
	metrics               *metrics.Metrics
	logger                *slog.Logger
}

// WithTTL sets how long a lock lives unless refreshed; default DefaultTTL
// (16 s). memcached counts whole seconds: the TTL is rounded up to them,
// and memcached may expire an item up to a second early.
func WithTTL(d time.Duration) Option { return func(o *options) { o.ttl = d } }

// WithRefreshInterval sets how often the lock is refreshed while f runs;
// default DefaultRefreshInterval (1 s). At least three refreshes must fit in
// the time the lock is sure to live (the TTL, a second less on memcached).
func WithRefreshInterval(d time.Duration) Option { return func(o *options) { o.refresh = d } }

// WithTimeout bounds every call to the cache: the take, each refresh and the
// release; default DefaultTimeout (1 s). It must be > 0 and at most the
// refresh interval. The memcached client takes no context: its own Timeout
// (gomemcache's default is 500 ms) bounds each of its operations, and a call
// made of several operations stops between them when this timeout expires.
// A go-redis client honours it when its options set ContextTimeoutEnabled;
// otherwise its ReadTimeout and WriteTimeout bound each call.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithFencing makes every take also draw a fencing token, an integer that is
// larger for each new holding of a key, readable in f with Token. It costs
// one more round trip per call. A resource that remembers the largest token
// it has seen and refuses smaller ones is safe from a holder that lost its
// lock without noticing (a pause, an eviction): the newer holder's token is
// larger. Tokens are counted in the cache (memcached incr, Redis INCR), in a
// key of their own ("memlock-fence:" + key) that does not expire. A counter
// lost with the cache (restart, flush, eviction) restarts from the wall
// clock in microseconds: above the tokens it gave before, as long as the
// key was taken fewer than a million times a second on average and the
// clients' clocks are not behind.
func WithFencing() Option { return func(o *options) { o.fencing = true } }

// WithMetrics makes the Locker record into m (see package metrics), each
// series labelled with the cache's backend ("memcached", "redis" or
// "memory") and the key as "name":
//
//   - baton_memlock_acquisitions_total: locks taken (a nested re-entry
//     takes nothing and is not counted);
//   - baton_memlock_failed_to_lock_total: takes that failed, the lock held
//     by someone else or the cache unreachable (a call whose ctx was done
//     before anything was sent is not counted);
//   - baton_memlock_refreshes_total{result}: each refresh, "ok" when it
//     extended the lock, else "failed" (also when it found the lock lost);
//   - baton_memlock_losses_total{cause}: locks lost while f ran, once per
//     holding: "changed" (the item holds another value: someone took the
//     lock over), "gone" (the item vanished: expired, evicted, deleted,
//     flushed, or a memcached that is no longer running), "refresh" (no
//     refresh succeeded for as long as the lock is sure to live).
//
// Keys become label values: when they embed IDs, bound them with
// metrics.WithNameLabel. Default: no metrics; a nil m is the default.
func WithMetrics(m *metrics.Metrics) Option { return func(o *options) { o.metrics = m } }

// WithLogger makes the Locker log the changes of a holding's state to l,
// and nothing per operation:
//
//   - Warn "memlock: lock lost", when a lock is lost while f runs, with
//     its cause (changed, gone or refresh, as in WithMetrics);
//   - Warn "memlock: refresh failing", at the first refresh that fails
//     without finding the lock lost, after the take or a refresh that
//     succeeded, with err and lost_in (how long until the lock is given
//     up unless a refresh succeeds);
//   - Info "memlock: refresh recovered", at the refresh that succeeds after
//     failed ones, with failures (their number) and failing_for.
//
// Every record carries the attributes key, client_id and backend, and token
// with WithFencing. Default: discard; a nil l is the default.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// Locker takes locks in one Cache with one set of options. A Locker is safe
// for use by several goroutines.
type Locker struct {
	cache   Cache
	opts    options
	life    time.Duration // cache.lifetime(opts.ttl)
	backend string        // cache.backend()
	rec     *obs.Recorder // nil without WithMetrics
	log     *slog.Logger
}

// New returns a Locker on c. Options out of range are errors wrapping
// ErrInvalidOption, not silently replaced.
func New(c Cache, opts ...Option) (*Locker, error) {
	if c == nil {
		return nil, ErrNilCache
	}
	o := options{ttl: DefaultTTL, refresh: DefaultRefreshInterval, timeout: DefaultTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	life := c.lifetime(o.ttl)
	switch {
	case o.ttl <= 0:
		return nil, fmt.Errorf("%w: TTL %v must be > 0", ErrInvalidOption, o.ttl)
	case o.refresh <= 0:
		return nil, fmt.Errorf("%w: refresh interval %v must be > 0", ErrInvalidOption, o.refresh)
	case o.timeout <= 0 || o.timeout > o.refresh:
		return nil, fmt.Errorf("%w: timeout %v must be > 0 and at most the refresh interval %v", ErrInvalidOption, o.timeout, o.refresh)
	case life < minRefreshes*o.refresh:
		return nil, fmt.Errorf("%w: a lock with TTL %v is sure to live %v in this cache, room for fewer than %d refreshes every %v",
			ErrInvalidOption, o.ttl, life, minRefreshes, o.refresh)
	}
	log := o.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Locker{cache: c, opts: o, life: life, backend: c.backend(), rec: o.metrics.Recorder(), log: log}, nil
}

type cacheKey struct{}

// Use returns a copy of ctx that carries c, for TryWithLock, with the
// default options: no metrics and no logs among them. Use(ctx, nil) returns
// a copy that carries no cache.
func Use(ctx context.Context, c Cache) context.Context {
	if c == nil {
		return context.WithValue(ctx, cacheKey{}, (*Locker)(nil))
	}
	l, err := New(c)
	if err != nil {
		// The defaults fit every cache of this package.
		panic(err)
	}
	return context.WithValue(ctx, cacheKey{}, l)
}

// TryWithLock is Locker.TryWithLock on the cache that Use put in ctx, with the
// default options. It returns ErrNoCache when ctx carries none.
func TryWithLock(ctx context.Context, key, clientID string, f func(context.Context) error) error {
	l, _ := ctx.Value(cacheKey{}).(*Locker)
	if l == nil {
		return ErrNoCache
	}
	return l.TryWithLock(ctx, key, clientID, f)
}

// heldKey is the context key under which f's context carries the holding
// f runs under (a *holding), for Token and for re-entry.
type heldKey struct{}

// Token returns the fencing token of the lock whose f got ctx, and false when
// the Locker was made without WithFencing (or ctx is not from TryWithLock).
func Token(ctx context.Context) (int64, bool) {
	if g, ok := ctx.Value(heldKey{}).(*holding); ok && g.l.opts.fencing {
		return g.token, true
	}
	return 0, false
}

// TryWithLock tries once to take the lock named key for clientID. If the lock
// is held by someone else, or the cache cannot be reached, it returns an error
// wrapping ErrFailedToLock and does not run f. Otherwise it runs f and
// returns f's error.
//
// While f runs, the lock is refreshed every refresh interval. When it is lost,
// f's context is cancelled and context.Cause of it is ErrLockLost; f should
// then stop what the lock guards as soon as it can. When the parent ctx ends,
// f's context ends with the parent's cause and the lock is kept until f
// returns.
//
// After f returns, the lock is released, even when ctx is already cancelled,
// under its own timeout; a release never frees a lock that is no longer this
// holding's. TryWithLock returns after the release has finished; if it
// failed, the lock expires after its TTL.
//
// Re-entry: a clientID names one holder, as in luci. A TryWithLock nested in
// f (called with f's context or one derived from it) for the same key and
// clientID runs its f at once under the outer lock, sends nothing, and leaves
// the release to the outer call. A TryWithLock by the same clientID that is
// not nested takes the lock over: it succeeds, and the earlier holding loses
// the lock (ErrLockLost) at its next refresh. This lets a restarted worker
// take back its lock without waiting for the TTL; give concurrent callers
// different clientIDs.
func (l *Locker) TryWithLock(ctx context.Context, key, clientID string, f func(context.Context) error) error {
	if f == nil {
		panic("memlock: TryWithLock with nil f")
	}
	if clientID == "" {
		return ErrEmptyClientID
	}
	if err := l.cache.checkKey(key, l.opts.fencing); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%w: %w", ErrFailedToLock, context.Cause(ctx))
	}
	outer, _ := ctx.Value(heldKey{}).(*holding)
	for g := outer; g != nil; g = g.outer {
		if g.l.cache == l.cache && g.h.name == key && g.h.clientID == clientID {
			return f(ctx)
		}
	}

	g := &holding{l: l, outer: outer}
	g.h.init(key, clientID, l.opts.ttl)
	g.start = time.Now()
	if err := g.take(ctx); err != nil {
		l.rec.MemFailed(l.backend, key)
		return err
	}
	l.rec.MemAcquired(l.backend, key)
	var fctx context.Context
	fctx, g.cancel = context.WithCancelCause(context.WithValue(ctx, heldKey{}, g))
	g.keepAlive()
	defer func() {
		// 1. Stop refreshing (waiting for a refresh in flight), 2. end
		// f's context, 3. release. A panic in f takes the same path.
		g.stop()
		g.cancel(context.Canceled)
		g.release(ctx)
	}()
	return f(fctx)
}

// holding is one TryWithLock that took its lock: the stored value, and the
// refreshes that keep it while f runs. Refreshes have no goroutine of their
// own: each runs in the goroutine of a timer, so a call that ends before the
// first refresh costs one timer and no round trip.
type holding struct {
	l     *Locker
	outer *holding // the holding of the TryWithLock this one is nested in
	h     hold
	token int64
	start time.Time // when the take was sent
	// cancel ends f's context; with ErrLockLost when the lock is lost.
	cancel context.CancelCauseFunc
	// state moves once, from held to lost (lose) or to ended (stop), so
	// that a loss is acted on, counted and logged once, and only while f
	// runs.
	state atomic.Int32

	mu      sync.Mutex // held for the whole of a refresh
	stopped bool
	// failures counts the refreshes that failed since the take or the
	// last refresh that succeeded, and failingSince is when the first of
	// them was sent; sureUntil is when the expiry timer fires. For the
	// logs.
	failures     int
	failingSince time.Time
	sureUntil    time.Time
	next         *time.Timer // runs refresh every interval
	// expiry declares the lock lost when no refresh has succeeded for as
	// long as it is sure to live. It is a timer of its own, so that a
	// refresh stuck in a slow client cannot delay it. It is made at the
	// first refresh: the lock cannot expire before (New makes sure).
	expiry *time.Timer
}

// take stores the holding's value and, with fencing, draws its token.
func (g *holding) take(ctx context.Context) error {
	tctx, cancel := context.WithTimeout(ctx, g.l.opts.timeout)
	defer cancel()
	ok, err := g.l.cache.take(tctx, &g.h)
	if err == nil && !ok {
		return ErrFailedToLock
	}
	if err == nil && g.l.opts.fencing {
		g.token, err = g.l.cache.fence(tctx, &g.h)
	}
	if err != nil {
		// The take may have landed even though it reported an error (a
		// timed-out write can still be applied), so free the lock if it is
		// ours; release compares before it writes.
		g.release(ctx)
		return fmt.Errorf("%w: %w", ErrFailedToLock, err)
	}
	return nil
}

// release frees the lock if it is still ours, under its own timeout, even
// when ctx is done.
func (g *holding) release(ctx context.Context) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.l.opts.timeout)
	defer cancel()
	g.l.cache.release(rctx, &g.h)
}

func (g *holding) keepAlive() {
	g.mu.Lock()
	g.next = time.AfterFunc(g.l.opts.refresh, g.refresh)
	g.mu.Unlock()
}

// The states of a holding.
const (
	held int32 = iota
	lost
	ended
)

// lose declares the lock lost for cause, once: it records the loss, ends
// f's context with ErrLockLost, then logs. It is called by a refresh (with
// g.mu held) and by the expiry timer (without).
func (g *holding) lose(cause string) {
	if !g.state.CompareAndSwap(held, lost) {
		return
	}
	l := g.l
	// Recorded before the cancellation, so that whoever sees f's context
	// end sees the loss counted.
	l.rec.MemLost(l.backend, g.h.name, cause)
	g.cancel(ErrLockLost)
	l.log.LogAttrs(context.Background(), slog.LevelWarn, "memlock: lock lost", g.attrs(slog.String("cause", cause))...)
}

// attrs are the attributes of g's log records: key, client_id, backend and,
// with fencing, token, then extra.
func (g *holding) attrs(extra ...slog.Attr) []slog.Attr {
	a := make([]slog.Attr, 0, 4+len(extra))
	a = append(a, slog.String("key", g.h.name), slog.String("client_id", g.h.clientID), slog.String("backend", g.l.backend))
	if g.l.opts.fencing {
		a = append(a, slog.Int64("token", g.token))
	}
	return append(a, extra...)
}

// lossCause is the cause label of a loss that extend reported.
func lossCause(err error) string {
	if errors.Is(err, errGone) {
		return obs.CauseGone
	}
	return obs.CauseChanged
}

func (g *holding) refresh() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return
	}
	l := g.l
	if g.expiry == nil {
		g.sureUntil = g.start.Add(l.life)
		g.expiry = time.AfterFunc(time.Until(g.sureUntil), func() { g.lose(obs.CauseRefresh) })
	}
	sent := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), l.opts.timeout)
	err := l.cache.extend(ctx, &g.h)
	cancel()
	l.rec.MemRefreshed(l.backend, g.h.name, err == nil)
	switch {
	case g.state.Load() != held:
		// Lost to the expiry timer while this refresh was in flight:
		// whatever it found, the loss is told.
	case err == nil:
		g.sureUntil = sent.Add(l.life)
		g.expiry.Reset(time.Until(g.sureUntil))
		if g.failures > 0 {
			l.log.LogAttrs(context.Background(), slog.LevelInfo, "memlock: refresh recovered",
				g.attrs(slog.Int("failures", g.failures), slog.Duration("failing_for", time.Since(g.failingSince)))...)
			g.failures = 0
		}
	case errors.Is(err, errLost):
		g.lose(lossCause(err))
	default:
		g.failures++
		if g.failures == 1 {
			g.failingSince = sent
			l.log.LogAttrs(context.Background(), slog.LevelWarn, "memlock: refresh failing",
				g.attrs(slog.Any("err", err), slog.Duration("lost_in", time.Until(g.sureUntil)))...)
		}
	}
	// Once lost, the lock stays lost: a later refresh that succeeds (a
	// paused server that wakes up) would not undo f's cancellation, so
	// refreshing stops. Other errors are retried at the next interval.
	if g.state.Load() == held {
		g.next.Reset(l.opts.refresh)
	}
}

// stop ends the refreshes, waiting for one in flight.
func (g *holding) stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stopped = true
	g.state.CompareAndSwap(held, ended)
	g.next.Stop()
	if g.expiry != nil {
		g.expiry.Stop()
	}
}
