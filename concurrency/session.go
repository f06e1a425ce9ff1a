package concurrency

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/internal/layout"
	"github.com/batonhq/baton/internal/obs"
)

// defaultSessionTTL is the lease TTL in seconds when WithTTL is not given,
// the same as etcd's package.
const defaultSessionTTL = 60

// Errors of NewSession.
var (
	// ErrNilClient is returned when a nil *clientv3.Client is given.
	ErrNilClient = errors.New("concurrency: nil client")
	// ErrNilSession is returned by calls on a primitive made from a nil
	// *Session.
	ErrNilSession = errors.New("concurrency: nil session")
	// ErrInvalidTTL is returned by NewSession when WithTTL got a value <= 0.
	// etcd's package logs a warning and keeps the default; baton refuses.
	ErrInvalidTTL = errors.New("concurrency: session TTL must be > 0")
	// ErrEmptyPrefix is returned when a primitive is made with an empty
	// prefix: its keys would live at the root of the keyspace, beside
	// unrelated data.
	ErrEmptyPrefix = errors.New("concurrency: empty prefix")
	// ErrWaitsOnItself is returned by Lock, TryLock and Campaign when the
	// call would queue behind a key of its own session: default handles
	// and WithExclusive handles mixed on one session and prefix. Use one
	// kind per session and prefix.
	ErrWaitsOnItself = errors.New("concurrency: would wait on its own session")
	// ErrInvalidLeaseTrust is returned by NewSession when WithLeaseTrust got
	// a fraction outside (0, 1].
	ErrInvalidLeaseTrust = errors.New("concurrency: lease trust must be in (0, 1]")
	// ErrLeaseUnconfirmed is part of the cause of a holder's context (see
	// HoldContext, WithLock, WithLeadership) that ended because no
	// keep-alive of the session was answered for its trust window
	// (WithLeaseTrust): the lease may be expiring on the server although the
	// server has not said so. The cause also matches the primitive's "lost"
	// error (ErrLockLost, ErrLeadershipLost).
	ErrLeaseUnconfirmed = errors.New("concurrency: lease unconfirmed: no keep-alive answered in time")
)

// Session is a lease kept alive for as long as the session lives. Keys that
// the primitives of this package write are attached to the lease, so they
// vanish when the session ends: on Close, on Orphan followed by the TTL, or
// when the process dies and keep-alives stop.
//
// A Session is safe for use by several goroutines.
type Session struct {
	client *clientv3.Client
	opts   sessionOptions
	id     clientv3.LeaseID

	ctx    context.Context
	cancel context.CancelFunc
	donec  chan struct{}

	// endc closes when the lease is gone as far as the keep-alive can tell:
	// the server said so, no answer came for a TTL, or the client closed.
	// It does not close on Orphan: an orphaned lease lives on until the
	// server expires it, and waiters go on until then (they watch their
	// own keys, which the server deletes with the lease).
	endc chan struct{}
	// lostc closes when endc does, or, once the session is orphaned, when
	// the lease has expired by the client's reckoning (a TTL after the
	// last keep-alive answer). Holders take it as the loss of what they
	// hold: the server may already have handed it on.
	lostc   chan struct{}
	endOnce sync.Once
	// lastAnswer and lastTTL are the time of the last keep-alive answer
	// (or of the grant) and the TTL it gave; guarded by namesMu.
	lastAnswer time.Time
	lastTTL    time.Duration
	lostTimer  *time.Timer

	// names tracks the keys this session has handed out to handles that
	// asked for keys of their own (WithExclusive, the recipes), so that
	// they exclude each other (etcd #11360).
	namesMu sync.Mutex
	names   map[string]struct{}
	// shared tracks the keys that handles on this session share by
	// default: every Mutex (or Election) on one prefix and session is the
	// same participant, as in etcd's package.
	shared map[string]*participant
}

