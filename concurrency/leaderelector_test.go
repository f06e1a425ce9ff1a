package concurrency_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	etcdconc "go.etcd.io/etcd/client/v3/concurrency"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/internal/testutil"
)

// termEvent is one callback of an elector, stamped on the test process's
// monotonic clock.
type termEvent struct {
	what  string // "start", "lost", "return", "stop", "leader"
	at    time.Time
	rev   int64
	key   string
	cause error
	id    string
}

// recorder records an elector's callbacks and checks, as they happen,
// that terms never overlap.
type recorder struct {
	t      *testing.T
	mu     sync.Mutex
	events []termEvent
	active int // OnStartedLeading calls running
	starts chan *concurrency.Leadership
	losses chan error
	stops  chan struct{}
	// hold, when set, is waited for by OnStartedLeading after its ctx
	// ended, before it returns: a slow or wedged callback.
	hold chan struct{}
	// beforeReturn, when set, runs last in OnStartedLeading.
	beforeReturn func(l *concurrency.Leadership)
	// atStop, when set (under mu), runs in OnStoppedLeading: what holds
	// then may no longer hold once the next term has started.
	atStop func()
}

func newRecorder(t *testing.T) *recorder {
	return &recorder{
		t:      t,
		starts: make(chan *concurrency.Leadership, 100),
		losses: make(chan error, 100),
		stops:  make(chan struct{}, 100),
	}
}

func (r *recorder) add(ev termEvent) {
	ev.at = time.Now()
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
}

func (r *recorder) callbacks() concurrency.LeaderCallbacks {
	return concurrency.LeaderCallbacks{
		OnStartedLeading: func(ctx context.Context, l *concurrency.Leadership) {
			r.mu.Lock()
			r.active++
			if r.active > 1 {
				r.t.Errorf("two OnStartedLeading at once")
			}
			r.mu.Unlock()
			r.add(termEvent{what: "start", rev: l.Rev(), key: l.Key()})
			r.starts <- l
			<-ctx.Done()
			cause := context.Cause(ctx)
			r.add(termEvent{what: "lost", rev: l.Rev(), cause: cause})
			r.losses <- cause
			if r.hold != nil {
				<-r.hold
			}
			if r.beforeReturn != nil {
				r.beforeReturn(l)
			}
			r.mu.Lock()
			r.active--
			r.mu.Unlock()
			r.add(termEvent{what: "return", rev: l.Rev()})
		},
		OnStoppedLeading: func() {
			r.mu.Lock()
			if r.active != 0 {
				r.t.Errorf("OnStoppedLeading while OnStartedLeading runs")
			}
			atStop := r.atStop
			r.mu.Unlock()
			if atStop != nil {
				atStop()
			}
			r.add(termEvent{what: "stop"})
			r.stops <- struct{}{}
		},
		OnNewLeader: func(id string) { r.add(termEvent{what: "leader", id: id}) },
	}
}

// first returns the first event of kind what.
func (r *recorder) first(what string) termEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range r.events {
		if ev.what == what {
			return ev
		}
	}
	r.t.Fatalf("no %q event", what)
	return termEvent{}
}

// terms returns the sequence of term callbacks, "start lost return stop"
// for each term.
func (r *recorder) terms() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s []string
	for _, ev := range r.events {
		if ev.what != "leader" {
			s = append(s, ev.what)
		}
	}
	return s
}

// elector is a running LeaderElector.
type elector struct {
	*concurrency.LeaderElector
	rec    *recorder
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned, with err set
	err    error
}

func startElector(t *testing.T, cfg concurrency.LeaderElectionConfig, rec *recorder) *elector {
	t.Helper()
	if cfg.Callbacks.OnStartedLeading == nil {
		cfg.Callbacks = rec.callbacks()
	}
	le, err := concurrency.NewLeaderElector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	el := &elector{LeaderElector: le, rec: rec, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(el.done)
		el.err = le.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		if rec.hold != nil {
			select {
			case <-rec.hold:
			default:
				close(rec.hold)
			}
		}
		select {
		case <-el.done:
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return after its ctx ended")
		}
	})
	return el
}

