//go:build linux

package faults

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// schedule injects faults one after another: one round of every kind in a
// seeded order, repeated until Options.Duration has passed. Before each
// fault the cluster must be healthy again (every member answers and they
// agree on a leader), so a fault starts from a known state.
func (r *run) schedule(ctx context.Context) error {
	end := time.Now().Add(r.opt.Duration)
	for round := 0; ; round++ {
		kinds := append([]string(nil), allFaultKinds...)
		r.rnd.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
		for _, k := range kinds {
			if err := r.waitHealthy(ctx, 2*time.Minute); err != nil {
				return err
			}
			// A quiet gap lets the workloads show they recovered before
			// the next fault (a liveness margin, not a correctness wait).
			if err := sleepCtx(ctx, 2*time.Second); err != nil {
				return err
			}
			if err := r.inject(ctx, k); err != nil {
				return fmt.Errorf("faults: %s: %w", k, err)
			}
		}
		if round == 0 && r.opt.Duration == 0 || time.Now().After(end) {
			break
		}
	}
	if err := r.waitHealthy(ctx, 2*time.Minute); err != nil {
		return err
	}
	return sleepCtx(ctx, 2*time.Second)
}

// leader returns the index of the raft leader, found through each member's
// Status answer.
func (r *run) leader(ctx context.Context) (int, error) {
	var leaderID uint64
	ids := make([]uint64, len(r.members))
	for i, m := range r.members {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := r.cli.Status(sctx, m.ClientURL())
		cancel()
		if err != nil {
			return -1, fmt.Errorf("status of %s: %w", m.cfg.Name, err)
		}
		ids[i] = st.Header.MemberId
		if st.Leader == 0 || leaderID != 0 && st.Leader != leaderID {
			return -1, fmt.Errorf("members disagree on the leader")
		}
		leaderID = st.Leader
	}
	for i, id := range ids {
		if id == leaderID {
			return i, nil
		}
	}
	return -1, fmt.Errorf("leader %x is not a member", leaderID)
}