// participant is a key shared by the handles of one session on one prefix.
// users counts the handles that wait for it or hold it: the key is deleted
// after a failed Lock or Campaign only when no other handle still uses it.
// released is the create revision of the last acquisition that a handle of
// this session released on purpose, so that the other handles of that
// acquisition see a release, not a loss. exclusive counts handles with keys
// of their own (WithExclusive) on the same prefix.
type participant struct {
	op        sync.Mutex // serializes joins, cleanups and releases (slot.serialize)
	users     int
	released  int64
	exclusive int
}

// NewSession grants a lease (or adopts one given WithLease) and keeps it
// alive until Close, Orphan, or the end of the context given WithContext
// (default: the client's context).
//
// Unlike etcd's package, invalid options are errors rather than warnings.
func NewSession(client *clientv3.Client, opts ...SessionOption) (*Session, error) {
	if client == nil {
		return nil, ErrNilClient
	}
	o := sessionOptions{ttl: defaultSessionTTL, ctx: client.Ctx(), trust: defaultLeaseTrust}
	for _, opt := range opts {
		opt(&o)
	}
	if o.err != nil {
		return nil, o.err
	}
	id := o.leaseID
	answered, ttl := time.Now(), time.Duration(o.ttl)*time.Second
	if id == clientv3.NoLease {
		// A grant whose answer was lost is sent again (repeated): the
		// lease it may have made is never kept alive and expires after
		// the TTL.
		gctx, stop := withClient(o.ctx, client)
		start := time.Now()
		var resp *clientv3.LeaseGrantResponse
		err := repeated(gctx, client, func(error) bool { return time.Since(start) < leaderWait }, func(actx context.Context) (err error) {
			resp, err = client.Grant(actx, int64(o.ttl))
			return err
		})
		stop()
		if err != nil {
			return nil, fmt.Errorf("concurrency: grant lease: %w", err)
		}
		id, answered, ttl = resp.ID, time.Now(), time.Duration(resp.TTL)*time.Second
	}
	ctx, cancel := context.WithCancel(o.ctx)
	ka, err := client.KeepAlive(ctx, id)
	if err != nil || ka == nil {
		cancel()
		if err == nil {
			err = errors.New("no keep-alive channel")
		}
		return nil, fmt.Errorf("concurrency: keep lease alive: %w", err)
	}
	s := &Session{
		client: client,
		opts:   o,
		id:     id,
		ctx:    ctx,
		cancel: cancel,
		donec:  make(chan struct{}),
		endc:   make(chan struct{}),
		lostc:  make(chan struct{}),
		names:  make(map[string]struct{}),
		shared: make(map[string]*participant),

		lastAnswer: answered,
		lastTTL:    ttl,
	}
	go func() {
		// The channel closes when the lease is gone (expired or revoked),
		// the context ends (Orphan, Close, WithContext), or the client
		// closes.
		s.keepAlive(ka)
		orphaned := ctx.Err() != nil && client.Ctx().Err() == nil
		cancel()
		if !orphaned && client.Ctx().Err() == nil {
			s.opts.rec.SessionExpired()
			s.logWarn("session expired: the lease is gone")
		}
		if orphaned {
			s.namesMu.Lock()
			left := time.Until(s.lastAnswer.Add(s.lastTTL))
			s.lostTimer = time.AfterFunc(left, func() {
				s.endOnce.Do(func() { close(s.lostc) })
			})
			s.namesMu.Unlock()
		} else {
			s.ended()
		}
		close(s.donec)
	}()
	return s, nil
}