// stop cancels Run's ctx and returns its result.
func (el *elector) stop(t *testing.T) error {
	t.Helper()
	el.cancel()
	return el.wait(t)
}

// wait waits for Run to return and returns its result.
func (el *elector) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-el.done:
		return el.err
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

func waitStart(t *testing.T, rec *recorder, what string) *concurrency.Leadership {
	t.Helper()
	select {
	case l := <-rec.starts:
		return l
	case <-time.After(30 * time.Second):
		t.Fatalf("%s never started leading", what)
		return nil
	}
}

func waitLoss(t *testing.T, rec *recorder, what string) error {
	t.Helper()
	select {
	case err := <-rec.losses:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s never saw its leadership end", what)
		return nil
	}
}

func waitStop(t *testing.T, rec *recorder, what string) {
	t.Helper()
	select {
	case <-rec.stops:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: OnStoppedLeading never ran", what)
	}
}

// Each bad field is its own clear error, and nothing reaches the server.
func TestLeaderElectorBadConfigs(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	start := func(context.Context, *concurrency.Leadership) {}
	ok := concurrency.LeaderElectionConfig{Client: c, Prefix: "/bad", Callbacks: concurrency.LeaderCallbacks{OnStartedLeading: start}}
	before, err := c.Get(e.ctx, "\x00", clientv3.WithFromKey(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		edit  func(*concurrency.LeaderElectionConfig)
		is    error
		field string
	}{
		{"nil client", func(c *concurrency.LeaderElectionConfig) { c.Client = nil }, concurrency.ErrNilClient, "Client"},
		{"empty prefix", func(c *concurrency.LeaderElectionConfig) { c.Prefix = "" }, concurrency.ErrEmptyPrefix, "Prefix"},
		{"no OnStartedLeading", func(c *concurrency.LeaderElectionConfig) { c.Callbacks.OnStartedLeading = nil }, nil, "OnStartedLeading"},
		{"TTL too short", func(c *concurrency.LeaderElectionConfig) { c.TTL = time.Second }, concurrency.ErrInvalidTTL, "TTL"},
		{"negative TTL", func(c *concurrency.LeaderElectionConfig) { c.TTL = -time.Second }, concurrency.ErrInvalidTTL, "TTL"},
		{"TTL too long", func(c *concurrency.LeaderElectionConfig) { c.TTL = concurrency.MaxElectorTTL + time.Second }, concurrency.ErrInvalidTTL, "TTL"},
		{"RenewDeadline not below TTL", func(c *concurrency.LeaderElectionConfig) { c.TTL, c.RenewDeadline = 6*time.Second, 6*time.Second }, nil, "RenewDeadline"},
		{"RenewDeadline within a keep-alive", func(c *concurrency.LeaderElectionConfig) { c.TTL, c.RenewDeadline = 6*time.Second, 2*time.Second }, nil, "RenewDeadline"},
		{"negative RenewDeadline", func(c *concurrency.LeaderElectionConfig) { c.RenewDeadline = -1 }, nil, "RenewDeadline"},
		{"negative RetryPeriod", func(c *concurrency.LeaderElectionConfig) { c.RetryPeriod = -1 }, nil, "RetryPeriod"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.edit(&cfg)
			le, err := concurrency.NewLeaderElector(cfg)
			if err == nil || le != nil {
				t.Fatalf("NewLeaderElector = %v, %v; want an error", le, err)
			}
			if !errors.Is(err, concurrency.ErrInvalidElectorConfig) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Errorf("error %q is not ErrInvalidElectorConfig and %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.field+":") {
				t.Errorf("error %q does not name the field %s", err, tc.field)
			}
		})
	}
	// All at once: each is reported.
	_, err = concurrency.NewLeaderElector(concurrency.LeaderElectionConfig{TTL: time.Second, RetryPeriod: -1})
	for _, f := range []string{"Client:", "Prefix:", "OnStartedLeading:", "TTL:", "RetryPeriod:"} {
		if err == nil || !strings.Contains(err.Error(), f) {
			t.Errorf("error %v does not report %s", err, f)
		}
	}
	// A good config is accepted; no key and no lease was written.
	if _, err := concurrency.NewLeaderElector(ok); err != nil {
		t.Fatal(err)
	}
	after, err := c.Get(e.ctx, "\x00", clientv3.WithFromKey(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if after.Header.Revision != before.Header.Revision || after.Count != 0 {
		t.Errorf("revision %d -> %d, %d keys: NewLeaderElector wrote to the server", before.Header.Revision, after.Header.Revision, after.Count)
	}
	leases, err := c.Leases(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(leases.Leases) != 0 {
		t.Errorf("%d leases granted by NewLeaderElector", len(leases.Leases))
	}
}

// Leadership is lost and regained 5 times, alternately by a deleted key
// (the session lives on) and a revoked lease (a new session is needed).
// Terms never overlap, OnStoppedLeading runs exactly once per term, and
// every term's token is higher than the last.
func TestLeaderElectorRecampaign(t *testing.T) {
	e := newEnv(t)
	other := e.client()
	rec := newRecorder(t)
	el := startElector(t, concurrency.LeaderElectionConfig{Client: e.client(), Prefix: "/re", TTL: 5 * time.Second}, rec)
	// IsLeader is false in OnStoppedLeading; the next term may already
	// have started by the time waitStop returns.
	rec.mu.Lock()
	rec.atStop = func() {
		if el.IsLeader() {
			t.Errorf("IsLeader true in OnStoppedLeading")
		}
	}
	rec.mu.Unlock()
	var revs []int64
	var leases []clientv3.LeaseID
	for i := range 6 {
		l := waitStart(t, rec, fmt.Sprintf("term %d", i))
		if !el.IsLeader() {
			t.Errorf("term %d: IsLeader false in OnStartedLeading", i)
		}
		revs, leases = append(revs, l.Rev()), append(leases, l.Session().Lease())
		if tr := l.Session().LeaseTrust(); tr < 0.66 || tr > 0.67 {
			t.Errorf("term %d: the session's lease trust is %v, want 2/3 (RenewDeadline's default)", i, tr)
		}
		if i == 5 {
			break
		}
		if i%2 == 0 {
			if _, err := other.Delete(e.ctx, l.Key()); err != nil {
				t.Fatal(err)
			}
		} else if _, err := other.Revoke(e.ctx, l.Session().Lease()); err != nil {
			t.Fatal(err)
		}
		if cause := waitLoss(t, rec, "leader"); !errors.Is(cause, concurrency.ErrLeadershipLost) {
			t.Errorf("term %d ended with cause %v, want ErrLeadershipLost", i, cause)
		}
		waitStop(t, rec, "leader")
		if _, err := l.Guard(e.ctx, clientv3.OpPut("/re-data", "x")); !errors.Is(err, concurrency.ErrLeadershipLost) {
			t.Errorf("term %d: Guard after the term: %v, want ErrLeadershipLost", i, err)
		}
	}
	if err := el.stop(t); !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v, want context.Canceled", err)
	}
	var want []string
	for range 6 {
		want = append(want, "start", "lost", "return", "stop")
	}
	if got := rec.terms(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("callbacks:\n got %v\nwant %v", got, want)
	}
	for i := 1; i < len(revs); i++ {
		if revs[i] <= revs[i-1] {
			t.Errorf("tokens %v do not increase", revs)
		}
		sameSession := leases[i] == leases[i-1]
		if deleted := i%2 == 1; sameSession != deleted {
			t.Errorf("term %d: lease %x after %x; want the same session only after a deleted key", i, leases[i], leases[i-1])
		}
	}
}

// With ReleaseOnCancel, a slow OnStartedLeading keeps the leader key until
// it returns; the resign comes after, and the standby leads only then
// (KEP-5366). Without it, Run leaves the key to expire with the lease.
func TestLeaderElectorReleaseOnCancel(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	rec := newRecorder(t)
	rec.hold = make(chan struct{})
	a := startElector(t, concurrency.LeaderElectionConfig{Client: e.client(), Prefix: "/rel", TTL: 10 * time.Second, ReleaseOnCancel: true, Identity: "a"}, rec)
	l := waitStart(t, rec, "a")
	standby := newRecorder(t)
	startElector(t, concurrency.LeaderElectionConfig{Client: e.client(), Prefix: "/rel", TTL: 10 * time.Second, Identity: "b"}, standby)
	waitKeys(t, e.ctx, c, "/rel", 2)

	// The callback's last act: the key must still be there.
	keyAtReturn := make(chan error, 1)
	rec.beforeReturn = func(l *concurrency.Leadership) {
		r, err := c.Get(e.ctx, l.Key())
		if err == nil && (len(r.Kvs) != 1 || r.Kvs[0].CreateRevision != l.Rev()) {
			err = errors.New("leader key gone before OnStartedLeading returned")
		}
		keyAtReturn <- err
	}
	a.cancel()
	if cause := waitLoss(t, rec, "a"); !errors.Is(cause, context.Canceled) {
		t.Fatalf("cause %v, want context.Canceled (Run's ctx)", cause)
	}
	// OnStartedLeading is still running: the key must still be there, the
	// standby not leading, and Run not returned.
	r, err := c.Get(e.ctx, l.Key())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 1 || r.Kvs[0].CreateRevision != l.Rev() {
		t.Fatalf("leader key gone while OnStartedLeading runs: %v", r.Kvs)
	}
	select {
	case <-a.done:
		t.Fatal("Run returned while OnStartedLeading ran")
	case <-standby.starts:
		t.Fatal("standby leads while the leader's OnStartedLeading runs")
	default:
	}
	close(rec.hold)
	if err := recv(t, keyAtReturn, "OnStartedLeading"); err != nil {
		t.Fatal(err)
	}
	waitStart(t, standby, "b")
	if err := a.wait(t); !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v, want context.Canceled", err)
	}
	returned, stopped, started := rec.first("return").at, rec.first("stop").at, standby.first("start").at
	if !returned.Before(started) {
		t.Errorf("OnStartedLeading returned at %v, standby started at %v", returned, started)
	}
	if stopped.Before(returned) {
		t.Errorf("OnStoppedLeading before OnStartedLeading returned")
	}
	t.Logf("release: OnStartedLeading returned -> standby's OnStartedLeading %v", started.Sub(returned))

	// Without ReleaseOnCancel the key stays, with its lease, after Run
	// returned.
	rec2 := newRecorder(t)
	b := startElector(t, concurrency.LeaderElectionConfig{Client: e.client(), Prefix: "/keep", TTL: 10 * time.Second}, rec2)
	l2 := waitStart(t, rec2, "keeper")
	if err := b.stop(t); !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v", err)
	}
	r, err = c.Get(e.ctx, l2.Key())
	if err != nil {
		t.Fatal(err)
	}
	ttl, err := c.TimeToLive(e.ctx, l2.Session().Lease())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 1 || ttl.TTL <= 0 {
		t.Errorf("without ReleaseOnCancel: key %v, lease TTL %d; want the key left to expire with its live lease", r.Kvs, ttl.TTL)
	}
}

