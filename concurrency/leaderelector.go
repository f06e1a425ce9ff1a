package concurrency

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/metrics"
)

// Bounds and defaults of LeaderElectionConfig.
const (
	// DefaultElectorTTL is the TTL of a LeaderElectionConfig without one:
	// client-go's usual LeaseDuration.
	DefaultElectorTTL = 15 * time.Second
	// MinElectorTTL is the shortest TTL: etcd's minimum lease TTL with
	// its default raft timing. The server would silently raise a shorter
	// one.
	MinElectorTTL = 2 * time.Second
	// MaxElectorTTL is etcd's longest lease TTL (9e9 s).
	MaxElectorTTL = 9_000_000_000 * time.Second
	// DefaultRetryPeriod is the pause after a failed attempt to campaign.
	DefaultRetryPeriod = 2 * time.Second
)

// keepAliveHeadroom is what the default RenewDeadline leaves beyond TTL/3
// at least: the keep-alive loop's 500 ms tick and a raft leader election.
const keepAliveHeadroom = 1500 * time.Millisecond

// Errors of LeaderElector.
var (
	// ErrInvalidElectorConfig is wrapped by every error of
	// NewLeaderElector, one per bad field.
	ErrInvalidElectorConfig = errors.New("concurrency: invalid leader election config")
	// ErrElectorRunning is returned by Run while another Run of the same
	// LeaderElector is under way.
	ErrElectorRunning = errors.New("concurrency: leader elector already running")
	// ErrWedgedLeader is wrapped by the errors of Check.
	ErrWedgedLeader = errors.New("concurrency: wedged leader")
	// ErrClientClosed is returned by Run when the etcd client closes under
	// it.
	ErrClientClosed = errClientClosed
)

// LeaderElectionConfig configures a LeaderElector. The names are those of
// client-go's leaderelection.LeaderElectionConfig where it has the field;
// the README maps one to the other field by field. NewLeaderElector copies
// the config and never writes to it.
type LeaderElectionConfig struct {
	// Client is the etcd client. Required.
	Client *clientv3.Client
	// Prefix is the election's prefix, as for NewElection: candidates are
	// keys Prefix/hex(lease), the layout of etcd's Election and etcdctl
	// elect. Required.
	Prefix string
	// Identity is the leader's value, which OnNewLeader and GetLeader
	// report. Default: baton's identity of the process, as baton elect
	// writes it: a JSON object with the host and the pid.
	Identity string
	// TTL is the TTL of the session's lease: how long leadership outlives
	// a process that stops renewing it. It is rounded up to whole seconds.
	// Default DefaultElectorTTL (15 s); at least MinElectorTTL (2 s), at
	// most MaxElectorTTL.
	TTL time.Duration
	// RenewDeadline is how long the leader goes on leading without an
	// answer to its keep-alives: past it the leader's context is cancelled
	// (cause ErrLeadershipLost and ErrLeaseUnconfirmed), before the lease
	// can expire on the server at TTL. It sets the session's lease trust
	// (WithLeaseTrust) to RenewDeadline/TTL. It must be more than TTL/3,
	// the keep-alive interval, and less than the TTL.
	//
	// Default: 2/3 of the TTL, client-go's 10 s of 15 s, but at least
	// TTL/3 + 1.5 s and at most the TTL. etcd's client sends a keep-alive
	// TTL/3 after the last answer, on a 500 ms tick, and a raft leader
	// election delays answers by about 1 s; a shorter window would step
	// down a healthy leader. So TTLs of 5 s and more get the full third
	// of the TTL as margin, shorter ones less (TTL/3 + 1.5 s), and a 2 s
	// TTL none: its leader stops when the client deems the lease expired.
	RenewDeadline time.Duration
	// RetryPeriod is the pause after a failed attempt to campaign (no
	// session could be granted, the cluster had no leader), before the
	// next. Campaigning itself does not poll: it watches. Default
	// DefaultRetryPeriod (2 s).
	RetryPeriod time.Duration
	// Callbacks are called on the changes of leadership. OnStartedLeading
	// is required.
	Callbacks LeaderCallbacks
	// ReleaseOnCancel makes Run resign when ctx ends while leading, once
	// OnStartedLeading has returned, so that another candidate can lead at
	// once. Without it the leader key is left to expire with the lease.
	ReleaseOnCancel bool
	// StopOnLoss makes Run return after the first term instead of
	// campaigning again.
	StopOnLoss bool
	// Logger receives the elector's logs (campaigns, terms, retries), and
	// its sessions' (WithLogger); nil: no logs.
	Logger *slog.Logger
	// Metrics records the sessions' and elections' metrics (WithMetrics);
	// nil: none.
	Metrics *metrics.Metrics
}