// keepAlive takes the keep-alive's answers until its channel closes. A
// silence of half a TTL counts as a failed round (metrics) and is logged
// once, with its end when answers come back.
func (s *Session) keepAlive(ka <-chan *clientv3.LeaseKeepAliveResponse) {
	half := func(ttl time.Duration) time.Duration { return max(ttl/2, 500*time.Millisecond) }
	_, ttl := s.KeepAliveAnswered()
	late := time.NewTimer(half(ttl))
	defer late.Stop()
	silent := false
	for {
		select {
		case resp, ok := <-ka:
			if !ok {
				return
			}
			now, ttl := time.Now(), time.Duration(resp.TTL)*time.Second
			s.namesMu.Lock()
			last := s.lastAnswer
			s.lastAnswer, s.lastTTL = now, ttl
			s.namesMu.Unlock()
			if silent {
				silent = false
				s.logInfo("session keep-alive answered again", slog.Duration("silent", now.Sub(last).Round(time.Millisecond)))
			}
			late.Reset(half(ttl))
		case <-late.C:
			at, ttl := s.KeepAliveAnswered()
			s.opts.rec.KeepAliveFailed()
			if !silent {
				silent = true
				s.logWarn("session keep-alive unanswered", slog.Duration("since", time.Since(at).Round(time.Millisecond)), slog.Duration("ttl", ttl))
			}
			late.Reset(half(ttl))
		}
	}
}

// ended marks the lease as gone: endc and lostc close.
func (s *Session) ended() {
	s.endOnce.Do(func() { close(s.lostc) })
	s.namesMu.Lock()
	defer s.namesMu.Unlock()
	if s.lostTimer != nil {
		s.lostTimer.Stop()
	}
	select {
	case <-s.endc:
	default:
		close(s.endc)
	}
}

// expired is closed when the lease is gone as the keep-alive sees it (not
// on Orphan). Waiters give up then.
func (s *Session) expired() <-chan struct{} { return s.endc }

// lost is closed when the lease is gone, or an orphaned lease's TTL has run
// out since the last keep-alive answer. Holders report a loss then.
func (s *Session) lost() <-chan struct{} { return s.lostc }

// KeepAliveAnswered returns when the server last answered a keep-alive of
// the session (or granted its lease), as this process's clock saw the
// answer arrive, and the TTL that answer gave.
func (s *Session) KeepAliveAnswered() (at time.Time, ttl time.Duration) {
	s.namesMu.Lock()
	defer s.namesMu.Unlock()
	return s.lastAnswer, s.lastTTL
}

// TTL is the lease's TTL as the server last gave it.
func (s *Session) TTL() time.Duration {
	_, ttl := s.KeepAliveAnswered()
	return ttl
}

// LeaseTrust is the fraction of the TTL set with WithLeaseTrust.
func (s *Session) LeaseTrust() float64 { return s.opts.trust }

// distrusted waits until no keep-alive has been answered for the trust
// window and returns an error that matches ErrLeaseUnconfirmed and says for
// how long, or returns nil when ctx ends first. The window restarts with
// every answer.
func (s *Session) distrusted(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		at, ttl := s.KeepAliveAnswered()
		window := time.Duration(float64(ttl) * s.opts.trust)
		if age := time.Since(at); age >= window {
			return fmt.Errorf("%w: none for %s of the %s TTL", ErrLeaseUnconfirmed, age.Truncate(100*time.Millisecond), ttl)
		}
		t.Reset(time.Until(at.Add(window)))
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Client is the etcd client the session was made with.
func (s *Session) Client() *clientv3.Client { return s.client }

// Lease is the session's lease ID.
func (s *Session) Lease() clientv3.LeaseID { return s.id }

// Ctx is a context that ends when the session ends (its keep-alive stops).
func (s *Session) Ctx() context.Context { return s.ctx }

// Done is closed when the session stops keeping its lease alive: Close,
// Orphan, the end of the context given WithContext, the lease expired or
// was revoked, or the client closed. This is etcd's meaning: after Orphan,
// Done is closed although the lease lives on until its TTL runs out.
//
// The client learns of an expiry only from a failed keep-alive, up to a
// third of the TTL after the server dropped the lease. Primitives of this
// package do not wait for that: they watch their own keys, which the server
// deletes with the lease.
func (s *Session) Done() <-chan struct{} { return s.donec }

// Orphan stops keeping the lease alive without revoking it: the lease, and
// every key attached to it, expires after the TTL. Waiters and holders on
// the session go on until then, as in etcd's package: a waiter still takes
// its turn if it comes before the lease expires, and WithLock and
// HoldContext report the loss when the server deletes the key, or a TTL
// after the last keep-alive answer, whichever they see first.
func (s *Session) Orphan() {
	s.cancel()
	<-s.donec
}

// Close orphans the session and revokes the lease, which deletes every key
// attached to it at once. The revoke ends at once when the client closes.
func (s *Session) Close() error {
	s.Orphan()
	// If the revoke takes longer than the TTL, the lease is expired anyway.
	ctx, cancel := context.WithTimeout(s.opts.ctx, time.Duration(s.opts.ttl)*time.Second)
	defer cancel()
	ctx, stop := withClient(ctx, s.client)
	defer stop()
	unknown := false
	err := repeated(ctx, s.client, func(error) bool {
		unknown = true
		return true
	}, func(actx context.Context) error {
		_, err := s.client.Revoke(actx, s.id)
		if unknown && errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return nil // an attempt whose answer was lost revoked it
		}
		return err
	})
	if err == nil || s.client.Ctx().Err() != nil {
		s.ended()
	}
	return err
}