// StopOnLoss: Run returns after the first term, with ErrLeadershipLost.
func TestLeaderElectorStopOnLoss(t *testing.T) {
	e := newEnv(t)
	rec := newRecorder(t)
	var logs lockedBuffer
	el := startElector(t, concurrency.LeaderElectionConfig{Client: e.client(), Prefix: "/once", TTL: 5 * time.Second, StopOnLoss: true,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}, rec)
	l := waitStart(t, rec, "leader")
	if _, err := e.client().Delete(e.ctx, l.Key()); err != nil {
		t.Fatal(err)
	}
	if err := el.wait(t); !errors.Is(err, concurrency.ErrLeadershipLost) {
		t.Errorf("Run = %v, want ErrLeadershipLost", err)
	}
	if got := strings.Join(rec.terms(), " "); got != "start lost return stop" {
		t.Errorf("callbacks %s", got)
	}
	if n := len(e.keys("/once")); n != 0 {
		t.Errorf("%d keys left", n)
	}
	out := logs.String()
	for _, want := range []string{"msg=leading election=/once key=" + l.Key(), `msg="leadership ended; waiting for OnStartedLeading to return"`} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %s:\n%s", want, out)
		}
	}
}

// lockedBuffer is a bytes.Buffer for several writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (lb *lockedBuffer) Write(p []byte) (int, error) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return lb.b.Write(p)
}

