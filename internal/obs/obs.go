// Package obs is where baton's packages record what they do: the
// Prometheus families behind metrics.Metrics and the structured logger of
// a primitive. A nil *Recorder records nothing, so a primitive made without
// metrics pays one nil check per event.
package obs

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Primitive kinds, the values of the "primitive" label.
const (
	Mutex     = "mutex"
	RLock     = "rwmutex_read"
	WLock     = "rwmutex_write"
	Semaphore = "semaphore"
	Election  = "election"
)

// Causes of a loss, the values of the "cause" label.
const (
	// CauseSession: the session's lease ended (expired or revoked).
	CauseSession = "session"
	// CauseDeleted: the holder's key was deleted while its lease lived.
	CauseDeleted = "deleted"
	// CauseUnconfirmed: no keep-alive answered for the trust window.
	CauseUnconfirmed = "unconfirmed"
	// CauseChanged (memlock): the lock's value changed under its holder.
	CauseChanged = "changed"
	// CauseGone (memlock): the lock's item vanished.
	CauseGone = "gone"
	// CauseRefresh (memlock): no refresh succeeded for the lock's life.
	CauseRefresh = "refresh"
)

// Recorder holds the families. Make it with New.
type Recorder struct {
	name func(string) string

	acquireWait  *prometheus.HistogramVec
	holdTime     *prometheus.HistogramVec
	acquisitions *prometheus.CounterVec
	tryFailures  *prometheus.CounterVec
	losses       *prometheus.CounterVec

	isLeader      *prometheus.GaugeVec
	leaderChanges *prometheus.CounterVec
	campaignWait  *prometheus.HistogramVec

	permitsInUse *prometheus.GaugeVec
	semWaiters   *prometheus.GaugeVec

	enqueued     *prometheus.CounterVec
	delivered    *prometheus.CounterVec
	claimUnknown *prometheus.CounterVec
	dequeueWait  *prometheus.HistogramVec

	stmCommits       *prometheus.CounterVec
	stmAttempts      *prometheus.HistogramVec
	stmIndeterminate *prometheus.CounterVec
	stmAborts        *prometheus.CounterVec

	keepAliveFailures prometheus.Counter
	sessionExpiries   prometheus.Counter

	memAcquisitions *prometheus.CounterVec
	memFailed       *prometheus.CounterVec
	memRefreshes    *prometheus.CounterVec
	memLosses       *prometheus.CounterVec
}

// waitBuckets spans a handoff on one machine (a millisecond) to a wait
// behind a long job (ten minutes).
var waitBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// holdBuckets spans a short critical section to a leader's day.
var holdBuckets = []float64{.001, .01, .1, 1, 10, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600}

