//go:build linux

package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	etcdconc "go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/batonhq/baton/concurrency"
)

// The recovery run measures how long a fault keeps locks and elections
// from being taken, for baton and for etcd's package side by side: the
// loops of every contender run at the same time on the same 3-member
// cluster (member processes behind proxies, as in Run), and each fault
// hits them all at once.
//
// A loop takes the lock (or leads) and gives it back, over and over, on a
// session with the suite's 2 s TTL. A fault's recovery, for one loop, is
// the time from the fault's start until a Lock (Campaign) that the loop
// began after the start has succeeded. A call stuck from before the fault
// (an Unlock on the stopped member) delays that Lock, and counts.

// Contenders of the recovery run.
const (
	contBaton      = "baton"                     // baton, on concurrency.NewClient
	contBatonPlain = "baton on clientv3.New"     // baton, on a client of clientv3.New
	contEtcd       = "etcd concurrency (v3.7.3)" // etcd's package, on clientv3.New
)

var contenders = []string{contBaton, contBatonPlain, contEtcd}

// Recovery scenarios.
const (
	recKill      = "kill -9 leader member → next Lock"
	recPause     = "SIGSTOP leader member → next Lock"
	recPauseLong = "SIGSTOP leader member 12 s → next Lock"
	recCampaign  = "SIGSTOP leader member → next Campaign"
	recRolling   = "rolling restart, 3 members → Lock/Unlock per s"
	recHolder    = "SIGSTOP holder past its 2 s TTL → next Lock"
)

// holderConfig is what a holder process is started with.
type holderConfig struct {
	Endpoints []string
	Prefix    string
	Etcd      bool // etcd's package rather than baton's
}

// runHolder is the body of a holder process: it takes the lock on prefix,
// prints "ready", and holds it until it is killed. The parent stops it
// with SIGSTOP, as a process stalled past its TTL (a GC pause, a frozen
// VM) would be.
func runHolder() int {
	var c holderConfig
	if err := json.Unmarshal([]byte(os.Getenv(configEnv)), &c); err != nil {
		fmt.Fprintln(os.Stderr, "faults: holder config:", err)
		return 2
	}
	cfg := clientv3.Config{Endpoints: c.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var lock func() error
	if c.Etcd {
		cli, err := clientv3.New(cfg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "faults: holder:", err)
			return 1
		}
		s, err := etcdconc.NewSession(cli, etcdconc.WithTTL(sessionTTL))
		if err != nil {
			fmt.Fprintln(os.Stderr, "faults: holder:", err)
			return 1
		}
		lock = func() error { return etcdconc.NewMutex(s, c.Prefix).Lock(ctx) }
	} else {
		cli, err := concurrency.NewClient(cfg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "faults: holder:", err)
			return 1
		}
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(sessionTTL))
		if err != nil {
			fmt.Fprintln(os.Stderr, "faults: holder:", err)
			return 1
		}
		lock = func() error { return concurrency.NewMutex(s, c.Prefix).Lock(ctx) }
	}
	if err := lock(); err != nil {
		fmt.Fprintln(os.Stderr, "faults: holder: lock:", err)
		return 1
	}
	fmt.Println("ready")
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT)
	<-sigc
	return 0
}

// RecoveryOptions configure RunRecovery.
type RecoveryOptions struct {
	// Dir is the run's folder (member logs); it must be missing or empty.
	// Empty means a new folder under os.TempDir().
	Dir string
	// Rounds is the number of times each fault is repeated (default 3).
	Rounds int
	// Pause is how long a paused member stays stopped (default 4 s).
	Pause time.Duration
	// Long adds a round of a 12 s pause.
	Long bool
	Logf func(format string, args ...any)
}

// RecoveryRow is one scenario × contender of a recovery run.
type RecoveryRow struct {
	Scenario, Contender string
	// Samples are the recoveries measured, in order (for the rolling
	// restart: one sample, whose value is the rate in Lock/Unlock cycles
	// per second during the restarts, as a Duration of that many ns).
	Samples []time.Duration
	// Rate is for recRolling: cycles per second during the restarts, and
	// Baseline the rate before them.
	Rate, Baseline float64
	// Failed counts the Lock/Campaign calls that failed during the fault.
	Failed int
}

// Max is the largest sample.
func (r RecoveryRow) Max() time.Duration {
	var m time.Duration
	for _, s := range r.Samples {
		m = max(m, s)
	}
	return m
}

