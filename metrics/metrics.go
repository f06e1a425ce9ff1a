// Package metrics exports what baton's primitives do as Prometheus metrics.
//
// Build one Metrics per registry with New and hand the same value to every
// part of baton that should report into it:
//
//	m := metrics.New(prometheus.DefaultRegisterer)
//	s, _ := concurrency.NewSession(cli, concurrency.WithMetrics(m), concurrency.WithLogger(logger))
//	// every Mutex, Election, RWMutex, Semaphore and Queue made on s reports into m
//	concurrency.NewSTM(cli, apply, concurrency.WithSTMMetrics(m, "transfer"))
//	locker, _ := memlock.New(cache, memlock.WithMetrics(m))
//
// Nothing is registered anywhere unless New is called: there is no global
// state, and a primitive made without metrics records nothing.
//
// # Families
//
// Every family is named baton_*, with its unit in the name. Most carry a
// "name" label: the prefix the primitive was made with (the key for
// memlock), as the caller gave it. One series exists per name and label
// value that the process has used, so names must be bounded: when a name
// embeds an ID (a lock per job, a queue per tenant), map it to its family
// with WithNameLabel.
//
//	baton_acquire_wait_seconds{primitive,name}      histogram  Lock, RLock, Acquire to acquisition
//	baton_hold_seconds{primitive,name}              histogram  acquisition to release or loss
//	baton_acquisitions_total{primitive,name}        counter
//	baton_try_failures_total{primitive,name}        counter    Try* found it taken
//	baton_losses_total{primitive,name,cause}        counter    cause: session, deleted, unconfirmed
//	baton_is_leader{name}                           gauge      1 while this process leads
//	baton_leader_changes_total{name}                counter    seen by Observe, Events, the elector
//	baton_campaign_wait_seconds{name}               histogram  Campaign to leadership
//	baton_semaphore_permits_in_use{name}            gauge      held by this process
//	baton_semaphore_waiters{name}                   gauge      Acquire calls waiting
//	baton_queue_enqueued_total{name}                counter
//	baton_queue_delivered_total{name}               counter
//	baton_queue_claim_unknown_total{name}           counter    claims settled after a lost answer
//	baton_queue_dequeue_wait_seconds{name}          histogram
//	baton_stm_commits_total{name}                   counter
//	baton_stm_attempts{name}                        histogram  attempts per transaction
//	baton_stm_indeterminate_commits_total{name}     counter
//	baton_stm_aborts_total{name,reason}             counter    reason: apply, attempts, ctx, error
//	baton_session_keepalive_failures_total          counter    each half TTL without an answer
//	baton_session_expiries_total                    counter    leases ended without Close
//	baton_memlock_acquisitions_total{backend,name}  counter    backend: memcached, redis, memory
//	baton_memlock_failed_to_lock_total{backend,name} counter
//	baton_memlock_refreshes_total{backend,name,result} counter result: ok, failed
//	baton_memlock_losses_total{backend,name,cause}  counter    cause: changed, gone, refresh
//
// "primitive" is one of mutex, rwmutex_read, rwmutex_write, semaphore and
// election.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/batonhq/baton/internal/obs"
)

// Metrics is a set of baton's metric families registered with one
// Registerer. A nil *Metrics records nothing. It is safe for use by several
// goroutines.
type Metrics struct {
	rec *obs.Recorder
}

// Option configures New.
type Option func(*options)

type options struct {
	name func(string) string
}

// WithNameLabel maps a primitive's name to the value of its "name" label,
// to keep the number of series bounded (see the package doc). Default: the
// name as given. A nil f is the default.
func WithNameLabel(f func(name string) string) Option {
	return func(o *options) { o.name = f }
}

// New registers baton's families with reg and returns them. It panics when
// reg already holds families of the same names, as promauto does: build one
// Metrics per registry and share it. A nil reg registers nothing; the
// families still work, for tests that read them directly.
func New(reg prometheus.Registerer, opts ...Option) *Metrics {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return &Metrics{rec: obs.New(reg, o.name)}
}

// Recorder is the hook through which baton's own packages record into m.
// It is not meant for callers.
func (m *Metrics) Recorder() *obs.Recorder {
	if m == nil {
		return nil
	}
	return m.rec
}
