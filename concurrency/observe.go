package concurrency

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/batonhq/baton/internal/obs"
	"github.com/batonhq/baton/metrics"
)

// WithMetrics makes the session, and every Mutex, Election, RWMutex,
// Semaphore and Queue made on it, record into m (see package metrics for
// the families). Default: nothing is recorded. A nil m is the default.
func WithMetrics(m *metrics.Metrics) SessionOption {
	return func(o *sessionOptions) { o.rec = m.Recorder() }
}

// WithLogger makes the session, and every primitive made on it, log its
// changes of state to l: a session expired or its keep-alives going
// unanswered and coming back, a lock or leadership lost and why, a leader
// change seen by Observe or Events. It never logs per operation. Records
// carry the attributes lease, key, token (the fencing token) and name.
// Default: no logs. A nil l is the default.
func WithLogger(l *slog.Logger) SessionOption {
	return func(o *sessionOptions) { o.log = l }
}

// observed reports whether the session records metrics or logs, so that
// callers skip the work of describing an event nobody takes.
func (s *Session) observed() bool { return s.opts.rec != nil || s.opts.log != nil }

// logWarn and logInfo log to the session's logger, if any, with the lease.
func (s *Session) logWarn(msg string, args ...any) {
	if s.opts.log != nil {
		s.opts.log.Warn(msg, append([]any{slog.String("lease", fmt.Sprintf("%x", int64(s.id)))}, args...)...)
	}
}

func (s *Session) logInfo(msg string, args ...any) {
	if s.opts.log != nil {
		s.opts.log.Info(msg, append([]any{slog.String("lease", fmt.Sprintf("%x", int64(s.id)))}, args...)...)
	}
}

// tally is one acquisition as metrics and logs see it. It ends once: by a
// release or by the first loss seen, whichever comes first. A nil tally,
// for a session without metrics or logs, records nothing.
type tally struct {
	s          *Session
	prim, name string
	key        string
	rev        int64
	start      time.Time
	over       atomic.Bool
}

// acquired records an acquisition of key (created at rev) that took wait,
// and returns its tally.
func acquired(s *Session, prim, name, key string, rev int64, wait time.Duration) *tally {
	if !s.observed() {
		return nil
	}
	if prim == obs.Election {
		s.opts.rec.Campaigned(name, wait)
		s.opts.rec.Leading(name, true)
	} else {
		s.opts.rec.Acquired(prim, name, wait)
	}
	return &tally{s: s, prim: prim, name: name, key: key, rev: rev, start: time.Now()}
}

// released ends the acquisition as released on purpose.
func (t *tally) released() { t.end("", nil) }

// lost ends the acquisition as lost, with cause one of obs's Cause values.
func (t *tally) lost(cause string, why error) { t.end(cause, why) }

func (t *tally) end(cause string, why error) {
	if t == nil || t.over.Swap(true) {
		return
	}
	rec := t.s.opts.rec
	rec.Ended(t.prim, t.name, time.Since(t.start), cause)
	if t.prim == obs.Election {
		rec.Leading(t.name, false)
	}
	if cause != "" {
		args := []any{slog.String("name", t.name), slog.String("key", t.key), slog.Int64("token", t.rev), slog.String("cause", cause)}
		if why != nil {
			args = append(args, slog.String("why", why.Error()))
		}
		t.s.logWarn(t.prim+" lost", args...)
	}
}

// lossCause tells why a key of the session went away: the session's lease
// ended (expired or revoked), or the key alone was deleted. It asks the
// server about the lease only when it cannot tell otherwise, and only for
// an observed session.
func lossCause(s *Session) string {
	select {
	case <-s.lost():
		return obs.CauseSession
	default:
	}
	ctx, cancel := context.WithTimeout(s.opts.ctx, 2*time.Second)
	defer cancel()
	ctx, stop := withClient(ctx, s.client)
	defer stop()
	r, err := s.client.TimeToLive(ctx, s.id)
	if err == nil && r.TTL <= 0 {
		return obs.CauseSession
	}
	return obs.CauseDeleted
}

// watchRemade logs a waiter's watch that broke (a member that lost its
// leader cancels its watches, a compaction after a reconnect) and was made
// again.
func (s *Session) watchRemade(key string, why error) {
	if s.opts.log == nil {
		return
	}
	args := []any{slog.String("key", key)}
	if why != nil {
		args = append(args, slog.String("why", why.Error()))
	}
	s.logInfo("watch re-established", args...)
}