// sharedName is the key that every default handle of this session uses
// under dir: dir + hex(lease), the key of etcd's package and etcdctl, so
// resuming a session with WithLease finds its key again.
func (s *Session) sharedName(dir string) string {
	return layout.Own(dir, int64(s.id))
}

// useShared registers a default handle as a user of the shared key under
// dir. It fails when a handle with a key of its own (WithExclusive) uses
// dir on this session: the shared key could then wait behind it, or it
// behind the shared key, within one session.
func (s *Session) useShared(dir string) (string, error) {
	s.namesMu.Lock()
	defer s.namesMu.Unlock()
	p := s.shared[dir]
	if p == nil {
		p = &participant{}
		s.shared[dir] = p
	}
	if p.exclusive > 0 {
		return "", fmt.Errorf("%w: %q is in use by a handle made WithExclusive on this session, which a default handle would queue behind", ErrWaitsOnItself, dir)
	}
	p.users++
	return s.sharedName(dir), nil
}

// doneShared ends a default handle's use of the shared key under dir. It
// reports whether no other handle uses it now, so that the caller may
// delete it; released records that the acquisition created at rev was
// released on purpose.
func (s *Session) doneShared(dir string, rev int64, released bool) (last bool) {
	s.namesMu.Lock()
	defer s.namesMu.Unlock()
	p := s.shared[dir]
	if p == nil {
		return true
	}
	if released {
		p.released = rev
	}
	p.users--
	return p.users <= 0
}

// releasedShared reports whether a handle of this session released the
// acquisition of the shared key under dir created at rev.
func (s *Session) releasedShared(dir string, rev int64) bool {
	s.namesMu.Lock()
	defer s.namesMu.Unlock()
	p := s.shared[dir]
	return p != nil && p.released == rev
}

// claimExclusive is claimName for a handle that wants a key of its own
// (WithExclusive): always dir + hex(lease) + "-n", never the shared key.
func (s *Session) claimExclusive(dir string) (string, error) {
	s.namesMu.Lock()
	p := s.shared[dir]
	if p == nil {
		p = &participant{}
		s.shared[dir] = p
	}
	if p.users > 0 {
		s.namesMu.Unlock()
		return "", fmt.Errorf("%w: %q is in use by a default handle on this session, which a WithExclusive handle would queue behind", ErrWaitsOnItself, dir)
	}
	p.exclusive++
	s.namesMu.Unlock()
	return s.claim(dir, 1), nil
}

// releaseExclusive makes a key claimed with claimExclusive available again.
func (s *Session) releaseExclusive(dir, name string) {
	s.releaseName(name)
	s.namesMu.Lock()
	if p := s.shared[dir]; p != nil {
		p.exclusive--
	}
	s.namesMu.Unlock()
}

// claimName returns a key under dir that no other live handle of this
// session uses. The first handle gets dir + hex(lease), the same key as
// etcd's package and etcdctl, so resuming a session with WithLease finds
// its key again; later concurrent handles get a "-n" suffix.
func (s *Session) claimName(dir string) string { return s.claim(dir, 0) }