// Median is the median sample.
func (r RecoveryRow) Median() time.Duration {
	if len(r.Samples) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), r.Samples...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[(len(s)-1)/2]
}

// RecoveryResult is what RunRecovery measured.
type RecoveryResult struct {
	Dir  string
	Rows []RecoveryRow
}

// Row returns the row of scenario and contender.
func (res *RecoveryResult) Row(scenario, contender string) *RecoveryRow {
	for i := range res.Rows {
		if res.Rows[i].Scenario == scenario && res.Rows[i].Contender == contender {
			return &res.Rows[i]
		}
	}
	return nil
}

// WriteTable writes the result as a table.
func (res *RecoveryResult) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tcontender\trecovery p50\trecovery max\tsamples\tfailed calls\t")
	for _, r := range res.Rows {
		if r.Scenario == recRolling {
			fmt.Fprintf(tw, "%s\t%s\t%.0f/s\t(before: %.0f/s)\t\t%d\t\n", r.Scenario, r.Contender, r.Rate, r.Baseline, r.Failed)
			continue
		}
		var ss []string
		for _, s := range r.Samples {
			ss = append(ss, s.Round(10*time.Millisecond).String())
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%v\t%s\t%d\t\n", r.Scenario, r.Contender, r.Median().Round(10*time.Millisecond), r.Max().Round(10*time.Millisecond), strings.Join(ss, " "), r.Failed)
	}
	tw.Flush()
}

// attempt is one Lock (or Campaign) of a loop.
type attempt struct {
	start, end time.Time
	ok         bool
}

// contLoop is one contender's loop and its record.
type contLoop struct {
	name string
	mu   sync.Mutex
	log  []attempt
	slow []slowCall
	done chan struct{}
}

func (l *contLoop) add(a attempt) {
	l.mu.Lock()
	l.log = append(l.log, a)
	l.mu.Unlock()
}

// recovered returns the time from t0 until a call begun after t0 first
// succeeded, and how many calls begun after t0 failed before it. It waits
// for that call up to bound.
func (l *contLoop) recovered(ctx context.Context, t0 time.Time, bound time.Duration) (time.Duration, int, error) {
	deadline := time.Now().Add(bound)
	for {
		l.mu.Lock()
		failed := 0
		for _, a := range l.log {
			if a.start.Before(t0) {
				continue
			}
			if a.ok {
				l.mu.Unlock()
				return a.end.Sub(t0), failed, nil
			}
			failed++
		}
		l.mu.Unlock()
		if time.Now().After(deadline) {
			return 0, failed, fmt.Errorf("faults: %s: no call begun after the fault succeeded within %v", l.name, bound)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return 0, failed, err
		}
	}
}

// cycles counts the successful calls that began in [from, to).
func (l *contLoop) cycles(from, to time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, a := range l.log {
		if a.ok && !a.start.Before(from) && a.start.Before(to) {
			n++
		}
	}
	return n
}

// lockOps is one contender's way to take and give back a lock or a
// leadership on a session.
type lockOps struct {
	take func(ctx context.Context) error
	give func(ctx context.Context) error
}

// slowCall is a call of a loop that took over a second.
type slowCall struct {
	at   time.Time
	call string
	took time.Duration
	err  string
}

func (l *contLoop) timed(call string, f func() error) error {
	start := time.Now()
	err := f()
	if d := time.Since(start); d > time.Second {
		s := slowCall{at: start, call: call, took: d}
		if err != nil {
			s.err = err.Error()
		}
		l.mu.Lock()
		l.slow = append(l.slow, s)
		l.mu.Unlock()
	}
	return err
}

// runLoop runs ops until ctx ends.
func runLoop(ctx context.Context, l *contLoop, newOps func() (*lockOps, func(), error)) {
	defer close(l.done)
	for ctx.Err() == nil {
		var ops *lockOps
		var closeFn func()
		err := l.timed("new session", func() (err error) {
			ops, closeFn, err = newOps()
			return err
		})
		if err != nil {
			sleepCtx(ctx, 50*time.Millisecond)
			continue
		}
		for ctx.Err() == nil {
			start := time.Now()
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			err := l.timed("take", func() error { return ops.take(cctx) })
			cancel()
			if ctx.Err() != nil {
				break
			}
			l.add(attempt{start: start, end: time.Now(), ok: err == nil})
			if err != nil {
				break // a new session: this one may have expired
			}
			cctx, cancel = context.WithTimeout(ctx, 20*time.Second)
			err = l.timed("give", func() error { return ops.give(cctx) })
			cancel()
			if err != nil {
				break
			}
			sleepCtx(ctx, 5*time.Millisecond)
		}
		l.timed("close session", func() error { closeFn(); return nil })
	}
}