// LeaderCallbacks are the callbacks of a LeaderElector.
//
// Their order, for one elector:
//
//   - A term is OnStartedLeading followed by OnStoppedLeading.
//     OnStoppedLeading runs once the term's OnStartedLeading has returned
//     (and the release of ReleaseOnCancel is done), and the next term's
//     OnStartedLeading starts only after OnStoppedLeading returned: two
//     terms never overlap.
//   - OnNewLeader runs from a goroutine of its own, one call at a time, in
//     the order the changes happened. It may run at the same time as
//     OnStartedLeading or OnStoppedLeading, and report the elector's own
//     identity shortly before or after OnStartedLeading starts.
//   - Run returns only after every callback it started has returned.
//
// A panic in a callback is not recovered: it ends the process.
type LeaderCallbacks struct {
	// OnStartedLeading runs in a goroutine of its own when the elector
	// becomes leader. Its ctx is cancelled the moment leadership ends: the
	// lease expired or went unconfirmed for RenewDeadline, the leader key
	// was deleted, or Run's ctx ended. context.Cause(ctx) is then
	// ErrLeadershipLost (wrapping ErrLeaseUnconfirmed when the keep-alives
	// went unanswered), or the cause of Run's ctx. Returning early does
	// not end the term: the elector leads until it loses or Run's ctx
	// ends, as in client-go. Required.
	OnStartedLeading func(ctx context.Context, l *Leadership)
	// OnStoppedLeading runs once after each term, when OnStartedLeading
	// has returned. It never runs for an elector that did not lead.
	OnStoppedLeading func()
	// OnNewLeader runs each time the leader changes: another candidate, a
	// new term of the same one, a new value proclaimed, or "" when nobody
	// leads. It is not called for the state found at start when nobody
	// leads then.
	OnNewLeader func(identity string)
}

// Leadership is one term of a LeaderElector, given to OnStartedLeading.
// It stays valid after the term: its methods then fail or report the
// term's values.
type Leadership struct {
	c    *clientv3.Client
	s    *Session
	key  string
	rev  int64
	done <-chan struct{}
}

// Rev is the term's fencing token: the create revision of the leader key,
// strictly greater than that of every earlier term of any candidate. Pass
// it to resources outside etcd, which should reject lower tokens than the
// highest they have seen.
func (l *Leadership) Rev() int64 { return l.rev }

// Key is the leader key of the term.
func (l *Leadership) Key() string { return l.key }

// Session is the session of the term. It may be orphaned or closed once
// the term ends.
func (l *Leadership) Session() *Session { return l.s }

// Guard commits ops in one transaction only if the leader key still exists
// with the term's create revision, which etcd checks with the commit. It
// returns ErrLeadershipLost, and commits nothing, when the term is over:
// after its ctx was cancelled Guard fails without asking the server.
func (l *Leadership) Guard(ctx context.Context, ops ...clientv3.Op) (*clientv3.TxnResponse, error) {
	select {
	case <-l.done:
		return nil, ErrLeadershipLost
	default:
	}
	resp, err := guard(ctx, l.c, l.key, l.rev, ErrLeadershipLost, ops)
	if err != nil && !errors.Is(err, ErrLeadershipLost) {
		return nil, ctxErr(ctx, err)
	}
	return resp, err
}