func (lb *lockedBuffer) String() string {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return lb.b.String()
}

// etcd's own Election on the same prefix sees baton's leader and waits
// behind it, and baton's elector waits behind etcd's leader.
func TestLeaderElectorInteropEtcdElection(t *testing.T) {
	e := newEnv(t)
	es, err := etcdconc.NewSession(e.client(), etcdconc.WithTTL(10))
	if err != nil {
		t.Fatal(err)
	}
	defer es.Close()
	ee := etcdconc.NewElection(es, "/mixed")
	if err := ee.Campaign(e.ctx, "etcd-leader"); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder(t)
	leaders := make(chan string, 10)
	cbs := rec.callbacks()
	cbs.OnNewLeader = func(id string) { leaders <- id }
	el := startElector(t, concurrency.LeaderElectionConfig{Client: e.client(), Prefix: "/mixed", TTL: 10 * time.Second, Identity: "baton", Callbacks: cbs, ReleaseOnCancel: true}, rec)
	if id := <-leaders; id != "etcd-leader" {
		t.Fatalf("OnNewLeader(%q), want etcd's leader", id)
	}
	waitKeys(t, e.ctx, e.client(), "/mixed", 2)
	if el.IsLeader() || el.GetLeader() != "etcd-leader" {
		t.Fatalf("IsLeader %v, GetLeader %q while etcd's Election leads", el.IsLeader(), el.GetLeader())
	}
	if err := ee.Resign(e.ctx); err != nil {
		t.Fatal(err)
	}
	l := waitStart(t, rec, "baton")
	r, err := ee.Leader(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Kvs[0].Value) != "baton" || string(r.Kvs[0].Key) != l.Key() || r.Kvs[0].CreateRevision != l.Rev() {
		t.Errorf("etcd's Leader = %s=%s at %d; want baton's %s at %d", r.Kvs[0].Key, r.Kvs[0].Value, r.Kvs[0].CreateRevision, l.Key(), l.Rev())
	}
	// etcd's candidate waits behind baton's leader, and leads once baton
	// resigns.
	es2, err := etcdconc.NewSession(e.client(), etcdconc.WithTTL(10))
	if err != nil {
		t.Fatal(err)
	}
	defer es2.Close()
	ee2 := etcdconc.NewElection(es2, "/mixed")
	won := make(chan error, 1)
	go func() { won <- ee2.Campaign(e.ctx, "etcd-2") }()
	waitKeys(t, e.ctx, e.client(), "/mixed", 2)
	mustNotReturn(t, won, "etcd's Campaign behind baton's leader")
	if err := el.stop(t); !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v", err)
	}
	if err := recv(t, won, "etcd's Campaign"); err != nil {
		t.Fatal(err)
	}
}