// batonOps are baton's Mutex (or Election) on a new session of cli.
func batonOps(cli *clientv3.Client, pfx string, elect bool) func() (*lockOps, func(), error) {
	return func() (*lockOps, func(), error) {
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(sessionTTL))
		if err != nil {
			return nil, nil, err
		}
		closeFn := func() { s.Close() }
		if elect {
			e := concurrency.NewElection(s, pfx)
			return &lockOps{
				take: func(ctx context.Context) error { return e.Campaign(ctx, "v") },
				give: e.Resign,
			}, closeFn, nil
		}
		m := concurrency.NewMutex(s, pfx)
		return &lockOps{take: m.Lock, give: m.Unlock}, closeFn, nil
	}
}

// etcdOps are etcd's Mutex (or Election) on a new session of cli.
func etcdOps(cli *clientv3.Client, pfx string, elect bool) func() (*lockOps, func(), error) {
	return func() (*lockOps, func(), error) {
		s, err := etcdconc.NewSession(cli, etcdconc.WithTTL(sessionTTL))
		if err != nil {
			return nil, nil, err
		}
		closeFn := func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			s.Orphan()
			cli.Revoke(ctx, s.Lease())
		}
		if elect {
			e := etcdconc.NewElection(s, pfx)
			return &lockOps{
				take: func(ctx context.Context) error { return e.Campaign(ctx, "v") },
				give: e.Resign,
			}, closeFn, nil
		}
		m := etcdconc.NewMutex(s, pfx)
		return &lockOps{take: m.Lock, give: m.Unlock}, closeFn, nil
	}
}