// LeaderElector is a candidate in an election that runs callbacks as it
// gains and loses leadership, in the shape of client-go's
// leaderelection.LeaderElector, with a fencing token per term. It is safe
// for use by several goroutines.
type LeaderElector struct {
	cfg   LeaderElectionConfig
	ttl   int // seconds
	trust float64
	log   *slog.Logger

	running atomic.Bool

	mu      sync.Mutex // guards the fields below
	leader  string     // identity of the leader last observed
	term    int64      // number of the current or last term
	open    bool       // a term started and OnStoppedLeading has not run
	leading bool       // the open term's ctx is not cancelled
	lostAt  time.Time  // when the open term's ctx was cancelled
	sess    *Session   // the open term's session
}

// NewLeaderElector checks cfg and makes a LeaderElector. It writes nothing
// to the server. Every bad field is reported, each by an error wrapping
// ErrInvalidElectorConfig (and ErrNilClient, ErrEmptyPrefix or
// ErrInvalidTTL where they fit), joined.
func NewLeaderElector(cfg LeaderElectionConfig) (*LeaderElector, error) {
	var errs []error
	bad := func(field string, err error, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: %s: %w: %s", ErrInvalidElectorConfig, field, err, msg))
		} else {
			errs = append(errs, fmt.Errorf("%w: %s: %s", ErrInvalidElectorConfig, field, msg))
		}
	}
	if cfg.Client == nil {
		bad("Client", ErrNilClient, "an etcd client is required")
	}
	if cfg.Prefix == "" {
		bad("Prefix", ErrEmptyPrefix, "the election's prefix is required")
	}
	if cfg.Callbacks.OnStartedLeading == nil {
		bad("Callbacks.OnStartedLeading", nil, "required: it is what the leader does")
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultElectorTTL
	}
	ttlOK := true
	switch {
	case cfg.TTL < MinElectorTTL:
		bad("TTL", ErrInvalidTTL, "%v is below etcd's minimum lease TTL of %v", cfg.TTL, MinElectorTTL)
		ttlOK = false
	case cfg.TTL > MaxElectorTTL:
		bad("TTL", ErrInvalidTTL, "%v is above etcd's maximum lease TTL of %v", cfg.TTL, MaxElectorTTL)
		ttlOK = false
	}
	secs := int(math.Ceil(cfg.TTL.Seconds()))
	ttl := time.Duration(secs) * time.Second
	trust := min(max(2.0/3, (float64(ttl)/3+float64(keepAliveHeadroom))/float64(ttl)), 1)
	switch {
	case cfg.RenewDeadline < 0:
		bad("RenewDeadline", nil, "%v is negative", cfg.RenewDeadline)
	case cfg.RenewDeadline > 0 && ttlOK:
		if cfg.RenewDeadline <= ttl/3 || cfg.RenewDeadline >= ttl {
			bad("RenewDeadline", nil, "%v must be more than a third of the TTL %v (the keep-alive interval) and less than the TTL", cfg.RenewDeadline, ttl)
		}
		trust = float64(cfg.RenewDeadline) / float64(ttl)
	}
	if cfg.RetryPeriod < 0 {
		bad("RetryPeriod", nil, "%v is negative", cfg.RetryPeriod)
	} else if cfg.RetryPeriod == 0 {
		cfg.RetryPeriod = DefaultRetryPeriod
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if cfg.Identity == "" {
		cfg.Identity = processIdentity()
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("election", cfg.Prefix)
	return &LeaderElector{cfg: cfg, ttl: secs, trust: trust, log: log}, nil
}

// processIdentity is the value baton elect writes without a proposal: the
// process's host and pid, and since when it campaigns.
func processIdentity() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown-host"
	}
	b, _ := json.Marshal(struct {
		Baton  int       `json:"baton"`
		Kind   string    `json:"kind"`
		Host   string    `json:"host"`
		PID    int       `json:"pid"`
		Queued time.Time `json:"queued"`
	}{1, "election", host, os.Getpid(), time.Now().UTC()})
	return string(b)
}

// Identity is the value this elector campaigns with.
func (le *LeaderElector) Identity() string { return le.cfg.Identity }

// IsLeader reports whether this elector leads: from just before
// OnStartedLeading starts until its ctx is cancelled.
func (le *LeaderElector) IsLeader() bool {
	le.mu.Lock()
	defer le.mu.Unlock()
	return le.leading
}

