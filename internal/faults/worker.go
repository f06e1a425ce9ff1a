//go:build linux

package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	etcdconc "go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/batonhq/baton/concurrency"
)

// Workload names.
const (
	wlMutex        = "mutex"         // baton Mutex, writes through Guard
	wlElection     = "election"      // baton Election, writes through Guard
	wlControlBaton = "control-baton" // baton Mutex, plain Put (control)
	wlControlEtcd  = "control-etcd"  // etcd's Mutex, plain Put (control)
	wlBank         = "bank"          // baton STM transfers
)

// isControl reports whether a workload is a control, expected to show
// anomalies.
func isControl(wl string) bool { return wl == wlControlBaton || wl == wlControlEtcd }

// isRegister reports whether a workload writes the lock-protected register.
func isRegister(wl string) bool {
	return wl == wlMutex || wl == wlElection || isControl(wl)
}

// workerConfig is what a worker process is started with.
type workerConfig struct {
	Workload  string
	Worker    int
	Endpoints []string
	History   string
	Seed      uint64
	TTL       int           // session TTL, seconds
	Think     time.Duration // time spent holding the lock between read and write
	Prefix    string        // keys of this workload live under it
	Accounts  int           // bank
	CacheAddr string        // memlock workloads: the cache server
}

func (c workerConfig) register() string { return c.Prefix + "/register" }
func (c workerConfig) lockPfx() string  { return c.Prefix + "/lock" }

// bank keys.
func acctKey(pfx string, i int) string { return fmt.Sprintf("%s/acct/%02d", pfx, i) }
func txKey(pfx, id string) string      { return pfx + "/tx/" + id }

const opTimeout = 3 * time.Second

// runWorker is the body of a worker process: it runs one workload's client
// loop until SIGTERM, recording every operation in its history file. It
// prints "ready" once its client is up.
func runWorker() int {
	var c workerConfig
	if err := json.Unmarshal([]byte(os.Getenv(configEnv)), &c); err != nil {
		fmt.Fprintln(os.Stderr, "faults: worker config:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	rec, err := newRecorder(c.History, c.Worker)
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults: worker:", err)
		return 1
	}
	defer rec.close()
	newClient := func() (*clientv3.Client, error) {
		cfg := clientv3.Config{
			Endpoints:   c.Endpoints,
			DialTimeout: 5 * time.Second,
			Logger:      zap.NewNop(),
		}
		if c.Workload == wlControlEtcd {
			// etcd's package on the client its users make.
			cfg.DialKeepAliveTime, cfg.DialKeepAliveTimeout = 10*time.Second, 3*time.Second
			return clientv3.New(cfg)
		}
		// baton's workloads on the client baton recommends.
		return concurrency.NewClient(cfg)
	}
	cli, err := newClient()
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults: worker client:", err)
		return 1
	}
	defer func() { cli.Close() }()
	rec.event(Record{F: "start"})
	fmt.Println("ready")
	w := &worker{cfg: c, cli: cli, newClient: newClient, rec: rec, rnd: rand.New(rand.NewPCG(c.Seed, uint64(c.Worker)))}
	defer func() { w.cli.Close() }()
	switch c.Workload {
	case wlMutex, wlControlBaton:
		w.lockLoop(ctx, c.Workload == wlMutex)
	case wlElection:
		w.electionLoop(ctx)
	case wlControlEtcd:
		w.etcdLockLoop(ctx)
	case wlBank:
		w.bankLoop(ctx)
	case wlSemaphore:
		w.semaphoreLoop(ctx)
	case wlQueue:
		w.queueLoop(ctx)
	case wlMemcached, wlRedis:
		w.memlockLoop(ctx)
	default:
		fmt.Fprintln(os.Stderr, "faults: unknown workload", c.Workload)
		return 2
	}
	return 0
}

type worker struct {
	cfg       workerConfig
	cli       *clientv3.Client
	newClient func() (*clientv3.Client, error)
	rec       *recorder
	rnd       *rand.Rand
	seq       int
}

// retryPause waits a little before the next attempt after an error, so a
// worker does not spin while the cluster is unavailable.
func retryPause(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(50 * time.Millisecond):
	}
}

// grant grants a lease with a bounded wait (NewSession's own grant waits as
// long as its context, which is the session's lifetime).
func (w *worker) grant(ctx context.Context) (clientv3.LeaseID, error) {
	gctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	r, err := w.cli.Grant(gctx, int64(w.cfg.TTL))
	if err != nil {
		return 0, err
	}
	return r.ID, nil
}

// regValue is the register's stored form: value, token and the value it
// replaced, so that the resource's own log (the key's revisions) can be
// checked without the histories.
func regValue(val string, tok int64, prev string) string {
	return val + "|" + strconv.FormatInt(tok, 10) + "|" + prev
}