// failoverThroughProxy runs leader A on a client whose only path to etcd
// goes through p, and standby B on bEps. It cuts p in both directions, and
// returns how long before B's OnStartedLeading A's ctx was cancelled,
// from the two callbacks' own timestamps. A's callback is held by holdA
// (nil: not held) once its ctx ended.
func failoverThroughProxy(t *testing.T, p interface {
	BlackholeTx()
	BlackholeRx()
	UnblackholeTx()
	UnblackholeRx()
},
	aEps, bEps []string, holdA chan struct{}) (a *elector, margin time.Duration) {
	t.Helper()
	const ttl = 5 * time.Second // default RenewDeadline: 2/3, 3.33 s
	recA, recB := newRecorder(t), newRecorder(t)
	recA.hold = holdA
	a = startElector(t, concurrency.LeaderElectionConfig{Client: testutil.Client(t, aEps), Prefix: "/fo", TTL: ttl, Identity: "a"}, recA)
	waitStart(t, recA, "a")
	bc := testutil.Client(t, bEps)
	startElector(t, concurrency.LeaderElectionConfig{Client: bc, Prefix: "/fo", TTL: ttl, Identity: "b"}, recB)
	ctx := testCtx(t)
	waitKeys(t, ctx, bc, "/fo", 2)

	cut := time.Now()
	p.BlackholeTx()
	p.BlackholeRx()
	t.Cleanup(func() {
		p.UnblackholeTx()
		p.UnblackholeRx()
	})
	cause := waitLoss(t, recA, "a")
	if !errors.Is(cause, concurrency.ErrLeadershipLost) || !errors.Is(cause, concurrency.ErrLeaseUnconfirmed) {
		t.Errorf("a's cause: %v, want ErrLeadershipLost and ErrLeaseUnconfirmed", cause)
	}
	waitStart(t, recB, "b")
	lost, started := recA.first("lost").at, recB.first("start").at
	margin = started.Sub(lost)
	t.Logf("cut -> a's ctx cancelled %v (%v); -> b's OnStartedLeading %v; margin %v",
		lost.Sub(cut).Round(time.Millisecond), cause, started.Sub(cut).Round(time.Millisecond), margin.Round(time.Millisecond))
	if margin <= 0 {
		t.Errorf("b started leading %v before a's ctx was cancelled", -margin)
	}
	return a, margin
}