// GetLeader returns the identity of the leader last observed, "" when
// nobody leads or Run has not observed the election yet. It follows
// OnNewLeader, which may lag IsLeader by an event.
func (le *LeaderElector) GetLeader() string {
	le.mu.Lock()
	defer le.mu.Unlock()
	return le.leader
}

// Check is a health check for a leader that is wedged: it returns an error
// wrapping ErrWedgedLeader when the elector believes it leads but its
// session has had no keep-alive answered for longer than the TTL plus
// maxTolerableExpiredLease, or when leadership ended more than
// maxTolerableExpiredLease ago and OnStartedLeading has still not
// returned (it goes on acting without leadership). It returns nil
// otherwise, and always for an elector that does not lead: a standby is
// healthy.
func (le *LeaderElector) Check(maxTolerableExpiredLease time.Duration) error {
	le.mu.Lock()
	open, leading, lostAt, s := le.open, le.leading, le.lostAt, le.sess
	le.mu.Unlock()
	if !open {
		return nil
	}
	if !leading {
		if d := time.Since(lostAt); d > maxTolerableExpiredLease {
			return fmt.Errorf("%w: leadership of %s ended %v ago and OnStartedLeading has not returned",
				ErrWedgedLeader, le.cfg.Prefix, d.Round(time.Millisecond))
		}
		return nil
	}
	at, ttl := s.KeepAliveAnswered()
	if d := time.Since(at); d > ttl+maxTolerableExpiredLease {
		return fmt.Errorf("%w: leading %s, but no keep-alive answered for %v (TTL %v, tolerance %v)",
			ErrWedgedLeader, le.cfg.Prefix, d.Round(time.Millisecond), ttl, maxTolerableExpiredLease)
	}
	return nil
}

// HealthzHandler returns an http.Handler that answers 200 "ok" while Check
// passes and 500 with Check's error otherwise, for a liveness probe.
func (le *LeaderElector) HealthzHandler(maxTolerableExpiredLease time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := le.Check(maxTolerableExpiredLease); err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintln(w, err)
			return
		}
		fmt.Fprintln(w, "ok")
	})
}