func (r *run) waitHealthy(ctx context.Context, bound time.Duration) error {
	deadline := time.Now().Add(bound)
	for {
		_, err := r.leader(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("faults: cluster not healthy after %v: %w; see %s", bound, err, r.dir)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

func now() int64 { return time.Now().UnixNano() }

func (r *run) inject(ctx context.Context, kind string) error {
	switch kind {
	case fKill:
		i := r.rnd.IntN(len(r.members))
		m := r.members[i]
		f := Fault{Kind: kind, Target: m.cfg.Name, Start: now()}
		if err := m.kill(); err != nil {
			return err
		}
		if err := sleepCtx(ctx, 2*time.Second); err != nil {
			return err
		}
		if err := m.start(2 * time.Minute); err != nil {
			return withStderr(err, r.members[i:i+1])
		}
		f.End = now()
		r.record(f)
	case fPauseLeader, fPauseFollower:
		l, err := r.leader(ctx)
		if err != nil {
			return err
		}
		i, d := l, 4*time.Second
		if kind == fPauseFollower {
			i, d = (l+1+r.rnd.IntN(len(r.members)-1))%len(r.members), 3*time.Second
		}
		m := r.members[i]
		f := Fault{Kind: kind, Target: m.cfg.Name, Start: now()}
		if err := m.signal(syscall.SIGSTOP); err != nil {
			return err
		}
		err = sleepCtx(ctx, d)
		m.signal(syscall.SIGCONT)
		f.End = now()
		r.record(f)
		return err
	case fPartition:
		m := r.members[r.rnd.IntN(len(r.members))]
		f := Fault{Kind: kind, Target: m.cfg.Name, Start: now()}
		m.blackhole(true)
		err := sleepCtx(ctx, 4*time.Second)
		m.blackhole(false)
		f.End = now()
		r.record(f)
		return err
	case fClientDelay:
		f := Fault{Kind: kind, Target: "all client proxies", Start: now(), Note: "40ms ± 30ms each way"}
		for _, m := range r.members {
			m.clientProxy.DelayTx(40*time.Millisecond, 30*time.Millisecond)
			m.clientProxy.DelayRx(40*time.Millisecond, 30*time.Millisecond)
		}
		err := sleepCtx(ctx, 4*time.Second)
		for _, m := range r.members {
			m.clientProxy.UndelayTx()
			m.clientProxy.UndelayRx()
		}
		f.End = now()
		r.record(f)
		return err
	case fClientDrop:
		f := Fault{Kind: kind, Target: "all client proxies", Start: now()}
		for _, m := range r.members {
			m.clientProxy.BlackholeTx()
			m.clientProxy.BlackholeRx()
		}
		err := sleepCtx(ctx, 1500*time.Millisecond)
		for _, m := range r.members {
			m.clientProxy.UnblackholeTx()
			m.clientProxy.UnblackholeRx()
		}
		f.End = now()
		r.record(f)
		return err
	case fWorkerPause:
		return r.pauseWorkers(ctx)
	}
	return nil
}

// pauseWorkers pauses one worker of every workload at once. For the lock
// workloads the worker is paused right after it reported, in its history,
// that it holds the lock and read the register; it is resumed only once
// another worker of the workload completed a write (so a new holder took
// over while it slept past its TTL), or after a bound. A bank worker is
// paused for 3 s wherever it is.
func (r *run) pauseWorkers(ctx context.Context) error {
	var wls []string
	for _, wl := range r.opt.Workloads {
		if !isMemlock(wl) {
			wls = append(wls, wl)
		}
	}
	errc := make(chan error, len(wls))
	for _, wl := range wls {
		pick := r.rnd.IntN(len(r.workers[wl])) // chosen here: r.rnd is not shared across goroutines
		go func() { errc <- r.pauseWorker(ctx, wl, pick, 1) }()
	}
	var first error
	for range wls {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (r *run) pauseWorker(ctx context.Context, wl string, pick, attempt int) error {
	ws := r.workers[wl]
	if wl == wlBank || wl == wlQueue {
		w := ws[pick]
		f := Fault{Kind: fWorkerPause, Target: fmt.Sprintf("%s-%d", wl, w.cfg.Worker), Scope: wl, Start: now()}
		w.cmd.Process.Signal(syscall.SIGSTOP)
		err := sleepCtx(ctx, 3*time.Second)
		w.cmd.Process.Signal(syscall.SIGCONT)
		f.End = now()
		r.record(f)
		return err
	}
	tails := make([]*tail, len(ws))
	for i, w := range ws {
		tails[i] = &tail{path: w.cfg.History, off: fileSize(w.cfg.History)}
	}
	// 1. Wait for a holder's "hold" record and stop it right then.
	var held *workerProc
	deadline := time.Now().Add(time.Minute)
	for held == nil {
		for i, t := range tails {
			recs, err := t.poll()
			if err != nil {
				return err
			}
			for _, rec := range recs {
				if rec.Type == recEvent && rec.F == "hold" && held == nil {
					held = ws[i]
				}
			}
		}
		if held != nil {
			break
		}
		if time.Now().After(deadline) {
			// Make the stuck workers print their goroutines into their
			// stderr logs (Go's SIGQUIT dump) before giving up.
			for _, w := range ws {
				w.cmd.Process.Signal(syscall.SIGQUIT)
			}
			return fmt.Errorf("%s: no worker held the lock for a minute; their goroutine dumps are in %s/logs/%s-*.stderr", wl, r.dir, wl)
		}
		if err := sleepCtx(ctx, 2*time.Millisecond); err != nil {
			return err
		}
	}
	f := Fault{Kind: fWorkerPause, Target: fmt.Sprintf("%s-%d", wl, held.cfg.Worker), Scope: wl, Start: now()}
	held.cmd.Process.Signal(syscall.SIGSTOP)
	stoppedAt := fileSize(held.cfg.History) // what it wrote before the stop
	// 2. Wait until another worker completes a write invoked after the
	// stop (for a lock: it held the lock after the paused one's session
	// expired), and at least the session TTL and a second have passed.
	f.Note = "no takeover within 30s"
	stopped := time.Now()
	deadline = stopped.Add(30 * time.Second)
	minPause := time.Duration(sessionTTL)*time.Second + time.Second
	done := false
	for !(done && time.Since(stopped) >= minPause) && time.Now().Before(deadline) {
		for i, t := range tails {
			recs, err := t.poll()
			if err != nil {
				held.cmd.Process.Signal(syscall.SIGCONT)
				return err
			}
			for _, rec := range recs {
				if ws[i] != held && rec.Type == recOK && progressOp(rec.F) {
					done = true
				}
			}
		}
		if !(done && time.Since(stopped) >= minPause) {
			if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
				held.cmd.Process.Signal(syscall.SIGCONT)
				return err
			}
		}
		if done {
			f.Note = "another worker wrote while it slept"
		}
	}
	// 3. Resume it while the other one holds (or has held) the lock.
	held.cmd.Process.Signal(syscall.SIGCONT)
	f.End = now()
	if isControl(wl) {
		// 4. A control must show what an unfenced write does after such a
		// pause. If nobody took the lock over while it slept (the other
		// workers were still held up by an earlier fault, say), or the
		// resumed worker's write did not land (its connection broke),
		// the pause proved nothing: repeat it, up to five times.
		st, err := r.nextWrite(ctx, held, stoppedAt)
		if err != nil {
			return err
		}
		f.Note += "; its stale write: " + st
		r.record(f)
		if (!done || st != recOK) && attempt < 5 {
			return r.pauseWorker(ctx, wl, pick, attempt+1)
		}
		return nil
	}
	r.record(f)
	return nil
}

// nextWrite waits for the first write completion in w's history after
// offset off and returns its outcome.
func (r *run) nextWrite(ctx context.Context, w *workerProc, off int64) (string, error) {
	t := &tail{path: w.cfg.History, off: off}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		recs, err := t.poll()
		if err != nil {
			return "", err
		}
		for _, rec := range recs {
			if rec.F == "write" && rec.Type != recInvoke {
				return rec.Type, nil
			}
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return "", err
		}
	}
	return "none within 30s", nil
}
