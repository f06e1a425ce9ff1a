//go:build linux

package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/batonhq/baton/embedded"
	"github.com/batonhq/baton/internal/loopproxy"
	"github.com/batonhq/baton/memlock/memlocktest"
)

// Options configure a run.
type Options struct {
	// Dir is the run's folder: member logs, histories, the report. It
	// must be missing or empty. Empty means a new folder under
	// os.TempDir().
	Dir string
	// Seed drives every random choice of the run (fault order, targets,
	// workers' choices).
	Seed uint64
	// Duration is the length of the fault phase. Zero means one round:
	// each fault kind once.
	Duration time.Duration
	// Workloads to run; empty means all.
	Workloads []string
	// WorkersPer is the number of worker processes per workload. Default 2.
	WorkersPer int
	// Memlock adds the memlock workloads, on a memcached and a
	// redis-server started for the run (both must be on PATH).
	Memlock bool
	// Logf reports progress (t.Logf); nil means silent.
	Logf func(format string, args ...any)
}

// Fault is one injected fault, as recorded in the run's faults.jsonl.
type Fault struct {
	Kind   string
	Target string
	Start  int64 // Unix ns
	End    int64
	Note   string `json:",omitempty"`
	// Scope is the workload the fault is aimed at; "" means the etcd
	// cluster, which every etcd workload shares.
	Scope string `json:",omitempty"`
}

// applies reports whether f concerns workload wl.
func (f Fault) applies(wl string) bool {
	if f.Scope == "" {
		return !isMemlock(wl)
	}
	return f.Scope == wl
}

// Fault kinds.
const (
	fKill          = "kill"           // kill -9 a member, restart it on its data dir
	fPauseLeader   = "pause-leader"   // SIGSTOP the raft leader, then SIGCONT
	fPauseFollower = "pause-follower" // SIGSTOP a follower, then SIGCONT
	fPartition     = "partition"      // blackhole a member's client and peer proxies
	fClientDelay   = "client-delay"   // delay with jitter on every client proxy
	fClientDrop    = "client-drop"    // blackhole every client proxy briefly
	fWorkerPause   = "worker-pause"   // SIGSTOP a lock holder past its TTL
)

var allFaultKinds = []string{fKill, fPauseLeader, fPauseFollower, fPartition, fClientDelay, fClientDrop, fWorkerPause}

// tableKinds are the fault kinds in report order.
var tableKinds = append(append([]string{"none"}, allFaultKinds...), fCacheRestart, fCachePause)

// AllWorkloads lists the workloads in report order.
var AllWorkloads = []string{wlMutex, wlElection, wlBank, wlSemaphore, wlQueue, wlControlBaton, wlControlEtcd}

const (
	sessionTTL   = 2 // seconds
	bankAccounts = 5
	bankInitial  = 100
)

type workerProc struct {
	cfg   workerConfig
	cmd   *exec.Cmd
	exitc chan error
}

type run struct {
	opt     Options
	rnd     *rand.Rand
	dir     string
	members []*member
	cli     *clientv3.Client
	workers map[string][]*workerProc
	caches  map[string]*memlocktest.Server

	mu     sync.Mutex
	faults []Fault

	// The recovery run's fault to heal: members to restart, and when a
	// paused member is resumed.
	restartLater []int
	resumeBy     time.Time
}

func (r *run) logf(format string, args ...any) {
	if r.opt.Logf != nil {
		r.opt.Logf(format, args...)
	}
}

// Run runs the fault suite: a 3-member cluster of member processes behind
// proxies, worker processes running the workloads, the fault schedule,
// then the checkers. It writes the report into the run's folder and
// returns it. An error means the run could not be carried out (a bad
// setup), not that a checker found anomalies: those are in the Result.
func Run(ctx context.Context, opt Options) (res *Result, err error) {
	if opt.WorkersPer == 0 {
		opt.WorkersPer = 2
	}
	if len(opt.Workloads) == 0 {
		opt.Workloads = AllWorkloads
		if opt.Memlock {
			opt.Workloads = append(opt.Workloads[:len(opt.Workloads):len(opt.Workloads)], wlMemcached, wlRedis)
		}
	}
	dir := opt.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "baton-faults-"); err != nil {
			return nil, err
		}
	} else if err := emptyFolder(dir); err != nil {
		return nil, err
	}
	for _, d := range []string{"logs", "histories"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	r := &run{opt: opt, rnd: rand.New(rand.NewPCG(opt.Seed, 0x6661756c7473)), dir: dir, workers: map[string][]*workerProc{}, caches: map[string]*memlocktest.Server{}}
	defer r.teardown()
	started := time.Now()
	if err := r.startCluster(); err != nil {
		return nil, err
	}
	r.logf("faults: cluster up in %v", time.Since(started).Round(time.Millisecond))
	if err := r.startCaches(); err != nil {
		return nil, err
	}
	if err := r.startWorkers(ctx); err != nil {
		return nil, err
	}
	if err := r.waitProgress(ctx, 90*time.Second); err != nil {
		return nil, err
	}
	r.logf("faults: workers running; faults begin")
	if err := r.scheduleAll(ctx); err != nil {
		return nil, err
	}
	finalAt, err := r.stopWorkers()
	if err != nil {
		return nil, err
	}
	res, err = r.check(ctx, finalAt)
	if err != nil {
		return nil, err
	}
	res.Dir = dir
	res.Elapsed = time.Since(started)
	if err := res.write(); err != nil {
		return nil, err
	}
	return res, nil
}