// Run campaigns, leads, and campaigns again, until ctx ends. It blocks.
//
//  1. It grants a session (TTL, lease trust from RenewDeadline) and
//     campaigns with Identity. Failures that may pass (no session granted,
//     no leader in the cluster) are logged and retried after RetryPeriod.
//  2. Once leader it calls OnStartedLeading in a goroutine with a ctx that
//     ends with the term (see LeaderCallbacks), and waits for the term to
//     end and then for OnStartedLeading to return.
//  3. After a loss it calls OnStoppedLeading, resigns if the key is still
//     its own, drops the session if its lease expired or went
//     unconfirmed, and goes back to 1, on a new session if needed. When
//     ctx ended it resigns with ReleaseOnCancel, or else orphans the
//     session so that the key expires with the lease; then it calls
//     OnStoppedLeading and returns.
//
// It returns ctx.Err() when ctx ends; with StopOnLoss, an error wrapping
// ErrLeadershipLost (and the loss's cause) after the first lost term;
// ErrElectorRunning while another Run is under way; and, not retried,
// ErrClientClosed when the client closes, or the server's refusal when the
// client lacks permission or authentication (rpctypes.ErrPermissionDenied
// and the like). Run may be called again after it returned.
func (le *LeaderElector) Run(ctx context.Context) error {
	if !le.running.CompareAndSwap(false, true) {
		return ErrElectorRunning
	}
	defer le.running.Store(false)
	octx, stopObserver := context.WithCancel(ctx)
	observed := make(chan struct{})
	go func() {
		defer close(observed)
		le.observe(octx)
	}()
	defer func() {
		stopObserver()
		<-observed
	}()

	var s *Session
	var cancelSession context.CancelFunc
	drop := func(revoke bool) {
		if s == nil {
			return
		}
		le.log.Debug("dropping session", "lease", fmt.Sprintf("%x", s.Lease()), "revoke", revoke)
		if revoke {
			le.revoke(ctx, s)
		} else {
			s.Orphan()
		}
		cancelSession()
		s, cancelSession = nil, nil
	}
	for {
		if err := ctx.Err(); err != nil {
			drop(true)
			return err
		}
		if le.cfg.Client.Ctx().Err() != nil {
			// Without this check, a grant on the closed client would
			// fail only after the client's retries, seconds later.
			drop(false)
			return ErrClientClosed
		}
		if s != nil && isDone(s.Done()) {
			drop(false)
		}
		if s == nil {
			var err error
			s, cancelSession, err = le.newSession(ctx)
			if err != nil {
				if ferr := le.fatal(ctx, err); ferr != nil {
					return ferr
				}
				le.log.Warn("no session; retrying", "err", err, "retry", le.cfg.RetryPeriod)
				le.pause(ctx)
				continue
			}
		}
		e := NewElection(s, le.cfg.Prefix)
		le.log.Debug("campaigning", "lease", fmt.Sprintf("%x", s.Lease()))
		if err := e.Campaign(ctx, le.cfg.Identity); err != nil {
			switch {
			case ctx.Err() != nil:
				continue // dropped and returned at the top
			case errors.Is(err, ErrSessionExpired), errors.Is(err, rpctypes.ErrLeaseNotFound):
				le.log.Info("session expired while campaigning")
				drop(false)
				continue
			}
			if ferr := le.fatal(ctx, err); ferr != nil {
				drop(true)
				return ferr
			}
			le.log.Warn("campaign failed; retrying", "err", err, "retry", le.cfg.RetryPeriod)
			le.pause(ctx)
			continue
		}
		cause := le.lead(ctx, s, e)
		// A term that ended for any reason but Run's ctx is a loss.
		lost := ctx.Err() == nil || errors.Is(cause, ErrLeadershipLost)
		if !lost {
			if le.cfg.ReleaseOnCancel {
				le.resign(ctx, e)
				drop(true)
			} else {
				// The key expires with the lease, as client-go leaves its
				// lock.
				drop(false)
			}
			le.stopped()
			return ctx.Err()
		}
		// Lost: OnStoppedLeading first, since the cleanup below can take
		// a request timeout when the cluster is out of reach.
		le.stopped()
		le.resign(ctx, e)
		if errors.Is(cause, ErrLeaseUnconfirmed) || isDone(s.Done()) || !le.leaseAlive(ctx, s) {
			drop(false)
		}
		if le.cfg.StopOnLoss {
			drop(true)
			return fmt.Errorf("concurrency: leader elector %s: %w", le.cfg.Prefix, cause)
		}
	}
}

// newSession grants the session of the next campaign. Its context is not
// ctx: the session must outlive ctx while OnStartedLeading finishes under
// ReleaseOnCancel, so Run ends it itself (Orphan or revoke). Only the
// grant is bounded by ctx.
func (le *LeaderElector) newSession(ctx context.Context) (*Session, context.CancelFunc, error) {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	s, err := NewSession(le.cfg.Client, WithTTL(le.ttl), WithLeaseTrust(le.trust), WithContext(sctx),
		WithLogger(le.cfg.Logger), WithMetrics(le.cfg.Metrics))
	if !stop() && err == nil {
		// ctx ended during the grant: the keep-alive may already be over.
		err = ctx.Err()
		le.revoke(ctx, s)
	}
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return s, cancel, nil
}

// lead runs one term on e, which leads, and returns the cause of its end:
// ErrLeadershipLost (possibly wrapping more) for a loss, else the cause of
// ctx's end.
func (le *LeaderElector) lead(ctx context.Context, s *Session, e *Election) error {
	hctx, cancel := e.HoldContext(ctx)
	defer cancel()
	l := &Leadership{c: s.Client(), s: s, key: e.Key(), rev: e.Rev(), done: hctx.Done()}
	le.mu.Lock()
	le.term++
	term := le.term
	le.open, le.leading, le.lostAt, le.sess = true, true, time.Time{}, s
	le.mu.Unlock()
	stop := context.AfterFunc(hctx, func() {
		le.mu.Lock()
		if le.term == term && le.leading {
			le.leading, le.lostAt = false, time.Now()
		}
		le.mu.Unlock()
	})
	defer stop()
	le.log.Info("leading", "key", l.key, "rev", l.rev)

	returned := make(chan struct{})
	go func() {
		defer close(returned)
		le.cfg.Callbacks.OnStartedLeading(hctx, l)
	}()
	<-hctx.Done()
	cause := context.Cause(hctx)
	le.mu.Lock()
	if le.leading {
		le.leading, le.lostAt = false, time.Now()
	}
	le.mu.Unlock()
	le.log.Info("leadership ended; waiting for OnStartedLeading to return", "cause", cause)
	<-returned
	return cause
}

