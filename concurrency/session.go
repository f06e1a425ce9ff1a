package concurrency

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
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

	// names tracks the keys this session has handed out and not yet
	// released, so that two Mutex or Election values on one session get
	// different keys and exclude each other (etcd #11360).
	namesMu sync.Mutex
	names   map[string]struct{}
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
	o := sessionOptions{ttl: defaultSessionTTL, ctx: client.Ctx()}
	for _, opt := range opts {
		opt(&o)
	}
	if o.err != nil {
		return nil, o.err
	}
	id := o.leaseID
	if id == clientv3.NoLease {
		resp, err := client.Grant(o.ctx, int64(o.ttl))
		if err != nil {
			return nil, fmt.Errorf("concurrency: grant lease: %w", err)
		}
		id = resp.ID
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
		names:  make(map[string]struct{}),
	}
	go func() {
		defer func() {
			cancel()
			close(s.donec)
		}()
		// The channel closes when the lease is gone (expired or revoked),
		// the context ends, or the client closes.
		for range ka {
		}
	}()
	return s, nil
}

// Client is the etcd client the session was made with.
func (s *Session) Client() *clientv3.Client { return s.client }

// Lease is the session's lease ID.
func (s *Session) Lease() clientv3.LeaseID { return s.id }

// Ctx is a context that ends when the session ends (its keep-alive stops).
func (s *Session) Ctx() context.Context { return s.ctx }

// Done is closed when the session ends: Close, Orphan, the lease expired or
// was revoked, or the client closed.
//
// The client learns of an expiry only from a failed keep-alive, up to a
// third of the TTL after the server dropped the lease. Primitives of this
// package do not wait for that: they watch their own keys, which the server
// deletes with the lease.
func (s *Session) Done() <-chan struct{} { return s.donec }

// Orphan stops keeping the lease alive without revoking it: the lease, and
// every key attached to it, expires after the TTL.
func (s *Session) Orphan() {
	s.cancel()
	<-s.donec
}

// Close orphans the session and revokes the lease, which deletes every key
// attached to it at once.
func (s *Session) Close() error {
	s.Orphan()
	// If the revoke takes longer than the TTL, the lease is expired anyway.
	ctx, cancel := context.WithTimeout(s.opts.ctx, time.Duration(s.opts.ttl)*time.Second)
	defer cancel()
	_, err := s.client.Revoke(ctx, s.id)
	return err
}

// claimName returns a key under dir that no other live handle of this
// session uses. The first handle gets dir + hex(lease), the same key as
// etcd's package and etcdctl, so resuming a session with WithLease finds
// its key again; later concurrent handles get a "-n" suffix.
func (s *Session) claimName(dir string) string {
	base := dir + strconv.FormatInt(int64(s.id), 16)
	s.namesMu.Lock()
	defer s.namesMu.Unlock()
	name := base
	for n := 1; ; n++ {
		if _, taken := s.names[name]; !taken {
			break
		}
		name = base + "-" + strconv.Itoa(n)
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
