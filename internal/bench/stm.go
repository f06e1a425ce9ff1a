package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	etcdstm "go.etcd.io/etcd/client/v3/concurrency"

	"github.com/batonhq/baton/concurrency"
)

// The STM workload: bank transfers between stmAccounts accounts by
// stmWorkers workers, each on a client of its own, as separate processes
// would be. A transfer moves a random amount between two distinct random
// accounts chosen before the transaction, so a retry repeats the same
// transfer, as a request to a service would.
const (
	stmAccounts = 8
	stmWorkers  = 8
	stmBalance  = 1000
)

// stmView is what a transfer needs from either package's STM.
type stmView interface {
	Get(key ...string) string
	Put(key, val string, opts ...clientv3.OpOption)
}

// stmImpl runs one transaction with one package at one isolation level.
type stmImpl struct {
	name string
	run  func(ctx context.Context, c *clientv3.Client, iso concurrency.Isolation, apply func(stmView) error) error
}

var stmImpls = []stmImpl{
	{name: "etcd", run: func(ctx context.Context, c *clientv3.Client, iso concurrency.Isolation, apply func(stmView) error) error {
		_, err := etcdstm.NewSTM(c, func(s etcdstm.STM) error { return apply(s) },
			etcdstm.WithAbortContext(ctx), etcdstm.WithIsolation(etcdstm.Isolation(iso)))
		return err
	}},
	{name: "baton", run: func(ctx context.Context, c *clientv3.Client, iso concurrency.Isolation, apply func(stmView) error) error {
		_, err := concurrency.NewSTM(c, func(s concurrency.STM) error { return apply(s) },
			concurrency.WithAbortContext(ctx), concurrency.WithIsolation(iso))
		return err
	}},
}

// stmResult is what one package got done on its accounts.
type stmResult struct {
	pfx            string
	txns, attempts int64
	elapsed        time.Duration
	lat            []time.Duration // of each committed transaction, retries included
	drift          int             // final sum minus the initial sum
}

func (r stmResult) rate() float64 { return float64(r.txns) / r.elapsed.Seconds() }
func (r stmResult) perTxn() float64 {
	if r.txns == 0 {
		return 0
	}
	return float64(r.attempts) / float64(r.txns)
}

// runSTM runs the bank workload at each isolation level with etcd's
// concurrency.NewSTM and baton's, on one server, and checks after every run
// that the money was conserved. The two packages take turns in short
// slices, so that a change in the machine's load during the run weighs on
// both alike.
func runSTM(ctx context.Context, o Options) ([]Row, error) {
	e, err := startEtcd()
	if err != nil {
		return nil, err
	}
	defer e.close()
	slices, slice := 16, 250*time.Millisecond
	if o.Quick {
		slices, slice = 8, 125*time.Millisecond
	}
	clients := make([]*clientv3.Client, stmWorkers)
	for i := range clients {
		if clients[i], err = e.client(); err != nil {
			return nil, err
		}
	}
	levels := []concurrency.Isolation{concurrency.SerializableSnapshot, concurrency.Serializable, concurrency.RepeatableReads, concurrency.ReadCommitted}
	var rows []Row
	for _, iso := range levels {
		res := map[string]*stmResult{}
		for _, im := range stmImpls {
			res[im.name] = &stmResult{pfx: fmt.Sprintf("bench/stm/%s/%s/", im.name, iso)}
			if err := stmOpenAccounts(ctx, clients[0], res[im.name].pfx); err != nil {
				return nil, err
			}
		}
		for i := range slices {
			for j := range stmImpls {
				im := stmImpls[(i+j)%len(stmImpls)]
				if err := stmBank(ctx, clients, im, iso, slice, res[im.name]); err != nil {
					return nil, fmt.Errorf("%s %s: %w", im.name, iso, err)
				}
			}
		}
		for _, im := range stmImpls {
			r := res[im.name]
			if err := r.audit(ctx, clients[0]); err != nil {
				return nil, fmt.Errorf("%s %s: %w", im.name, iso, err)
			}
			o.logf("stm %-20s %-5s %7.0f txn/s %5.2f attempts/txn sum drift %+d", iso, im.name, r.rate(), r.perTxn(), r.drift)
			if r.drift != 0 && iso != concurrency.ReadCommitted {
				return nil, fmt.Errorf("%s %s: sum of balances changed by %+d: the STM lost or created money", im.name, iso, r.drift)
			}
		}
		b, p := res["baton"], res["etcd"]
		note := ""
		if iso == concurrency.ReadCommitted {
			// ReadCommitted checks nothing at commit: concurrent transfers
			// overwrite each other's balances, in either package. The
			// drift is reported, not an error.
			note = fmt.Sprintf("lost updates are allowed at this level: sum drift baton %+d, etcd %+d", b.drift, p.drift)
		}
		w := label("bank transfer", strconv.Itoa(stmAccounts), "accounts", strconv.Itoa(stmWorkers), "workers,", iso.String())
		rows = append(rows,
			Row{Workload: w, Unit: "txn/s", Baton: b.rate(), Peer: p.rate(), PeerName: "etcd concurrency", HigherIsBetter: true, Note: note},
			Row{Workload: w, Unit: "attempts/txn", Baton: b.perTxn(), Peer: p.perTxn(), PeerName: "etcd concurrency"},
		)
		if iso == concurrency.SerializableSnapshot {
			// The default level: how long a transfer takes, retries and
			// backoff pauses included.
			rows = append(rows,
				Row{Workload: w, Unit: "ms p50", Baton: Percentile(b.lat, 50), Peer: Percentile(p.lat, 50), PeerName: "etcd concurrency"},
				Row{Workload: w, Unit: "ms p99", Baton: Percentile(b.lat, 99), Peer: Percentile(p.lat, 99), PeerName: "etcd concurrency"},
			)
		}
	}
	return rows, nil
}