// New registers every family with reg (promauto.With: a second New on the
// same registry panics, as registering twice does). name maps a primitive's
// name to its "name" label; nil keeps names as they are.
func New(reg prometheus.Registerer, name func(string) string) *Recorder {
	if name == nil {
		name = func(s string) string { return s }
	}
	f := promauto.With(reg)
	prim := []string{"primitive", "name"}
	return &Recorder{
		name: name,
		acquireWait: f.NewHistogramVec(prometheus.HistogramOpts{Name: "baton_acquire_wait_seconds",
			Help: "Time from the call to Lock, RLock or Acquire to the acquisition, for acquisitions that succeeded.", Buckets: waitBuckets}, prim),
		holdTime: f.NewHistogramVec(prometheus.HistogramOpts{Name: "baton_hold_seconds",
			Help: "Time from an acquisition (or the start of a leadership) to its release or loss.", Buckets: holdBuckets}, prim),
		acquisitions: f.NewCounterVec(prometheus.CounterOpts{Name: "baton_acquisitions_total",
			Help: "Acquisitions of locks, read and write locks, permits and leaderships."}, prim),
		tryFailures: f.NewCounterVec(prometheus.CounterOpts{Name: "baton_try_failures_total",
			Help: "TryLock, TryRLock and TryAcquire calls that found the primitive taken."}, prim),
		losses: f.NewCounterVec(prometheus.CounterOpts{Name: "baton_losses_total",
			Help: "Acquisitions lost while held, by cause: session (the lease ended), deleted (the key was deleted), unconfirmed (no keep-alive answered for the trust window)."},
			[]string{"primitive", "name", "cause"}),
		isLeader: f.NewGaugeVec(prometheus.GaugeOpts{Name: "baton_is_leader",
			Help: "1 while an Election of this process leads, else 0."}, []string{"name"}),
		leaderChanges: f.NewCounterVec(prometheus.CounterOpts{Name: "baton_leader_changes_total",
			Help: "Changes of leader seen by Observe, Events and the leader elector, including to no leader."}, []string{"name"}),
		campaignWait: f.NewHistogramVec(prometheus.HistogramOpts{Name: "baton_campaign_wait_seconds",
			Help: "Time from Campaign to leadership, for campaigns that won.", Buckets: waitBuckets}, []string{"name"}),
		permitsInUse: f.NewGaugeVec(prometheus.GaugeOpts{Name: "baton_semaphore_permits_in_use",
			Help: "Permits of the semaphore held by this process."}, []string{"name"}),
		semWaiters: f.NewGaugeVec(prometheus.GaugeOpts{Name: "baton_semaphore_waiters",
			Help: "Acquire calls of this process waiting for permits."}, []string{"name"}),
		enqueued: f.NewCounterVec(prometheus.CounterOpts{Name: "baton_queue_enqueued_total",
			Help: "Items enqueued."}, []string{"name"}),
		delivered: f.NewCounterVec(prometheus.CounterOpts{Name: "baton_queue_delivered_total",
			Help: "Items dequeued (claimed and delivered to the caller)."}, []string{"name"}),
		claimUnknown: f.NewCounterVec(prometheus.CounterOpts{Name: "baton_queue_claim_unknown_total",
			Help: "Claims whose outcome the queue could not learn (the request was sent, the answer lost) and had to settle."}, []string{"name"}),
		dequeueWait: f.NewHistogramVec(prometheus.HistogramOpts{Name: "baton_queue_dequeue_wait_seconds",
			Help: "Time from Dequeue to delivery, for dequeues that delivered.", Buckets: waitBuckets}, []string{"name"}),
		stmCommits: f.NewCounterVec(prometheus.CounterOpts{Name: "baton_stm_commits_total",
			Help: "STM transactions committed."}, []string{"name"}),
		stmAttempts: f.NewHistogramVec(prometheus.HistogramOpts{Name: "baton_stm_attempts",
			Help: "Attempts per STM transaction, committed or not.", Buckets: []float64{1, 2, 3, 5, 8, 13, 21, 34, 55, 100}}, []string{"name"}),
		stmIndeterminate: f.NewCounterVec(prometheus.CounterOpts{Name: "baton_stm_indeterminate_commits_total",
			Help: "STM commits whose outcome is unknown (ErrSTMCommitIndeterminate)."}, []string{"name"}),
		stmAborts: f.NewCounterVec(prometheus.CounterOpts{Name: "baton_stm_aborts_total",
			Help: "STM transactions that ended without committing, by reason: apply (apply returned an error or panicked), attempts (too many attempts), ctx (the context ended), error (the server refused)."},
			[]string{"name", "reason"}),
		keepAliveFailures: f.NewCounter(prometheus.CounterOpts{Name: "baton_session_keepalive_failures_total",
			Help: "Keep-alive silences of sessions: each half TTL that passed without an answer counts one."}),
		sessionExpiries: f.NewCounter(prometheus.CounterOpts{Name: "baton_session_expiries_total",
			Help: "Sessions whose lease ended without Close: expired, revoked by someone else, or given up by the keep-alive."}),
		memAcquisitions: f.NewCounterVec(prometheus.CounterOpts{Name: "baton_memlock_acquisitions_total",
			Help: "memlock locks taken."}, []string{"backend", "name"}),
		memFailed: f.NewCounterVec(prometheus.CounterOpts{Name: "baton_memlock_failed_to_lock_total",
			Help: "memlock TryWithLock calls that could not take the lock (held by another, or the cache unreachable)."}, []string{"backend", "name"}),
		memRefreshes: f.NewCounterVec(prometheus.CounterOpts{Name: "baton_memlock_refreshes_total",
			Help: "memlock refreshes, by result: ok or failed."}, []string{"backend", "name", "result"}),
		memLosses: f.NewCounterVec(prometheus.CounterOpts{Name: "baton_memlock_losses_total",
			Help: "memlock locks lost while f ran, by cause: changed (another holder's value), gone (the item vanished), refresh (no refresh succeeded for the lock's life)."},
			[]string{"backend", "name", "cause"}),
	}
}

// Acquired records an acquisition that took wait.
func (r *Recorder) Acquired(prim, name string, wait time.Duration) {
	if r == nil {
		return
	}
	n := r.name(name)
	r.acquisitions.WithLabelValues(prim, n).Inc()
	r.acquireWait.WithLabelValues(prim, n).Observe(wait.Seconds())
}

// TryFailed records a Try call that found the primitive taken.
func (r *Recorder) TryFailed(prim, name string) {
	if r == nil {
		return
	}
	r.tryFailures.WithLabelValues(prim, r.name(name)).Inc()
}