// Failover: the leader's keep-alives stop getting answers (its only
// connection goes silent, as for a stopped VM). Its ctx is cancelled
// before the lease can expire, so the standby's OnStartedLeading comes
// after. The leader's callback ignores its ctx: Check, and the healthz
// handler, report it wedged.
func TestLeaderElectorFailover(t *testing.T) {
	srv := testutil.Server(t)
	p, ep := testutil.Proxy(t, srv.Endpoints()[0])
	hold := make(chan struct{})
	a, _ := failoverThroughProxy(t, p, []string{ep}, srv.Endpoints(), hold)
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for err = a.Check(200 * time.Millisecond); err == nil && time.Now().Before(deadline); err = a.Check(200 * time.Millisecond) {
		time.Sleep(20 * time.Millisecond) // liveness poll
	}
	if !errors.Is(err, concurrency.ErrWedgedLeader) {
		t.Fatalf("Check with OnStartedLeading stuck after the loss: %v, want ErrWedgedLeader", err)
	}
	rw := httptest.NewRecorder()
	a.HealthzHandler(200*time.Millisecond).ServeHTTP(rw, httptest.NewRequest("GET", "/healthz", nil))
	if rw.Code != http.StatusInternalServerError || !strings.Contains(rw.Body.String(), "OnStartedLeading has not returned") {
		t.Errorf("healthz: %d %q", rw.Code, rw.Body.String())
	}
	close(hold)
}

// Partition on a 3-member cluster: the leader reaches the cluster only
// through a proxy to member 0, the standby members 1 and 2. The proxy is
// cut: the partitioned leader stops (its ctx is cancelled) before the
// standby starts leading. The margin is logged.
func TestLeaderElectorPartition(t *testing.T) {
	cl := testutil.Cluster(t)
	p, ep := testutil.Proxy(t, cl.Members[0].Endpoints()[0])
	bEps := append(cl.Members[1].Endpoints(), cl.Members[2].Endpoints()...)
	failoverThroughProxy(t, p, []string{ep}, bEps, nil)
}