// stmOpenAccounts resets the accounts under pfx to their opening balance.
func stmOpenAccounts(ctx context.Context, c *clientv3.Client, pfx string) error {
	if _, err := c.Delete(ctx, pfx, clientv3.WithPrefix()); err != nil {
		return err
	}
	for i := range stmAccounts {
		if _, err := c.Put(ctx, stmAccount(pfx, i), strconv.Itoa(stmBalance)); err != nil {
			return err
		}
	}
	return nil
}

// stmBank runs transfers on r's accounts for dur and adds what got done
// to r.
func stmBank(ctx context.Context, clients []*clientv3.Client, im stmImpl, iso concurrency.Isolation, dur time.Duration, r *stmResult) error {
	var txns, attempts atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	errc := make(chan error, len(clients))
	start := time.Now()
	deadline := start.Add(dur)
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				from := rand.IntN(stmAccounts)
				to := (from + 1 + rand.IntN(stmAccounts-1)) % stmAccounts
				amount := 1 + rand.IntN(50)
				t0 := time.Now()
				err := im.run(ctx, c, iso, func(s stmView) error {
					attempts.Add(1)
					return stmTransfer(s, stmAccount(r.pfx, from), stmAccount(r.pfx, to), amount)
				})
				if err != nil {
					errc <- err
					return
				}
				d := time.Since(t0)
				mu.Lock()
				r.lat = append(r.lat, d)
				mu.Unlock()
				txns.Add(1)
			}
		}()
	}
	wg.Wait()
	r.elapsed += time.Since(start)
	r.txns += txns.Load()
	r.attempts += attempts.Load()
	close(errc)
	return <-errc
}

// audit sums the balances into r.drift.
func (r *stmResult) audit(ctx context.Context, c *clientv3.Client) error {
	resp, err := c.Get(ctx, r.pfx, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	if len(resp.Kvs) != stmAccounts {
		return fmt.Errorf("%d accounts after the run, want %d", len(resp.Kvs), stmAccounts)
	}
	sum := 0
	for _, kv := range resp.Kvs {
		n, err := strconv.Atoi(string(kv.Value))
		if err != nil {
			return fmt.Errorf("account %s: %w", kv.Key, err)
		}
		sum += n
	}
	r.drift = sum - stmAccounts*stmBalance
	return nil
}

func stmAccount(pfx string, i int) string { return fmt.Sprintf("%sacct/%d", pfx, i) }

var errSTMBadBalance = errors.New("bench: stm: balance is not a number")

// stmTransfer moves amount (or what there is, if less) from one account to
// another.
func stmTransfer(s stmView, from, to string, amount int) error {
	fv, err := strconv.Atoi(s.Get(from))
	if err != nil {
		return fmt.Errorf("%w: %s: %v", errSTMBadBalance, from, err)
	}
	tv, err := strconv.Atoi(s.Get(to))
	if err != nil {
		return fmt.Errorf("%w: %s: %v", errSTMBadBalance, to, err)
	}
	amount = min(amount, fv)
	s.Put(from, strconv.Itoa(fv-amount))
	s.Put(to, strconv.Itoa(tv+amount))
	return nil
}