// claim is claimName with suffixes starting at from (0: none).
func (s *Session) claim(dir string, from int) string {
	base := s.sharedName(dir)
	s.namesMu.Lock()
	defer s.namesMu.Unlock()
	name := base
	if from > 0 {
		name = layout.Claim(base, from)
	}
	for n := from + 1; ; n++ {
		if _, taken := s.names[name]; !taken {
			break
		}
		name = layout.Claim(base, n)
	}
	s.names[name] = struct{}{}
	return name
}

// releaseName makes a key claimed with claimName available again.
func (s *Session) releaseName(name string) {
	s.namesMu.Lock()
	delete(s.names, name)
	s.namesMu.Unlock()
}

type sessionOptions struct {
	rec     *obs.Recorder
	log     *slog.Logger
	trust   float64
	ttl     int
	leaseID clientv3.LeaseID
	ctx     context.Context
	err     error
}

// SessionOption configures a Session.
type SessionOption func(*sessionOptions)

// WithTTL sets the lease TTL in seconds. Default 60. The server raises TTLs
// below its minimum (about 2 s with default raft timing). A TTL <= 0 makes
// NewSession fail with ErrInvalidTTL.
func WithTTL(ttl int) SessionOption {
	return func(o *sessionOptions) {
		if ttl <= 0 {
			o.err = fmt.Errorf("%w (got %d)", ErrInvalidTTL, ttl)
			return
		}
		o.ttl = ttl
	}
}

// defaultLeaseTrust is the trust window's fraction of the TTL when
// WithLeaseTrust is not given: a hold is given up when a whole TTL has gone
// by without a keep-alive answer, when the lease has expired on the server
// unless a new raft leader extended it.
const defaultLeaseTrust = 1.0

// WithLeaseTrust sets how long holders on the session trust the lease
// without news from the server: once no keep-alive has been answered for
// fraction × TTL, the contexts of HoldContext, WithLock and WithLeadership
// end with a cause that matches both ErrLeaseUnconfirmed and the
// primitive's "lost" error, although the server may still keep the lease.
// A holder cut off from the cluster then stops acting before the server can
// expire its lease and hand the lock on; the margin is (1 - fraction) × TTL
// less the time a cancelled holder needs to stop.
//
// The default is 1: a hold ends a whole TTL after the last answer, and no
// earlier than the server's own expiry. It is not lower by default because
// the right fraction depends on the TTL: etcd's client sends a keep-alive a
// third of the TTL after the last answer, checked every 500 ms, so a window
// must cover at least one such cycle plus a raft leader election (about 1 s
// with etcd's default timing), or a hold ends falsely. 2/3 suits TTLs of
// 5 s and more (`baton lock` and `baton elect` use it with their 10 s
// default); with a TTL of 2 s, leave the default. A fraction outside
// (0, 1] makes NewSession fail with ErrInvalidLeaseTrust.
func WithLeaseTrust(fraction float64) SessionOption {
	return func(o *sessionOptions) {
		if !(fraction > 0 && fraction <= 1) {
			o.err = fmt.Errorf("%w (got %v)", ErrInvalidLeaseTrust, fraction)
			return
		}
		o.trust = fraction
	}
}

// WithLease makes the session keep an existing lease alive instead of
// granting a new one: a restarted process resumes its keys this way.
func WithLease(leaseID clientv3.LeaseID) SessionOption {
	return func(o *sessionOptions) { o.leaseID = leaseID }
}

// WithContext sets the context that bounds the session: the grant, the
// keep-alive and the revoke in Close. Default: the client's context.
// Cancelling it orphans the session.
func WithContext(ctx context.Context) SessionOption {
	return func(o *sessionOptions) {
		if ctx == nil {
			o.err = errors.New("concurrency: nil context in WithContext")
			return
		}
		o.ctx = ctx
	}
}