// RunRecovery starts a cluster and measures the recovery scenarios.
func RunRecovery(ctx context.Context, opt RecoveryOptions) (res *RecoveryResult, err error) {
	if opt.Rounds == 0 {
		opt.Rounds = 3
	}
	if opt.Pause == 0 {
		opt.Pause = 4 * time.Second
	}
	dir := opt.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "baton-recovery-"); err != nil {
			return nil, err
		}
	} else if err := emptyFolder(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	r := &run{opt: Options{Logf: opt.Logf}, dir: dir}
	defer r.teardown()
	if err := r.startCluster(); err != nil {
		return nil, err
	}
	res = &RecoveryResult{Dir: dir}
	clients := map[string]*clientv3.Client{}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for _, name := range contenders {
		cfg := clientv3.Config{Endpoints: r.endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
		var c *clientv3.Client
		if name == contBaton {
			c, err = concurrency.NewClient(cfg)
		} else {
			c, err = clientv3.New(cfg)
		}
		if err != nil {
			return nil, err
		}
		clients[name] = c
	}
	// startLoops starts every contender's loop on prefix pfx; stop ends
	// them and waits.
	startLoops := func(pfx string, elect bool) (map[string]*contLoop, func()) {
		lctx, cancel := context.WithCancel(ctx)
		loops := map[string]*contLoop{}
		for i, name := range contenders {
			l := &contLoop{name: name, done: make(chan struct{})}
			loops[name] = l
			p := fmt.Sprintf("/recovery/%s/%d", pfx, i)
			ops := batonOps(clients[name], p, elect)
			if name == contEtcd {
				ops = etcdOps(clients[name], p, elect)
			}
			go runLoop(lctx, l, ops)
		}
		return loops, func() {
			cancel()
			for _, l := range loops {
				<-l.done
			}
		}
	}
	measure := func(scenario string, pfx string, elect bool, rounds int, fault func() (time.Time, error)) error {
		loops, stop := startLoops(pfx, elect)
		defer stop()
		rows := map[string]*RecoveryRow{}
		for _, name := range contenders {
			rows[name] = &RecoveryRow{Scenario: scenario, Contender: name}
		}
		for round := range rounds {
			if err := r.settle(ctx, loops); err != nil {
				return fmt.Errorf("%s, round %d: %w", scenario, round+1, err)
			}
			t0, err := fault()
			if err != nil {
				return err
			}
			for _, name := range contenders {
				d, failed, err := loops[name].recovered(ctx, t0, 60*time.Second)
				if err != nil {
					return fmt.Errorf("%s, round %d: %w", scenario, round+1, err)
				}
				rows[name].Samples = append(rows[name].Samples, d)
				rows[name].Failed += failed
			}
			for _, name := range contenders {
				l := loops[name]
				l.mu.Lock()
				for _, sc := range l.slow {
					if !sc.at.Before(t0.Add(-time.Second)) {
						r.logf("recovery: %s: slow %s: began %v after the fault, took %v, err %q", name, sc.call, sc.at.Sub(t0).Round(time.Millisecond), sc.took.Round(time.Millisecond), sc.err)
					}
				}
				l.slow = nil
				l.mu.Unlock()
			}
			r.logf("recovery: %s, round %d: baton %v, baton on clientv3.New %v, etcd %v", scenario, round+1,
				rows[contBaton].Samples[round].Round(time.Millisecond), rows[contBatonPlain].Samples[round].Round(time.Millisecond), rows[contEtcd].Samples[round].Round(time.Millisecond))
			if err := r.healed(ctx); err != nil {
				return err
			}
		}
		for _, name := range contenders {
			res.Rows = append(res.Rows, *rows[name])
		}
		return nil
	}
	kill := func() (time.Time, error) {
		l, err := r.leader(ctx)
		if err != nil {
			return time.Time{}, err
		}
		m := r.members[l]
		t0 := time.Now()
		if err := m.kill(); err != nil {
			return t0, err
		}
		// The member comes back once every loop has recovered (healed).
		r.restartLater = append(r.restartLater, l)
		return t0, nil
	}
	pause := func(d time.Duration) func() (time.Time, error) {
		return func() (time.Time, error) {
			l, err := r.leader(ctx)
			if err != nil {
				return time.Time{}, err
			}
			m := r.members[l]
			t0 := time.Now()
			if err := m.signal(syscall.SIGSTOP); err != nil {
				return t0, err
			}
			time.AfterFunc(d, func() { m.signal(syscall.SIGCONT) })
			r.resumeBy = t0.Add(d)
			return t0, nil
		}
	}
	if err := measure(recKill, "kill", false, opt.Rounds, kill); err != nil {
		return res, err
	}
	if err := measure(recPause, "pause", false, opt.Rounds, pause(opt.Pause)); err != nil {
		return res, err
	}
	if opt.Long {
		if err := measure(recPauseLong, "pauselong", false, 1, pause(12*time.Second)); err != nil {
			return res, err
		}
	}
	if err := measure(recCampaign, "campaign", true, opt.Rounds, pause(opt.Pause)); err != nil {
		return res, err
	}
	if err := r.holderPause(ctx, res, clients, opt.Rounds); err != nil {
		return res, err
	}
	if err := r.rolling(ctx, res, startLoops); err != nil {
		return res, err
	}
	return res, nil
}

// holderPause starts a holder process per contender, waits until each
// contender's waiter queues behind it, stops the holders with SIGSTOP, and
// measures how long until each waiter's Lock returns. The holder's lease
// expires a TTL after its last keep-alive answer (at most a TTL after the
// stop), and the server then deletes its key.
func (r *run) holderPause(ctx context.Context, res *RecoveryResult, clients map[string]*clientv3.Client, rounds int) error {
	rows := map[string]*RecoveryRow{}
	for _, name := range contenders {
		rows[name] = &RecoveryRow{Scenario: recHolder, Contender: name}
	}
	for round := range rounds {
		type one struct {
			holder *exec.Cmd
			locked chan time.Time
			close  func()
		}
		ones := map[string]*one{}
		cleanup := func() {
			for _, o := range ones {
				o.holder.Process.Kill()
				o.holder.Wait()
				o.close()
			}
		}
		for i, name := range contenders {
			pfx := fmt.Sprintf("/recovery/holder/%d/%d", round, i)
			b, _ := json.Marshal(holderConfig{Endpoints: r.endpoints(), Prefix: pfx, Etcd: name == contEtcd})
			cmd, readyc, err := startChild("holder", string(b), filepath.Join(r.dir, "logs", "holder.stderr"))
			if err != nil {
				cleanup()
				return err
			}
			o := &one{holder: cmd, locked: make(chan time.Time, 1)}
			ones[name] = o
			if !<-readyc {
				cleanup()
				return fmt.Errorf("faults: %s holder did not take the lock; see %s", name, filepath.Join(r.dir, "logs", "holder.stderr"))
			}
			newOps := batonOps(clients[name], pfx, false)
			if name == contEtcd {
				newOps = etcdOps(clients[name], pfx, false)
			}
			ops, closeFn, err := newOps()
			if err != nil {
				cleanup()
				return err
			}
			o.close = closeFn
			go func() {
				lctx, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()
				if ops.take(lctx) == nil {
					o.locked <- time.Now()
				}
				close(o.locked)
			}()
			if err := waitCount(ctx, r.cli, pfx, 2); err != nil {
				cleanup()
				return err
			}
		}
		t0 := time.Now()
		for _, o := range ones {
			o.holder.Process.Signal(syscall.SIGSTOP)
		}
		for _, name := range contenders {
			at, ok := <-ones[name].locked
			if !ok {
				cleanup()
				return fmt.Errorf("faults: %s: the waiter behind a stopped holder did not get the lock within a minute", name)
			}
			rows[name].Samples = append(rows[name].Samples, at.Sub(t0))
		}
		r.logf("recovery: %s, round %d: baton %v, baton on clientv3.New %v, etcd %v", recHolder, round+1,
			rows[contBaton].Samples[round].Round(time.Millisecond), rows[contBatonPlain].Samples[round].Round(time.Millisecond), rows[contEtcd].Samples[round].Round(time.Millisecond))
		cleanup()
	}
	for _, name := range contenders {
		res.Rows = append(res.Rows, *rows[name])
	}
	return nil
}

// waitCount waits until n keys are under pfx.
func waitCount(ctx context.Context, c *clientv3.Client, pfx string, n int64) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get(ctx, pfx, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err == nil && resp.Count == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("faults: %d keys under %s did not appear in 30 s (last error %v)", n, pfx, err)
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
}

// settle waits until every loop has succeeded lately, so that a fault
// starts on a cluster that works.
func (r *run) settle(ctx context.Context, loops map[string]*contLoop) error {
	from := time.Now()
	deadline := from.Add(60 * time.Second)
	for {
		ok := true
		for _, l := range loops {
			if l.cycles(from, time.Now()) < 3 {
				ok = false
			}
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("faults: the loops made no progress for 60 s before a fault")
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

// healed ends the last fault: it waits for a paused member to be resumed
// and restarts a killed one.
func (r *run) healed(ctx context.Context) error {
	if d := time.Until(r.resumeBy); d > 0 {
		if err := sleepCtx(ctx, d+100*time.Millisecond); err != nil {
			return err
		}
	}
	for _, i := range r.restartLater {
		if err := r.members[i].start(2 * time.Minute); err != nil {
			return withStderr(err, r.members[i:i+1])
		}
	}
	r.restartLater = nil
	return nil
}

// rolling restarts each member in turn (SIGTERM, then start on its data
// dir once the others have a leader) while every contender locks and
// unlocks, and compares the rate of cycles with the one before.
func (r *run) rolling(ctx context.Context, res *RecoveryResult, startLoops func(string, bool) (map[string]*contLoop, func())) error {
	loops, stop := startLoops("rolling", false)
	defer stop()
	if err := r.settle(ctx, loops); err != nil {
		return err
	}
	b0 := time.Now()
	if err := sleepCtx(ctx, 5*time.Second); err != nil {
		return err
	}
	t0 := time.Now()
	for i, m := range r.members {
		m.stop(30 * time.Second)
		if err := sleepCtx(ctx, time.Second); err != nil {
			return err
		}
		if err := m.start(2 * time.Minute); err != nil {
			return withStderr(err, r.members[i:i+1])
		}
	}
	t1 := time.Now()
	for _, name := range contenders {
		l := loops[name]
		row := RecoveryRow{Scenario: recRolling, Contender: name,
			Baseline: float64(l.cycles(b0, t0)) / t0.Sub(b0).Seconds(),
			Rate:     float64(l.cycles(t0, t1)) / t1.Sub(t0).Seconds()}
		l.mu.Lock()
		for _, a := range l.log {
			if !a.ok && !a.start.Before(t0) && a.start.Before(t1) {
				row.Failed++
			}
		}
		l.mu.Unlock()
		res.Rows = append(res.Rows, row)
	}
	return nil
}