// Ended records the end of a hold that lasted held; cause is "" for a
// release, else the cause of the loss.
func (r *Recorder) Ended(prim, name string, held time.Duration, cause string) {
	if r == nil {
		return
	}
	n := r.name(name)
	r.holdTime.WithLabelValues(prim, n).Observe(held.Seconds())
	if cause != "" {
		r.losses.WithLabelValues(prim, n, cause).Inc()
	}
}

// Leading records that an Election of this process leads (or stopped).
func (r *Recorder) Leading(name string, leading bool) {
	if r == nil {
		return
	}
	v := 0.0
	if leading {
		v = 1
	}
	r.isLeader.WithLabelValues(r.name(name)).Set(v)
}

// Campaigned records a campaign won after wait.
func (r *Recorder) Campaigned(name string, wait time.Duration) {
	if r == nil {
		return
	}
	n := r.name(name)
	r.campaignWait.WithLabelValues(n).Observe(wait.Seconds())
	r.acquisitions.WithLabelValues(Election, n).Inc()
}

// LeaderChanged records a change of leader seen.
func (r *Recorder) LeaderChanged(name string) {
	if r == nil {
		return
	}
	r.leaderChanges.WithLabelValues(r.name(name)).Inc()
}

// Permits adds delta to the permits of name held by this process.
func (r *Recorder) Permits(name string, delta int64) {
	if r == nil {
		return
	}
	r.permitsInUse.WithLabelValues(r.name(name)).Add(float64(delta))
}

// SemWaiting adds delta to the waiting Acquire calls of name.
func (r *Recorder) SemWaiting(name string, delta int) {
	if r == nil {
		return
	}
	r.semWaiters.WithLabelValues(r.name(name)).Add(float64(delta))
}

// Enqueued records an item enqueued.
func (r *Recorder) Enqueued(name string) {
	if r == nil {
		return
	}
	r.enqueued.WithLabelValues(r.name(name)).Inc()
}

// Delivered records an item dequeued after wait.
func (r *Recorder) Delivered(name string, wait time.Duration) {
	if r == nil {
		return
	}
	n := r.name(name)
	r.delivered.WithLabelValues(n).Inc()
	r.dequeueWait.WithLabelValues(n).Observe(wait.Seconds())
}

// ClaimUnknown records a claim whose outcome was unknown.
func (r *Recorder) ClaimUnknown(name string) {
	if r == nil {
		return
	}
	r.claimUnknown.WithLabelValues(r.name(name)).Inc()
}

// STMDone records an STM transaction that made attempts; reason is "" when
// it committed, else why it did not ("indeterminate" counts as not known).
func (r *Recorder) STMDone(name string, attempts int, reason string) {
	if r == nil {
		return
	}
	n := r.name(name)
	r.stmAttempts.WithLabelValues(n).Observe(float64(attempts))
	switch reason {
	case "":
		r.stmCommits.WithLabelValues(n).Inc()
	case "indeterminate":
		r.stmIndeterminate.WithLabelValues(n).Inc()
	default:
		r.stmAborts.WithLabelValues(n, reason).Inc()
	}
}

// KeepAliveFailed records an unanswered keep-alive round.
func (r *Recorder) KeepAliveFailed() {
	if r == nil {
		return
	}
	r.keepAliveFailures.Inc()
}

// SessionExpired records a session whose lease ended without Close.
func (r *Recorder) SessionExpired() {
	if r == nil {
		return
	}
	r.sessionExpiries.Inc()
}

// MemAcquired records a memlock lock taken on backend.
func (r *Recorder) MemAcquired(backend, name string) {
	if r == nil {
		return
	}
	r.memAcquisitions.WithLabelValues(backend, r.name(name)).Inc()
}

// MemFailed records a memlock TryWithLock that could not take the lock.
func (r *Recorder) MemFailed(backend, name string) {
	if r == nil {
		return
	}
	r.memFailed.WithLabelValues(backend, r.name(name)).Inc()
}

// MemRefreshed records a memlock refresh and whether it succeeded.
func (r *Recorder) MemRefreshed(backend, name string, ok bool) {
	if r == nil {
		return
	}
	res := "ok"
	if !ok {
		res = "failed"
	}
	r.memRefreshes.WithLabelValues(backend, r.name(name), res).Inc()
}

// MemLost records a memlock lock lost while f ran.
func (r *Recorder) MemLost(backend, name, cause string) {
	if r == nil {
		return
	}
	r.memLosses.WithLabelValues(backend, r.name(name), cause).Inc()
}
