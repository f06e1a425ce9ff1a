//go:build linux

package faults

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/redis/go-redis/v9"

	"github.com/batonhq/baton/memlock"
	"github.com/batonhq/baton/memlock/memlocktest"
)

// memlock workloads: best-effort locks on a real memcached and Redis.
const (
	wlMemcached = "memlock-memcached"
	wlRedis     = "memlock-redis"
)

func isMemlock(wl string) bool { return wl == wlMemcached || wl == wlRedis }

// Fault kinds of the memlock servers.
const (
	fCacheRestart = "cache-restart" // kill the cache server, start it again empty
	fCachePause   = "cache-pause"   // SIGSTOP the cache server, then SIGCONT
)

// memlock settings: memcached counts whole seconds and gives the lock up a
// second early, so a 3 s TTL lives 2 s there, room for 4 refreshes.
const (
	memlockTTL     = 3 * time.Second
	memlockRefresh = 500 * time.Millisecond
	memlockTimeout = 400 * time.Millisecond
	memlockHold    = 1200 * time.Millisecond
	// memlockSlack covers scheduling on a busy machine under -race.
	memlockSlack = time.Second
)

// memlockLoop takes the lock with TryWithLock and holds it for a while in
// f, which stops as soon as its context ends. Each f is recorded as a
// "hold" operation from entry to exit; its output says whether it ended by
// itself ("done"), by loss ("lost") or by the worker stopping ("cancel").
func (w *worker) memlockLoop(ctx context.Context) {
	var c memlock.Cache
	switch w.cfg.Workload {
	case wlMemcached:
		mc := memcache.New(w.cfg.CacheAddr)
		c = memlock.NewMemcache(mc)
	default:
		rc := redis.NewClient(&redis.Options{Addr: w.cfg.CacheAddr, ContextTimeoutEnabled: true})
		defer rc.Close()
		c = memlock.NewRedis(rc)
	}
	// memlock logs the start of a run of failed refreshes; the history
	// keeps it as an event, for the checker.
	logs := slog.New(refreshLog{rec: w.rec})
	l, err := memlock.New(c, memlock.WithTTL(memlockTTL), memlock.WithRefreshInterval(memlockRefresh), memlock.WithTimeout(memlockTimeout), memlock.WithLogger(logs))
	if err != nil {
		panic(err)
	}
	me := fmt.Sprintf("w%d", w.cfg.Worker)
	for ctx.Err() == nil {
		err := l.TryWithLock(ctx, "faults-lock", me, func(fctx context.Context) error {
			id := w.rec.invoke(Record{F: "hold"})
			w.rec.event(Record{F: "hold"})
			t := time.NewTimer(memlockHold)
			defer t.Stop()
			select {
			case <-t.C:
				w.rec.complete(id, recOK, Record{F: "hold", Val: "done"})
			case <-fctx.Done():
				how := "cancel"
				if errors.Is(context.Cause(fctx), memlock.ErrLockLost) {
					how = "lost"
				}
				w.rec.complete(id, recOK, Record{F: "hold", Val: how, Err: context.Cause(fctx).Error()})
			}
			return nil
		})
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// refreshLog is a slog.Handler that turns memlock's "refresh failing"
// records into history events.
type refreshLog struct{ rec *recorder }

func (h refreshLog) Enabled(context.Context, slog.Level) bool { return true }
func (h refreshLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h refreshLog) WithGroup(string) slog.Handler            { return h }
func (h refreshLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "memlock: refresh failing" {
		h.rec.event(Record{F: evRefreshFailing})
	}
	return nil
}

// evRefreshFailing is the event of a holder whose refresh failed.
const evRefreshFailing = "refresh-failing"

// startCaches starts the memcached and redis-server the memlock workloads
// use.
func (r *run) startCaches() error {
	for _, wl := range r.opt.Workloads {
		var s *memlocktest.Server
		var err error
		switch wl {
		case wlMemcached:
			s, err = memlocktest.StartMemcached()
		case wlRedis:
			s, err = memlocktest.StartRedis()
		default:
			continue
		}
		if err != nil {
			return fmt.Errorf("faults: %s: %w", wl, err)
		}
		r.caches[wl] = s
	}
	return nil
}

// memlockFaults injects cache-server faults and holder pauses into the
// memlock workloads, one round of each kind at least, until stop closes.
// It runs beside the etcd schedule.
func (r *run) memlockFaults(ctx context.Context, wl string, seed uint64, stop <-chan struct{}) error {
	rnd := newRand(seed)
	s := r.caches[wl]
	for {
		kinds := []string{fCacheRestart, fCachePause, fWorkerPause}
		rnd.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
		for _, k := range kinds {
			if err := sleepCtx(ctx, 3*time.Second); err != nil {
				return err
			}
			f := Fault{Kind: k, Target: wl, Scope: wl, Start: now()}
			switch k {
			case fCacheRestart:
				if err := s.Restart(); err != nil {
					return fmt.Errorf("faults: restart %s: %w", wl, err)
				}
			case fCachePause:
				s.Pause()
				err := sleepCtx(ctx, 4*time.Second)
				s.Resume()
				if err != nil {
					return err
				}
			case fWorkerPause:
				w, err := r.waitHold(ctx, wl)
				if err != nil {
					return err
				}
				f.Start, f.Target = now(), fmt.Sprintf("%s-%d", wl, w.cfg.Worker)
				w.cmd.Process.Signal(syscall.SIGSTOP)
				err = sleepCtx(ctx, memlockTTL+time.Second)
				w.cmd.Process.Signal(syscall.SIGCONT)
				if err != nil {
					return err
				}
			}
			f.End = now()
			r.record(f)
		}
		select {
		case <-stop:
			return nil
		default:
		}
	}
}

// waitHold waits for a worker of wl to report that it entered f.
func (r *run) waitHold(ctx context.Context, wl string) (*workerProc, error) {
	ws := r.workers[wl]
	tails := make([]*tail, len(ws))
	for i, w := range ws {
		tails[i] = &tail{path: w.cfg.History, off: fileSize(w.cfg.History)}
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		for i, t := range tails {
			recs, err := t.poll()
			if err != nil {
				return nil, err
			}
			for _, rec := range recs {
				if rec.Type == recEvent && rec.F == "hold" {
					return ws[i], nil
				}
			}
		}
		if err := sleepCtx(ctx, 2*time.Millisecond); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("faults: %s: no worker took the lock for a minute; see %s/logs", wl, r.dir)
}

// checkMemlock finds overlaps: a holder entering f while another's f still
// runs. memlock promises no mutual exclusion, so an overlap is not a
// failure when it is of a kind its package doc says can happen: the lock
// dropped by a server restart, a server paused (TTLs counted on the
// server's clock), a holder paused past its TTL, or a holder whose
// refreshes failed (memlock gives the lock up once none has succeeded for
// as long as it is sure to live, and the cache may drop it as early as
// that: a holder starved of CPU on a busy machine fails its refreshes as a
// paused one does; the history has an event of the first failed refresh).
// Two things are
// anomalies: an overlap with none of those causes, and an old holder whose
// f's context was not cancelled within the documented bound: loss is seen
// at the next refresh (refresh interval + timeout after the new holder got
// in), or as soon as a paused holder resumes, since its context ends once
// the lock could have expired.
func checkMemlock(wl string, all []*Op, faults []Fault, events []Record) (an []Anomaly, note string) {
	var holds []*Op
	for _, op := range all {
		if op.F == "hold" && op.End > 0 {
			holds = append(holds, op)
		}
	}
	sort.Slice(holds, func(i, j int) bool { return holds[i].Start < holds[j].Start })
	causes := map[string]int{}
	overlaps := 0
	for i, a := range holds {
		for _, b := range holds[i+1:] {
			if b.Start >= a.End {
				break
			}
			if b.Worker == a.Worker {
				continue
			}
			overlaps++
			var why []string
			bound := b.Start + int64(memlockRefresh+memlockTimeout+memlockSlack)
			for _, f := range faults {
				if f.Scope != wl || f.Start > b.Start || f.End+int64(memlockTTL+memlockSlack) < a.Start {
					continue
				}
				switch {
				case f.Kind == fCacheRestart:
					why = append(why, "server restart dropped the lock")
				case f.Kind == fCachePause:
					why = append(why, "server paused")
					bound = max(bound, f.End+int64(memlockRefresh+memlockTimeout+memlockSlack))
				case f.Kind == fWorkerPause && f.Target == fmt.Sprintf("%s-%d", wl, a.Worker):
					why = append(why, "holder paused past its TTL")
					bound = max(bound, f.End+int64(memlockSlack))
				}
			}
			for _, ev := range events {
				if ev.F == evRefreshFailing && ev.Worker == a.Worker && ev.Time >= a.Start-int64(memlockTTL) && ev.Time <= b.Start {
					why = append(why, "holder's refreshes failed")
					break
				}
			}
			why = dedup(why)
			if len(why) == 0 {
				an = append(an, Anomaly{"unexplained-overlap", b.Start, fmt.Sprintf("w%d entered f %v after w%d did, while w%d's f still ran, with no fault the memlock doc names", b.Worker, time.Duration(b.Start-a.Start), a.Worker, a.Worker)})
				continue
			}
			causes[strings.Join(why, "+")]++
			if a.End > bound {
				an = append(an, Anomaly{"late-cancel", a.Start, fmt.Sprintf("w%d's f ran %v after w%d took the lock (%s); its context should have ended within %v", a.Worker, time.Duration(a.End-b.Start).Round(time.Millisecond), b.Worker, strings.Join(why, "+"), time.Duration(bound-b.Start).Round(time.Millisecond))})
			}
		}
	}
	var cs []string
	for c, n := range causes {
		cs = append(cs, fmt.Sprintf("%s ×%d", c, n))
	}
	sort.Strings(cs)
	note = fmt.Sprintf("%d holds, %d overlaps (best effort)", len(holds), overlaps)
	if len(cs) > 0 {
		note += ": " + strings.Join(cs, ", ")
	}
	return an, note
}

func dedup(ss []string) []string {
	var out []string
	for _, s := range ss {
		if !slicesContains(out, s) {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}
