package memlock_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/batonhq/baton/memlock"
	"github.com/batonhq/baton/metrics"
)

// Series names as the metrics package doc lists them.
const (
	acquisitions = "baton_memlock_acquisitions_total"
	failedToLock = "baton_memlock_failed_to_lock_total"
	refreshes    = "baton_memlock_refreshes_total"
	losses       = "baton_memlock_losses_total"
)

// series gathers reg and returns every memlock series as
// `family{label="value",...}` (labels sorted by name) with its value.
func series(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "baton_memlock_") {
			continue
		}
		for _, m := range f.GetMetric() {
			var labels []string
			for _, p := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", p.GetName(), p.GetValue()))
			}
			sort.Strings(labels)
			out[f.GetName()+"{"+strings.Join(labels, ",")+"}"] = m.GetCounter().GetValue()
		}
	}
	return out
}

// seriesKey names one series of key "job" on backend; extra are label pairs
// besides backend and name, as `cause="gone"`.
func seriesKey(family, backend string, extra ...string) string {
	labels := append([]string{fmt.Sprintf("backend=%q", backend), `name="job"`}, extra...)
	sort.Strings(labels)
	return family + "{" + strings.Join(labels, ",") + "}"
}

// waitSeries polls reg until the series reaches at least min: for events
// that a refresh timer brings, which the test cannot wait on otherwise.
// The deadline is only for liveness.
func waitSeries(t *testing.T, reg *prometheus.Registry, key string, min float64) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for series(t, reg)[key] < min {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not reach %v within %v: %v", key, min, waitLimit, series(t, reg))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Each family moves on a real server: an acquisition, a take that fails
// while another holds, refreshes, and a loss by each cause.
func TestMetrics(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		reg := prometheus.NewRegistry()
		l := b.locker(t, memlock.WithMetrics(metrics.New(reg)))
		ctx := context.Background()
		want := map[string]float64{}
		check := func(step string) {
			t.Helper()
			got := series(t, reg)
			delete(got, seriesKey(refreshes, b.name, `result="ok"`)) // depends on timing
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s: %s = %v, want %v", step, k, got[k], v)
				}
			}
			for k, v := range got {
				if _, ok := want[k]; !ok {
					t.Errorf("%s: unexpected series %s = %v", step, k, v)
				}
			}
		}

		h := startHolder(ctx, l, "job", "alice")
		h.waitHeld(t)
		want[seriesKey(acquisitions, b.name)] = 1
		check("after the take")

		if err := l.TryWithLock(ctx, "job", "bob", mustNotRun(t)); !errors.Is(err, memlock.ErrFailedToLock) {
			t.Fatalf("bob's TryWithLock while alice holds = %v, want ErrFailedToLock", err)
		}
		want[seriesKey(failedToLock, b.name)] = 1
		check("after bob's failed take")

		waitSeries(t, reg, seriesKey(refreshes, b.name, `result="ok"`), 1)

		// changed: another client overwrites the value.
		at := time.Now()
		b.set(t, "job", "mallory/0123456789abcdef")
		h.lostWithin(t, at, 2*testRefresh)
		want[seriesKey(losses, b.name, `cause="changed"`)] = 1
		// The refresh that found it lost; then refreshing stops.
		want[seriesKey(refreshes, b.name, `result="failed"`)] = 1
		check("after the overwrite")

		// gone: the item is deleted under the holder.
		b.del(t, "job")
		h = startHolder(ctx, l, "job", "alice")
		h.waitHeld(t)
		at = time.Now()
		b.del(t, "job")
		h.lostWithin(t, at, 2*testRefresh)
		want[seriesKey(acquisitions, b.name)] = 2
		want[seriesKey(losses, b.name, `cause="gone"`)] = 1
		want[seriesKey(refreshes, b.name, `result="failed"`)] = 2
		check("after the delete")

		if b.srv == nil {
			return // the in-process cache cannot be made unreachable
		}
		// refresh: the server is paused past the lock's life.
		h = startHolder(ctx, l, "job", "alice")
		h.waitHeld(t)
		at = time.Now()
		if err := b.srv.Pause(); err != nil {
			t.Fatal(err)
		}
		h.lostWithin(t, at, b.life+testRefresh)
		if err := b.srv.Resume(); err != nil {
			t.Fatal(err)
		}
		want[seriesKey(acquisitions, b.name)] = 3
		want[seriesKey(losses, b.name, `cause="refresh"`)] = 1
		// Every refresh sent in the pause failed, one at least.
		got := series(t, reg)
		if n := got[seriesKey(refreshes, b.name, `result="failed"`)]; n < 3 {
			t.Errorf("failed refreshes after the pause: %v, want more than the 2 before it", n)
		}
		want[seriesKey(refreshes, b.name, `result="failed"`)] = got[seriesKey(refreshes, b.name, `result="failed"`)]
		check("after the pause")
	})
}