func parseReg(s string) (val string, tok int64, prev string) {
	if s == "" {
		return "", 0, ""
	}
	parts := strings.SplitN(s, "|", 3)
	if len(parts) != 3 {
		return s, -1, ""
	}
	tok, _ = strconv.ParseInt(parts[1], 10, 64)
	return parts[0], tok, parts[2]
}

// readRegister reads the register and records the read. It returns the
// value read, and false when the read failed.
func (w *worker) readRegister(ctx context.Context) (string, bool) {
	id := w.rec.invoke(Record{F: "read"})
	rctx, cancel := context.WithTimeout(ctx, opTimeout)
	resp, err := w.cli.Get(rctx, w.cfg.register())
	cancel()
	if err != nil {
		w.rec.complete(id, recFail, Record{F: "read", Err: err.Error()})
		return "", false
	}
	var v string
	if len(resp.Kvs) > 0 {
		v = string(resp.Kvs[0].Value)
	}
	val, tok, _ := parseReg(v)
	w.rec.complete(id, recOK, Record{F: "read", Val: val, Tok: tok})
	return val, true
}

// think holds the lock for the configured time, as a client doing work in
// its critical section does. It is where the parent pauses a holder.
func (w *worker) think(ctx context.Context) {
	d := w.cfg.Think/2 + time.Duration(w.rnd.Int64N(int64(w.cfg.Think)+1))
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// writeRegister writes a new unique value with put and records it. put
// returns (applied, definite): an error that proves nothing was written is
// a fail, any other error an unknown.
func (w *worker) writeRegister(ctx context.Context, prev string, tok int64, put func(ctx context.Context, v string) error, definite func(error) bool) (status string) {
	w.seq++
	val := fmt.Sprintf("w%d-%d", w.cfg.Worker, w.seq)
	in := Record{F: "write", Val: val, Prev: prev, Tok: tok}
	id := w.rec.invoke(in)
	wctx, cancel := context.WithTimeout(ctx, opTimeout)
	err := put(wctx, regValue(val, tok, prev))
	cancel()
	out := in
	switch {
	case err == nil:
		status = recOK
	case definite(err):
		out.Err = err.Error()
		status = recFail
	default:
		out.Err = err.Error()
		status = recUnknown
	}
	w.rec.complete(id, status, out)
	return status
}

func never(error) bool { return false }

// naivePut is the controls' write: a plain Put, tried again on an error
// (up to three attempts within ctx), as a client that trusts its lock
// does.
func (w *worker) naivePut(ctx context.Context, v string) error {
	var err error
	for range 3 {
		if _, err = w.cli.Put(ctx, w.cfg.register(), v); err == nil || ctx.Err() != nil {
			return err
		}
		retryPause(ctx)
	}
	return err
}

// release runs unlock (Unlock, Resign, Release) until it succeeds, the
// lock is found gone, or three attempts failed; it reports false in the
// last case, and the caller then ends its session so that the lock it may
// still hold goes with the lease. (A failed Unlock leaves the lock held: a
// worker that went on with a new Mutex on the same session would wait
// behind its own key forever.)
func (w *worker) release(ctx context.Context, done <-chan struct{}, unlock func(context.Context) error) bool {
	for range 3 {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
		err := unlock(uctx)
		cancel()
		if err == nil || errors.Is(err, concurrency.ErrLockLost) || errors.Is(err, concurrency.ErrLockReleased) || errors.Is(err, concurrency.ErrPermitsNotHeld) || errors.Is(err, concurrency.ErrPermitsLost) {
			return true
		}
		w.rec.event(Record{F: "unlock-error", Err: err.Error()})
		select {
		case <-done:
			return true
		default:
		}
		retryPause(ctx)
	}
	return false
}

// lockLoop is the register workload on baton's Mutex: Lock, read, think,
// write (through Guard when fenced, else a plain Put), Unlock.
func (w *worker) lockLoop(ctx context.Context, fenced bool) {
	var s *concurrency.Session
	defer func() {
		if s != nil {
			s.Close()
		}
	}()
	for ctx.Err() == nil {
		if s != nil {
			select {
			case <-s.Done():
				s.Close()
				s = nil
			default:
			}
		}
		if s == nil {
			id, err := w.grant(ctx)
			if err == nil {
				s, err = concurrency.NewSession(w.cli, concurrency.WithTTL(w.cfg.TTL), concurrency.WithLease(id))
			}
			if err != nil {
				w.rec.event(Record{F: "session-error", Err: err.Error()})
				retryPause(ctx)
				continue
			}
		}
		m := concurrency.NewMutex(s, w.cfg.lockPfx())
		lctx, cancel := context.WithTimeout(ctx, 2*opTimeout)
		err := m.Lock(lctx)
		cancel()
		if err != nil {
			w.rec.event(Record{F: "lock-error", Err: err.Error()})
			retryPause(ctx)
			continue
		}
		tok := m.Rev()
		w.rec.event(Record{F: "lock", Tok: tok})
		if prev, ok := w.readRegister(ctx); !ok {
			retryPause(ctx)
		} else {
			w.rec.event(Record{F: "hold", Tok: tok})
			w.think(ctx)
			if fenced {
				w.writeRegister(ctx, prev, tok, func(ctx context.Context, v string) error {
					_, err := m.Guard(ctx, clientv3.OpPut(w.cfg.register(), v))
					return err
				}, func(err error) bool { return errors.Is(err, concurrency.ErrLockLost) })
			} else {
				w.writeRegister(ctx, prev, tok, w.naivePut, never)
			}
		}
		if !w.release(ctx, s.Done(), m.Unlock) {
			s.Close()
			s = nil
		}
	}
}

// etcdLockLoop is the control on etcd's own Mutex: Lock, read, think, plain
// Put, Unlock. Its token is the acquisition's header revision (what etcdctl
// lock exports as ETCD_LOCK_REV), which grows across holders.
func (w *worker) etcdLockLoop(ctx context.Context) {
	var s *etcdconc.Session
	defer func() {
		if s != nil {
			s.Close()
		}
	}()
	var wedged atomic.Bool
	for ctx.Err() == nil {
		if wedged.Swap(false) {
			// See the watchdog below: start again on a new client.
			w.rec.event(Record{F: "wedged", Err: "an iteration of etcd's Mutex took over 45s; goroutines dumped to stderr, client replaced"})
			s = nil
			if cli, err := w.newClient(); err == nil {
				w.cli = cli
			} else {
				w.rec.event(Record{F: "client-error", Err: err.Error()})
				retryPause(ctx)
				continue
			}
		}
		// etcd's package can hang past every context it was given (its
		// Lock cleans up a failed wait under the client's context, with
		// no deadline): after 45 s, dump the goroutines for the record
		// and close the client, which ends such calls. 45 s is longer than an
		// iteration takes, the harness's pause of a holder (up to 30 s) included.
		cli := w.cli
		watchdog := time.AfterFunc(45*time.Second, func() {
			pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
			wedged.Store(true)
			cli.Close()
		})
		w.etcdLockOnce(ctx, &s)
		watchdog.Stop()
	}
}

// etcdLockOnce is one iteration of etcdLockLoop, on the session *sp (made
// or remade as needed).
func (w *worker) etcdLockOnce(ctx context.Context, sp **etcdconc.Session) {
	s := *sp
	defer func() { *sp = s }()
	if s != nil {
		select {
		case <-s.Done():
			s.Close()
			s = nil
		default:
		}
	}
	if s == nil {
		id, err := w.grant(ctx)
		if err == nil {
			s, err = etcdconc.NewSession(w.cli, etcdconc.WithTTL(w.cfg.TTL), etcdconc.WithLease(id))
		}
		if err != nil {
			w.rec.event(Record{F: "session-error", Err: err.Error()})
			retryPause(ctx)
			return
		}
	}
	m := etcdconc.NewMutex(s, w.cfg.lockPfx())
	lctx, cancel := context.WithTimeout(ctx, 2*opTimeout)
	err := m.Lock(lctx)
	cancel()
	if err != nil {
		w.rec.event(Record{F: "lock-error", Err: err.Error()})
		retryPause(ctx)
		return
	}
	tok := m.Header().Revision
	w.rec.event(Record{F: "lock", Tok: tok})
	if prev, ok := w.readRegister(ctx); !ok {
		retryPause(ctx)
	} else {
		w.rec.event(Record{F: "hold", Tok: tok})
		w.think(ctx)
		w.writeRegister(ctx, prev, tok, w.naivePut, never)
	}
	if !w.release(ctx, s.Done(), m.Unlock) {
		s.Close()
		s = nil
	}
}

// electionLoop campaigns; as leader it does one to three read-think-write
// rounds through Election.Guard, then resigns.
func (w *worker) electionLoop(ctx context.Context) {
	var s *concurrency.Session
	defer func() {
		if s != nil {
			s.Close()
		}
	}()
	campaign := 0
	for ctx.Err() == nil {
		if s != nil {
			select {
			case <-s.Done():
				s.Close()
				s = nil
			default:
			}
		}
		if s == nil {
			id, err := w.grant(ctx)
			if err == nil {
				s, err = concurrency.NewSession(w.cli, concurrency.WithTTL(w.cfg.TTL), concurrency.WithLease(id))
			}
			if err != nil {
				w.rec.event(Record{F: "session-error", Err: err.Error()})
				retryPause(ctx)
				continue
			}
		}
		e := concurrency.NewElection(s, w.cfg.lockPfx())
		campaign++
		cctx, cancel := context.WithTimeout(ctx, 2*opTimeout)
		err := e.Campaign(cctx, fmt.Sprintf("w%d-c%d", w.cfg.Worker, campaign))
		cancel()
		if err != nil {
			w.rec.event(Record{F: "lock-error", Err: err.Error()})
			retryPause(ctx)
			continue
		}
		tok := e.Rev()
		w.rec.event(Record{F: "lead", Tok: tok, Val: fmt.Sprintf("w%d-c%d", w.cfg.Worker, campaign)})
		rounds := 1 + w.rnd.IntN(3)
		for range rounds {
			prev, ok := w.readRegister(ctx)
			if !ok {
				retryPause(ctx)
				break
			}
			w.rec.event(Record{F: "hold", Tok: tok})
			w.think(ctx)
			st := w.writeRegister(ctx, prev, tok, func(ctx context.Context, v string) error {
				_, err := e.Guard(ctx, clientv3.OpPut(w.cfg.register(), v))
				return err
			}, func(err error) bool { return errors.Is(err, concurrency.ErrElectionNotLeader) })
			// A write whose answer was lost may still be on its way (held
			// by a paused or cut-off member) and land later with a token
			// that is still valid: fencing orders leaders, not one
			// leader's own requests. So the leader resigns before it
			// writes again; the late write then fails its guard. (Writing
			// on was seen to lose the next write's update.)
			if st != recOK || ctx.Err() != nil {
				break
			}
		}
		if !w.release(ctx, s.Done(), e.Resign) {
			s.Close()
			s = nil
		}
	}
}

// errInsufficient aborts a transfer from an account that holds too little.
var errInsufficient = errors.New("faults: insufficient funds")

// bankLoop runs STM transfers between accounts, each writing a unique
// transfer-id key so that its outcome can be read afterwards, and reads of
// all balances.
func (w *worker) bankLoop(ctx context.Context) {
	n := w.cfg.Accounts
	for ctx.Err() == nil {
		if w.rnd.IntN(5) == 0 {
			w.bankRead(ctx, n)
			continue
		}
		from := w.rnd.IntN(n)
		to := (from + 1 + w.rnd.IntN(n-1)) % n
		amt := int64(1 + w.rnd.IntN(10))
		w.seq++
		txid := fmt.Sprintf("w%d-%d", w.cfg.Worker, w.seq)
		in := Record{F: "transfer", From: from, To: to, Amt: amt, TxID: txid}
		id := w.rec.invoke(in)
		tctx, cancel := context.WithTimeout(ctx, opTimeout)
		_, err := concurrency.NewSTM(w.cli, func(s concurrency.STM) error {
			fk, tk := acctKey(w.cfg.Prefix, from), acctKey(w.cfg.Prefix, to)
			a, _ := strconv.ParseInt(s.Get(fk, tk), 10, 64)
			b, _ := strconv.ParseInt(s.Get(tk), 10, 64)
			if a < amt {
				return errInsufficient
			}
			s.Put(fk, strconv.FormatInt(a-amt, 10))
			s.Put(tk, strconv.FormatInt(b+amt, 10))
			s.Put(txKey(w.cfg.Prefix, txid), fmt.Sprintf("%d>%d:%d", from, to, amt))
			return nil
		}, concurrency.WithAbortContext(tctx))
		cancel()
		out := in
		switch {
		case err == nil:
			w.rec.complete(id, recOK, out)
		case errors.Is(err, concurrency.ErrSTMIndeterminate):
			out.Err = err.Error()
			w.rec.complete(id, recUnknown, out)
		default:
			// NewSTM writes nothing on every other error.
			out.Err = err.Error()
			w.rec.complete(id, recFail, out)
			if !errors.Is(err, errInsufficient) {
				retryPause(ctx)
			}
		}
	}
}

func (w *worker) bankRead(ctx context.Context, n int) {
	id := w.rec.invoke(Record{F: "balances"})
	rctx, cancel := context.WithTimeout(ctx, opTimeout)
	resp, err := w.cli.Get(rctx, w.cfg.Prefix+"/acct/", clientv3.WithPrefix())
	cancel()
	if err != nil {
		w.rec.complete(id, recFail, Record{F: "balances", Err: err.Error()})
		retryPause(ctx)
		return
	}
	bal := make([]int64, 0, n)
	for _, kv := range resp.Kvs {
		v, _ := strconv.ParseInt(string(kv.Value), 10, 64)
		bal = append(bal, v)
	}
	w.rec.complete(id, recOK, Record{F: "balances", Bal: bal})
}