// A standby that never led never gets OnStoppedLeading, follows the leader
// through OnNewLeader and GetLeader (down to "" when nobody leads), and a
// second Run of one elector is refused.
func TestLeaderElectorStandby(t *testing.T) {
	e := newEnv(t)
	recA, recB := newRecorder(t), newRecorder(t)
	a := startElector(t, concurrency.LeaderElectionConfig{Client: e.client(), Prefix: "/sb", TTL: 5 * time.Second, Identity: "a", ReleaseOnCancel: true}, recA)
	waitStart(t, recA, "a")
	leaders := make(chan string, 10)
	cbs := recB.callbacks()
	cbs.OnNewLeader = func(id string) { leaders <- id }
	b := startElector(t, concurrency.LeaderElectionConfig{Client: e.client(), Prefix: "/sb", TTL: 5 * time.Second, Identity: "b", Callbacks: cbs}, recB)
	if id := <-leaders; id != "a" {
		t.Fatalf("b's OnNewLeader(%q), want a", id)
	}
	if got := b.GetLeader(); got != "a" || b.IsLeader() {
		t.Errorf("b: GetLeader %q, IsLeader %v", got, b.IsLeader())
	}
	if err := b.Run(e.ctx); !errors.Is(err, concurrency.ErrElectorRunning) {
		t.Errorf("a second Run: %v, want ErrElectorRunning", err)
	}
	waitKeys(t, e.ctx, e.client(), "/sb", 2)
	if err := b.stop(t); !errors.Is(err, context.Canceled) {
		t.Errorf("b's Run = %v", err)
	}
	if got := recB.terms(); len(got) != 0 {
		t.Errorf("b never led, but its callbacks ran: %v", got)
	}
	if n := len(e.keys("/sb")); n != 1 {
		t.Errorf("%d keys after the standby stopped, want the leader's only", n)
	}
	// A third elector, c, takes over from a, then loses its key: it sees
	// "".
	recC := newRecorder(t)
	seen := make(chan string, 10)
	cbsC := recC.callbacks()
	cbsC.OnNewLeader = func(id string) { seen <- id }
	// c's callback is held after its loss, so that c cannot campaign again
	// before its observer reports that nobody leads.
	recC.hold = make(chan struct{})
	startElector(t, concurrency.LeaderElectionConfig{Client: e.client(), Prefix: "/sb", TTL: 5 * time.Second, Identity: "c", Callbacks: cbsC}, recC)
	if id := <-seen; id != "a" {
		t.Fatalf("c's OnNewLeader(%q), want a", id)
	}
	waitKeys(t, e.ctx, e.client(), "/sb", 2)
	if err := a.stop(t); !errors.Is(err, context.Canceled) {
		t.Errorf("a's Run = %v", err)
	}
	l := waitStart(t, recC, "c")
	if id := <-seen; id != "c" {
		t.Fatalf("c's OnNewLeader(%q) after a resigned, want c", id)
	}
	if _, err := e.client().Delete(e.ctx, l.Key()); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-seen:
		if id != "" {
			t.Errorf("OnNewLeader(%q) after the only leader's key was deleted, want \"\"", id)
		}
	case <-time.After(30 * time.Second):
		t.Fatal(`OnNewLeader("") never came`)
	}
	if got := b.GetLeader(); got != "a" {
		t.Errorf("b's GetLeader after its Run returned: %q, want the last it observed", got)
	}
	close(recC.hold)
}

// The client closing under Run is not retried: the term ends, with
// OnStoppedLeading, and Run returns ErrClientClosed.
func TestLeaderElectorClientClosed(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	rec := newRecorder(t)
	el := startElector(t, concurrency.LeaderElectionConfig{Client: c, Prefix: "/cc", TTL: 5 * time.Second}, rec)
	waitStart(t, rec, "leader")
	closed := time.Now()
	c.Close()
	defer func() { t.Logf("client closed -> Run returned %v", time.Since(closed)) }()
	if cause := waitLoss(t, rec, "leader"); !errors.Is(cause, concurrency.ErrLeadershipLost) {
		t.Errorf("cause %v, want ErrLeadershipLost", cause)
	}
	if err := el.wait(t); !errors.Is(err, concurrency.ErrClientClosed) {
		t.Errorf("Run = %v, want ErrClientClosed", err)
	}
	if got := strings.Join(rec.terms(), " "); got != "start lost return stop" {
		t.Errorf("callbacks %s", got)
	}
}