// Without WithMetrics nothing is registered anywhere, and nil options are
// the defaults.
func TestNoMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := memlock.NewMemory()
	l, err := memlock.New(c, memlock.WithMetrics(nil), memlock.WithLogger(nil),
		memlock.WithTTL(redisTTL), memlock.WithRefreshInterval(testRefresh), memlock.WithTimeout(testTimeout))
	if err != nil {
		t.Fatal(err)
	}
	h := startHolder(context.Background(), l, "job", "alice")
	h.waitHeld(t)
	if err := l.TryWithLock(context.Background(), "job", "bob", mustNotRun(t)); !errors.Is(err, memlock.ErrFailedToLock) {
		t.Fatalf("bob's TryWithLock = %v, want ErrFailedToLock", err)
	}
	at := time.Now()
	memlock.MemoryDelete(c, "job")
	h.lostWithin(t, at, 2*testRefresh)
	ctx := memlock.Use(context.Background(), c)
	if err := memlock.TryWithLock(ctx, "job", "alice", func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Fatalf("registry holds %d series (%v), want none", n, err)
	}
}

// logRecord is one captured slog record, its attributes flattened.
type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]slog.Value
}

// logCapture keeps every record logged through its handlers, and lets a
// test wait for one.
type logCapture struct {
	mu      sync.Mutex
	records []logRecord
	added   chan struct{} // closed and replaced at each record
}

func newLogCapture() *logCapture { return &logCapture{added: make(chan struct{})} }

func (c *logCapture) logger() *slog.Logger { return slog.New(captureHandler{c: c}) }

// find returns the records with message msg.
func (c *logCapture) find(msg string) []logRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []logRecord
	for _, r := range c.records {
		if r.msg == msg {
			out = append(out, r)
		}
	}
	return out
}

// wait waits until a record with message msg is logged and returns it.
func (c *logCapture) wait(t *testing.T, msg string) logRecord {
	t.Helper()
	timeout := time.After(waitLimit)
	for {
		c.mu.Lock()
		added := c.added
		c.mu.Unlock()
		if rs := c.find(msg); len(rs) > 0 {
			return rs[0]
		}
		select {
		case <-added:
		case <-timeout:
			t.Fatalf("no %q record within %v", msg, waitLimit)
		}
	}
}

type captureHandler struct {
	c     *logCapture
	attrs []slog.Attr
}

func (h captureHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h captureHandler) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{level: r.Level, msg: r.Message, attrs: map[string]slog.Value{}}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value.Resolve()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.Resolve()
		return true
	})
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	h.c.records = append(h.c.records, rec)
	close(h.c.added)
	h.c.added = make(chan struct{})
	return nil
}