func (r *run) startCluster() error {
	ports, err := embedded.FreePorts(6)
	if err != nil {
		return err
	}
	var initial []string
	for i := range 3 {
		name := fmt.Sprintf("m%d", i)
		m := &member{cfg: memberConfig{
			Name:         name,
			Dir:          filepath.Join(r.dir, "data", name),
			ListenClient: fmt.Sprintf("127.0.0.1:%d", ports[2*i]),
			ListenPeer:   fmt.Sprintf("127.0.0.1:%d", ports[2*i+1]),
			LogPath:      filepath.Join(r.dir, "logs", name+".log"),
		}, stderrPath: filepath.Join(r.dir, "logs", name+".stderr")}
		r.members = append(r.members, m)
		if m.clientProxy, m.cfg.AdvertiseClient, err = loopproxy.New(m.cfg.ListenClient); err != nil {
			return err
		}
		if m.peerProxy, m.cfg.AdvertisePeer, err = loopproxy.New(m.cfg.ListenPeer); err != nil {
			return err
		}
		initial = append(initial, name+"=http://"+m.cfg.AdvertisePeer)
	}
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i, m := range r.members {
		m.cfg.InitialCluster = strings.Join(initial, ",")
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.start(2 * time.Minute)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return withStderr(err, r.members)
	}
	r.cli, err = clientv3.New(clientv3.Config{
		Endpoints:   r.endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	return err
}

// withStderr adds the last line each failed member wrote on stderr, which
// names the cause (a port in use, a bad data dir).
func withStderr(err error, ms []*member) error {
	var b strings.Builder
	b.WriteString(err.Error())
	for _, m := range ms {
		data, _ := os.ReadFile(m.stderrPath)
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if last := lines[len(lines)-1]; last != "" {
			fmt.Fprintf(&b, "\n%s stderr: %s", m.cfg.Name, last)
		}
	}
	return errors.New(b.String())
}

func (r *run) endpoints() []string {
	var eps []string
	for _, m := range r.members {
		eps = append(eps, m.ClientURL())
	}
	return eps
}

func (r *run) prefix(wl string) string { return "/faults/" + wl }

func (r *run) startWorkers(ctx context.Context) error {
	// The bank's accounts exist before its workers start.
	if slicesContains(r.opt.Workloads, wlBank) {
		ops := []clientv3.Op{}
		for i := range bankAccounts {
			ops = append(ops, clientv3.OpPut(acctKey(r.prefix(wlBank), i), strconv.Itoa(bankInitial)))
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := r.cli.Txn(cctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("faults: create bank accounts: %w", err)
		}
	}
	type started struct {
		w      *workerProc
		readyc <-chan bool
	}
	var all []started
	for _, wl := range r.opt.Workloads {
		n := r.opt.WorkersPer
		if wl == wlSemaphore {
			n = max(n, semWorkers)
		}
		for i := range n {
			name := fmt.Sprintf("%s-%d", wl, i)
			c := workerConfig{
				Workload:  wl,
				Worker:    i,
				Endpoints: r.endpoints(),
				History:   filepath.Join(r.dir, "histories", name+".jsonl"),
				Seed:      r.rnd.Uint64(),
				TTL:       sessionTTL,
				Think:     150 * time.Millisecond,
				Prefix:    r.prefix(wl),
				Accounts:  bankAccounts,
			}
			if s := r.caches[wl]; s != nil {
				c.CacheAddr = s.Addr()
			}
			b, err := json.Marshal(c)
			if err != nil {
				return err
			}
			cmd, readyc, err := startChild("worker", string(b), filepath.Join(r.dir, "logs", name+".stderr"))
			if err != nil {
				return fmt.Errorf("faults: start worker %s: %w", name, err)
			}
			w := &workerProc{cfg: c, cmd: cmd, exitc: make(chan error, 1)}
			go func() { w.exitc <- cmd.Wait() }()
			r.workers[wl] = append(r.workers[wl], w)
			all = append(all, started{w, readyc})
		}
	}
	for _, s := range all {
		select {
		case ok := <-s.readyc:
			if !ok {
				return fmt.Errorf("faults: worker %s-%d exited before it was ready; see %s", s.w.cfg.Workload, s.w.cfg.Worker, filepath.Join(r.dir, "logs"))
			}
		case <-time.After(2 * time.Minute):
			return fmt.Errorf("faults: worker %s-%d not ready after 2m; see %s", s.w.cfg.Workload, s.w.cfg.Worker, filepath.Join(r.dir, "logs"))
		}
	}
	return nil
}

func slicesContains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// waitProgress waits until every workload has completed an operation
// successfully since the call.
func (r *run) waitProgress(ctx context.Context, bound time.Duration) error {
	since := time.Now().UnixNano()
	deadline := time.Now().Add(bound)
	pending := map[string]bool{}
	tails := map[string][]*tail{}
	for _, wl := range r.opt.Workloads {
		pending[wl] = true
		for _, w := range r.workers[wl] {
			tails[wl] = append(tails[wl], &tail{path: w.cfg.History})
		}
	}
	for len(pending) > 0 {
		for wl := range pending {
			for _, t := range tails[wl] {
				recs, err := t.poll()
				if err != nil {
					return err
				}
				for _, rec := range recs {
					if rec.Type == recOK && rec.Time >= since && progressOp(rec.F) {
						delete(pending, wl)
					}
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("faults: no progress in %v by %v; see %s", bound, keys(pending), r.dir)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// stopWorkers resumes every worker, asks it to stop, and waits (SIGKILL
// after a bound). It returns the time after which no worker runs.
func (r *run) stopWorkers() (int64, error) {
	var all []*workerProc
	for _, wl := range r.opt.Workloads {
		all = append(all, r.workers[wl]...)
	}
	for _, w := range all {
		w.cmd.Process.Signal(syscall.SIGCONT)
		w.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, w := range all {
		select {
		case <-w.exitc:
		case <-time.After(30 * time.Second):
			w.cmd.Process.Kill()
			<-w.exitc
		}
		w.cmd = nil
	}
	return time.Now().UnixNano(), nil
}

func (r *run) teardown() {
	for _, ws := range r.workers {
		for _, w := range ws {
			if w.cmd != nil {
				w.cmd.Process.Kill()
				<-w.exitc
				w.cmd = nil
			}
		}
	}
	if r.cli != nil {
		r.cli.Close()
	}
	var wg sync.WaitGroup
	for _, m := range r.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.stop(30 * time.Second)
		}()
	}
	wg.Wait()
	for _, m := range r.members {
		m.closeProxies()
	}
	for _, s := range r.caches {
		s.Close()
	}
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x6d656d6c6f636b)) }

// scheduleAll runs the etcd fault schedule and, beside it, the memlock
// servers' faults; it returns when both are done.
func (r *run) scheduleAll(ctx context.Context) error {
	stop := make(chan struct{})
	var mls []string
	for _, wl := range r.opt.Workloads {
		if isMemlock(wl) {
			mls = append(mls, wl)
		}
	}
	errc := make(chan error, len(mls))
	for _, wl := range mls {
		seed := r.rnd.Uint64()
		go func() { errc <- r.memlockFaults(ctx, wl, seed, stop) }()
	}
	err := r.schedule(ctx)
	close(stop)
	for range mls {
		if e := <-errc; e != nil && err == nil {
			err = e
		}
	}
	return err
}

func (r *run) record(f Fault) {
	r.mu.Lock()
	r.faults = append(r.faults, f)
	r.mu.Unlock()
	r.logf("faults: %s %s %v", f.Kind, f.Target, time.Duration(f.End-f.Start).Round(time.Millisecond))
}

// freePorts returns n free loopback addresses ("127.0.0.1:port").
func freePorts(n int) ([]string, error) {
	ps, err := embedded.FreePorts(n)
	if err != nil {
		return nil, err
	}
	out := make([]string, n)
	for i, p := range ps {
		out[i] = fmt.Sprintf("127.0.0.1:%d", p)
	}
	return out, nil
}

// emptyFolder fails unless dir is missing or empty. A run appends to its
// histories, so a folder that holds an earlier run's would mix the two runs
// and make the checkers report the other run's operations as anomalies.
func emptyFolder(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("faults: run folder: %w", err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("faults: run folder %s is not empty (it holds %s): an earlier run's histories would mix with this one's; give a new or empty folder (FAULTS_DIR)", dir, ents[0].Name())
	}
	return nil
}
