package concurrency_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/metrics"
)

// scrape reads one series from reg: the value of a counter or gauge, or
// the sample count of a histogram; 0 when the series does not exist.
func scrape(t *testing.T, reg *prometheus.Registry, family string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != family {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				if !hasLabel(m, k, v) {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

// eventually polls cond for liveness, with a generous bound.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// observed returns a registry and a session that records into it.
func observedSession(t *testing.T, e *env, opts ...concurrency.SessionOption) (*prometheus.Registry, *metrics.Metrics, *concurrency.Session) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	return reg, m, e.session(append([]concurrency.SessionOption{concurrency.WithMetrics(m)}, opts...)...)
}

func TestMetricsMutex(t *testing.T) {
	e := newEnv(t)
	reg, _, s := observedSession(t, e)
	mu := concurrency.NewMutex(s, "m/jobs")
	if err := mu.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	other := concurrency.NewMutex(e.session(), "m/jobs")
	if err := other.TryLock(e.ctx); !errors.Is(err, concurrency.ErrLocked) {
		t.Fatal(err)
	}
	if err := mu.Unlock(e.ctx); err != nil {
		t.Fatal(err)
	}
	lbl := map[string]string{"primitive": "mutex", "name": "m/jobs"}
	for fam, want := range map[string]float64{
		"baton_acquisitions_total":   1,
		"baton_acquire_wait_seconds": 1,
		"baton_hold_seconds":         1,
	} {
		if got := scrape(t, reg, fam, lbl); got != want {
			t.Errorf("%s = %v, want %v", fam, got, want)
		}
	}
	// The TryLock was on an unobserved session: nothing counted for it.
	if got := scrape(t, reg, "baton_try_failures_total", lbl); got != 0 {
		t.Errorf("try failures of another session counted: %v", got)
	}
	if err := concurrency.NewMutex(s, "m/taken").TryLock(e.ctx); err != nil {
		t.Fatal(err)
	}
	s2reg, _, s2 := observedSession(t, e)
	if err := concurrency.NewMutex(s2, "m/taken").TryLock(e.ctx); !errors.Is(err, concurrency.ErrLocked) {
		t.Fatal(err)
	}
	if got := scrape(t, s2reg, "baton_try_failures_total", map[string]string{"primitive": "mutex", "name": "m/taken"}); got != 1 {
		t.Errorf("try failures = %v, want 1", got)
	}
}

// A lock lost by a revoked lease counts as losses{cause="session"}; one
// lost by a deleted key as cause "deleted". Both are logged with the key
// and the token.
func TestMetricsAndLogsOfLosses(t *testing.T) {
	e := newEnv(t)
	logs := &captured{}
	// A short TTL: the keep-alive learns of the revoke at its next round.
	reg, _, s := observedSession(t, e, concurrency.WithTTL(3), concurrency.WithLogger(slog.New(logs)))
	admin := e.client()

	mu := concurrency.NewMutex(s, "loss/deleted")
	err := concurrency.WithLock(e.ctx, mu, func(ctx context.Context) error {
		if _, err := admin.Delete(e.ctx, mu.Key()); err != nil {
			return err
		}
		<-ctx.Done()
		return nil
	})
	if !errors.Is(err, concurrency.ErrLockLost) {
		t.Fatalf("WithLock after its key was deleted: %v", err)
	}
	lbl := map[string]string{"primitive": "mutex", "name": "loss/deleted", "cause": "deleted"}
	if got := scrape(t, reg, "baton_losses_total", lbl); got != 1 {
		t.Errorf("losses{cause=deleted} = %v, want 1", got)
	}

	revoked := concurrency.NewMutex(s, "loss/session")
	var key string
	var token int64
	err = concurrency.WithLock(e.ctx, revoked, func(ctx context.Context) error {
		key, token = revoked.Key(), revoked.Rev()
		if _, err := admin.Revoke(e.ctx, s.Lease()); err != nil {
			return err
		}
		<-ctx.Done()
		return nil
	})
	if !errors.Is(err, concurrency.ErrLockLost) {
		t.Fatalf("WithLock after its lease was revoked: %v", err)
	}
	lbl = map[string]string{"primitive": "mutex", "name": "loss/session", "cause": "session"}
	if got := scrape(t, reg, "baton_losses_total", lbl); got != 1 {
		t.Errorf("losses{cause=session} = %v, want 1", got)
	}
	rec, ok := logs.find("mutex lost", "key", key)
	if !ok {
		t.Fatalf("no \"mutex lost\" record for %s; got %v", key, logs.messages())
	}
	if rec["cause"] != "session" || rec["token"] != token || rec["lease"] == nil {
		t.Errorf("loss record %v: want cause session, token %d and the lease", rec, token)
	}
	// The session itself ended: counted once, and logged.
	<-s.Done()
	eventually(t, "session expiry counted", func() bool { return scrape(t, reg, "baton_session_expiries_total", nil) == 1 })
	if _, ok := logs.find("session expired: the lease is gone", "", nil); !ok {
		t.Errorf("no session-expired record; got %v", logs.messages())
	}
}

func TestMetricsElection(t *testing.T) {
	e := newEnv(t)
	reg, m, s := observedSession(t, e)
	el := concurrency.NewElection(s, "m/elect")
	if err := el.Campaign(e.ctx, "a"); err != nil {
		t.Fatal(err)
	}
	lbl := map[string]string{"name": "m/elect"}
	if got := scrape(t, reg, "baton_is_leader", lbl); got != 1 {
		t.Errorf("is_leader = %v while leading", got)
	}
	if got := scrape(t, reg, "baton_campaign_wait_seconds", lbl); got != 1 {
		t.Errorf("campaign_wait count = %v, want 1", got)
	}
	// An observer on an observed session counts the changes it sees.
	obsSess := e.session(concurrency.WithMetrics(m))
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	events := concurrency.NewElection(obsSess, "m/elect").Events(ctx)
	<-events // the current leader
	b := concurrency.NewElection(e.session(), "m/elect")
	campaigned := make(chan error, 1)
	go func() { campaigned <- b.Campaign(e.ctx, "b") }()
	waitKeys(t, e.ctx, e.client(), "m/elect", 2)
	if err := el.Resign(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, campaigned, "b's campaign"); err != nil {
		t.Fatal(err)
	}
	for ev := range events {
		if ev.Leader != nil && string(ev.Leader.Value) == "b" {
			break
		}
	}
	if got := scrape(t, reg, "baton_is_leader", lbl); got != 0 {
		t.Errorf("is_leader = %v after Resign", got)
	}
	if got := scrape(t, reg, "baton_leader_changes_total", lbl); got < 1 {
		t.Errorf("leader_changes = %v after a handoff seen by Events", got)
	}
	if got := scrape(t, reg, "baton_hold_seconds", map[string]string{"primitive": "election", "name": "m/elect"}); got != 1 {
		t.Errorf("hold count = %v after one term", got)
	}
}

func TestMetricsSemaphoreAndRWMutex(t *testing.T) {
	e := newEnv(t)
	reg, _, s := observedSession(t, e)
	sem := concurrency.NewSemaphore(s, "m/sem", 3)
	if err := sem.Acquire(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	lbl := map[string]string{"name": "m/sem"}
	if got := scrape(t, reg, "baton_semaphore_permits_in_use", lbl); got != 2 {
		t.Errorf("permits in use = %v, want 2", got)
	}
	if err := sem.TryAcquire(e.ctx, 2); !errors.Is(err, concurrency.ErrNoPermits) {
		t.Fatal(err)
	}
	if got := scrape(t, reg, "baton_try_failures_total", map[string]string{"primitive": "semaphore", "name": "m/sem"}); got != 1 {
		t.Errorf("semaphore try failures = %v, want 1", got)
	}
	waiting := make(chan error, 1)
	go func() { waiting <- sem.Acquire(e.ctx, 2) }()
	eventually(t, "a waiter counted", func() bool { return scrape(t, reg, "baton_semaphore_waiters", lbl) == 1 })
	if err := sem.Release(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, waiting, "the waiting Acquire"); err != nil {
		t.Fatal(err)
	}
	if got := scrape(t, reg, "baton_semaphore_waiters", lbl); got != 0 {
		t.Errorf("waiters = %v after the grant", got)
	}
	if got := scrape(t, reg, "baton_semaphore_permits_in_use", lbl); got != 2 {
		t.Errorf("permits in use = %v, want 2", got)
	}

	rw := concurrency.NewRWMutex(s, "m/rw")
	if err := rw.RLock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := concurrency.NewRWMutex(s, "m/rw").TryLock(e.ctx); !errors.Is(err, concurrency.ErrLocked) {
		t.Fatal(err)
	}
	if err := rw.RUnlock(e.ctx); err != nil {
		t.Fatal(err)
	}
	if got := scrape(t, reg, "baton_acquisitions_total", map[string]string{"primitive": "rwmutex_read", "name": "m/rw"}); got != 1 {
		t.Errorf("read acquisitions = %v", got)
	}
	if got := scrape(t, reg, "baton_try_failures_total", map[string]string{"primitive": "rwmutex_write", "name": "m/rw"}); got != 1 {
		t.Errorf("write try failures = %v", got)
	}
	if got := scrape(t, reg, "baton_hold_seconds", map[string]string{"primitive": "rwmutex_read", "name": "m/rw"}); got != 1 {
		t.Errorf("read holds = %v", got)
	}
}

func TestMetricsQueueAndSTM(t *testing.T) {
	e := newEnv(t)
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	c := e.client()
	q := concurrency.NewQueue(c, "m/q", concurrency.WithQueueMetrics(m))
	for _, v := range []string{"a", "b"} {
		if err := q.Enqueue(e.ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if _, err := q.Dequeue(e.ctx); err != nil {
			t.Fatal(err)
		}
	}
	lbl := map[string]string{"name": "m/q"}
	for fam, want := range map[string]float64{
		"baton_queue_enqueued_total":       2,
		"baton_queue_delivered_total":      2,
		"baton_queue_dequeue_wait_seconds": 2,
	} {
		if got := scrape(t, reg, fam, lbl); got != want {
			t.Errorf("%s = %v, want %v", fam, got, want)
		}
	}

	put := func(stm concurrency.STM) error { stm.Put("m/stm", stm.Get("m/stm")+"x"); return nil }
	if _, err := concurrency.NewSTM(c, put, concurrency.WithSTMMetrics(m, "append")); err != nil {
		t.Fatal(err)
	}
	refuse := errors.New("refused")
	if _, err := concurrency.NewSTM(c, func(concurrency.STM) error { return refuse }, concurrency.WithSTMMetrics(m, "append")); !errors.Is(err, refuse) {
		t.Fatal(err)
	}
	ended, cancel := context.WithCancel(e.ctx)
	cancel()
	if _, err := concurrency.NewSTM(c, put, concurrency.WithSTMMetrics(m, "append"), concurrency.WithAbortContext(ended)); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	lbl = map[string]string{"name": "append"}
	if got := scrape(t, reg, "baton_stm_commits_total", lbl); got != 1 {
		t.Errorf("stm commits = %v, want 1", got)
	}
	if got := scrape(t, reg, "baton_stm_attempts", lbl); got != 3 {
		t.Errorf("stm attempt observations = %v, want 3", got)
	}
	if got := scrape(t, reg, "baton_stm_aborts_total", map[string]string{"name": "append", "reason": "apply"}); got != 1 {
		t.Errorf("stm aborts{apply} = %v, want 1", got)
	}
	if got := scrape(t, reg, "baton_stm_aborts_total", map[string]string{"name": "append", "reason": "ctx"}); got != 1 {
		t.Errorf("stm aborts{ctx} = %v, want 1", got)
	}
}

// Keep-alives silenced for longer than half the TTL count as failures and
// are logged once, with their return.
func TestMetricsKeepAliveFailures(t *testing.T) {
	e := newEnv(t)
	logs := &captured{}
	reg := prometheus.NewRegistry()
	h := newCutOffHolderWith(t, e, 6, 1, concurrency.WithMetrics(metrics.New(reg)), concurrency.WithLogger(slog.New(logs)))
	h.cut()
	eventually(t, "a keep-alive failure counted", func() bool { return scrape(t, reg, "baton_session_keepalive_failures_total", nil) >= 1 })
	h.heal()
	eventually(t, "the keep-alive's return logged", func() bool {
		_, ok := logs.find("session keep-alive answered again", "", nil)
		return ok
	})
	if _, ok := logs.find("session keep-alive unanswered", "", nil); !ok {
		t.Errorf("no keep-alive-unanswered record; got %v", logs.messages())
	}
}

// captured is a slog.Handler that keeps every record's message and
// attributes.
type captured struct {
	mu   sync.Mutex
	recs []map[string]any
}

func (c *captured) Enabled(context.Context, slog.Level) bool { return true }
func (c *captured) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *captured) WithGroup(string) slog.Handler            { return c }
func (c *captured) Handle(_ context.Context, r slog.Record) error {
	m := map[string]any{"msg": r.Message}
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.Any()
		return true
	})
	c.mu.Lock()
	c.recs = append(c.recs, m)
	c.mu.Unlock()
	return nil
}

// find returns the first record with message msg (and attribute k = v when
// k is not empty).
func (c *captured) find(msg, k string, v any) (map[string]any, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.recs {
		if r["msg"] == msg && (k == "" || r[k] == v) {
			return r, true
		}
	}
	return nil, false
}

func (c *captured) messages() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ms []string
	for _, r := range c.recs {
		ms = append(ms, r["msg"].(string))
	}
	return strings.Join(ms, "; ")
}