func (h captureHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return captureHandler{c: h.c, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h captureHandler) WithGroup(string) slog.Handler { return h }

// checkAttrs fails the test unless r has each attribute of want, by its
// string form.
func checkAttrs(t *testing.T, r logRecord, want map[string]string) {
	t.Helper()
	for k, v := range want {
		got, ok := r.attrs[k]
		if !ok {
			t.Errorf("%q record has no attribute %s: %v", r.msg, k, r.attrs)
		} else if got.String() != v {
			t.Errorf("%q record: %s=%s, want %s", r.msg, k, got, v)
		}
	}
}

// A loss is logged once, at Warn, with why and whose; a loss that a refresh
// finds is not preceded by a "refresh failing" record.
func TestLossLogged(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		logs := newLogCapture()
		l := b.locker(t, memlock.WithLogger(logs.logger()), memlock.WithFencing())
		h := startHolder(context.Background(), l, "job", "alice")
		token, ok := memlock.Token(h.waitHeld(t))
		if !ok {
			t.Fatal("no fencing token")
		}
		at := time.Now()
		b.set(t, "job", "mallory/0123456789abcdef")
		h.lostWithin(t, at, 2*testRefresh)
		r := logs.wait(t, "memlock: lock lost")
		if r.level != slog.LevelWarn {
			t.Errorf("lock lost logged at %v, want WARN", r.level)
		}
		checkAttrs(t, r, map[string]string{
			"key": "job", "client_id": "alice", "backend": b.name, "cause": "changed", "token": fmt.Sprint(token),
		})
		if n := len(logs.find("memlock: lock lost")); n != 1 {
			t.Errorf("%d lock lost records, want 1", n)
		}
		if rs := logs.find("memlock: refresh failing"); len(rs) != 0 {
			t.Errorf("refresh failing logged for a loss a refresh found: %v", rs[0].attrs)
		}
	})
}

// Refreshes that fail for a while are logged once when they start failing
// and once when they recover, and the lock is kept.
func TestRefreshFailingLogged(t *testing.T) {
	for _, mk := range []func(*testing.T) *backend{memcachedBackend, redisBackend} {
		b := mk(t)
		t.Run(b.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			logs := newLogCapture()
			// A TTL long enough that the pause below cannot lose the lock.
			l := b.locker(t, memlock.WithTTL(10*time.Second), memlock.WithMetrics(metrics.New(reg)), memlock.WithLogger(logs.logger()))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			h := startHolder(ctx, l, "job", "alice")
			fctx := h.waitHeld(t)
			waitSeries(t, reg, seriesKey(refreshes, b.name, `result="ok"`), 1)

			if err := b.srv.Pause(); err != nil {
				t.Fatal(err)
			}
			waitSeries(t, reg, seriesKey(refreshes, b.name, `result="failed"`), 2)
			if err := b.srv.Resume(); err != nil {
				t.Fatal(err)
			}
			r := logs.wait(t, "memlock: refresh recovered")
			if r.level != slog.LevelInfo {
				t.Errorf("refresh recovered logged at %v, want INFO", r.level)
			}
			checkAttrs(t, r, map[string]string{"key": "job", "client_id": "alice", "backend": b.name})
			if n := r.attrs["failures"].Int64(); n < 2 {
				t.Errorf("refresh recovered: failures=%d, want at least 2", n)
			}
			failing := logs.find("memlock: refresh failing")
			if len(failing) != 1 {
				t.Fatalf("%d refresh failing records for one run of failures, want 1", len(failing))
			}
			if failing[0].level != slog.LevelWarn {
				t.Errorf("refresh failing logged at %v, want WARN", failing[0].level)
			}
			checkAttrs(t, failing[0], map[string]string{"key": "job", "client_id": "alice", "backend": b.name})
			if _, ok := failing[0].attrs["err"]; !ok {
				t.Errorf("refresh failing record without err: %v", failing[0].attrs)
			}
			if fctx.Err() != nil {
				t.Fatalf("lock lost across a short pause: %v", context.Cause(fctx))
			}
			cancel()
			if err := h.waitReturn(t); !errors.Is(err, context.Canceled) {
				t.Errorf("TryWithLock = %v, want f's context.Canceled", err)
			}
			if rs := logs.find("memlock: lock lost"); len(rs) != 0 {
				t.Errorf("lock lost logged: %v", rs[0].attrs)
			}
		})
	}
}