// stopped ends the open term: OnStoppedLeading runs, then the term is
// closed for Check.
func (le *LeaderElector) stopped() {
	if f := le.cfg.Callbacks.OnStoppedLeading; f != nil {
		f()
	}
	le.mu.Lock()
	le.open, le.sess = false, nil
	le.mu.Unlock()
}

// resign deletes the leader key if it is still the term's, with a timeout
// of its own, since ctx may be over.
func (le *LeaderElector) resign(ctx context.Context, e *Election) {
	rctx, cancel := cleanupCtx(ctx, le.cfg.Client)
	defer cancel()
	if err := e.Resign(rctx); err != nil && !errors.Is(err, ErrLeadershipLost) {
		le.log.Warn("resign failed; the key expires with the lease", "err", err)
	}
}

// revoke orphans s and revokes its lease, with a timeout of its own
// (Session.Close would wait up to a TTL for an unreachable cluster).
func (le *LeaderElector) revoke(ctx context.Context, s *Session) {
	s.Orphan()
	rctx, cancel := cleanupCtx(ctx, le.cfg.Client)
	defer cancel()
	if _, err := le.cfg.Client.Revoke(rctx, s.Lease()); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		le.log.Debug("revoke failed; the lease expires by itself", "err", err)
	}
}

// leaseAlive asks the server whether the lease of s is still granted: a
// revoked lease deletes the leader key at once, but the keep-alive learns
// of it only at its next round, up to TTL/3 later.
func (le *LeaderElector) leaseAlive(ctx context.Context, s *Session) bool {
	rctx, cancel := cleanupCtx(ctx, le.cfg.Client)
	defer cancel()
	r, err := le.cfg.Client.TimeToLive(rctx, s.Lease())
	return err == nil && r.TTL > 0
}

// fatal returns the error Run returns for err, or nil when err is worth
// retrying.
func (le *LeaderElector) fatal(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case le.cfg.Client.Ctx().Err() != nil:
		return ErrClientClosed
	case errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrUserEmpty),
		errors.Is(err, rpctypes.ErrAuthFailed), errors.Is(err, rpctypes.ErrInvalidAuthToken),
		errors.Is(err, rpctypes.ErrInvalidAuthMgmt), errors.Is(err, rpctypes.ErrRequestTooLarge):
		return fmt.Errorf("concurrency: leader elector %s: %w", le.cfg.Prefix, err)
	}
	switch status.Code(err) {
	case codes.PermissionDenied, codes.Unauthenticated:
		return fmt.Errorf("concurrency: leader elector %s: %w", le.cfg.Prefix, err)
	}
	return nil
}

// pause waits RetryPeriod or until ctx ends.
func (le *LeaderElector) pause(ctx context.Context) {
	t := time.NewTimer(le.cfg.RetryPeriod)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// observe follows the election for OnNewLeader and GetLeader until ctx
// ends. It needs only the client, not a session of its own.
func (le *LeaderElector) observe(ctx context.Context) {
	obs := &Election{s: &Session{client: le.cfg.Client}, pfx: le.cfg.Prefix + "/"}
	var key, id string
	var rev int64
	obs.observe(ctx, func(ev LeaderEvent) bool {
		k, v, r := "", "", int64(0)
		if ev.Leader != nil {
			k, v, r = string(ev.Leader.Key), string(ev.Leader.Value), ev.Leader.CreateRevision
		}
		if k == key && v == id && r == rev {
			return true
		}
		key, id, rev = k, v, r
		le.mu.Lock()
		le.leader = v
		le.mu.Unlock()
		le.log.Debug("new leader", "identity", v, "key", k)
		if f := le.cfg.Callbacks.OnNewLeader; f != nil {
			f(v)
		}
		return true
	})
}

func isDone(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
