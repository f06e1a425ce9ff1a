package concurrency_test

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/internal/testutil"
)

// cutOffHolder is a lock holder whose client reaches the server through a
// proxy, so that the test can silence its keep-alives while the lease, and
// the holder's key, live on.
type cutOffHolder struct {
	s    *concurrency.Session
	m    *concurrency.Mutex
	cut  func()
	heal func()
}

func newCutOffHolder(t *testing.T, e *env, ttl int, trust float64) *cutOffHolder {
	t.Helper()
	return newCutOffHolderWith(t, e, ttl, trust)
}

func newCutOffHolderWith(t *testing.T, e *env, ttl int, trust float64, opts ...concurrency.SessionOption) *cutOffHolder {
	t.Helper()
	p, ep := testutil.Proxy(t, e.eps[0])
	opts = append([]concurrency.SessionOption{concurrency.WithTTL(ttl), concurrency.WithLeaseTrust(trust)}, opts...)
	s, err := concurrency.NewSession(testutil.Client(t, []string{ep}), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.UnpauseTx()
		p.UnpauseRx()
		s.Close()
	})
	m := concurrency.NewMutex(s, "trust")
	if err := m.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	return &cutOffHolder{s: s, m: m,
		// Paused, not blackholed: a blackhole drops bytes mid-frame and
		// breaks the HTTP/2 connection for good; a pause holds them back.
		cut:  func() { p.PauseTx(); p.PauseRx() },
		heal: func() { p.UnpauseTx(); p.UnpauseRx() },
	}
}

// A holder cut off from the server gives up its hold once no keep-alive
// has been answered for its trust window, while the server still keeps the
// lease and the key: it stops acting before anyone else can be given the
// lock.
func TestHoldEndsBeforeLeaseWhenKeepAlivesGoUnanswered(t *testing.T) {
	e := newEnv(t)
	h := newCutOffHolder(t, e, 6, 0.5)
	hctx, cancel := h.m.HoldContext(e.ctx)
	defer cancel()
	direct := e.client()

	h.cut()
	select {
	case <-hctx.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the hold did not end with its keep-alives unanswered")
	}
	ended := time.Now()
	cause := context.Cause(hctx)
	if !errors.Is(cause, concurrency.ErrLeaseUnconfirmed) || !errors.Is(cause, concurrency.ErrLockLost) {
		t.Fatalf("cause %v, want ErrLeaseUnconfirmed and ErrLockLost", cause)
	}
	at, ttl := h.s.KeepAliveAnswered()
	if age := ended.Sub(at); age < ttl/2 {
		t.Fatalf("the hold ended %v after the last answer, before the %v window", age, ttl/2)
	}
	// The server still has the lease and the key: nobody else could hold.
	r, err := direct.Get(e.ctx, h.m.Key())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 1 {
		t.Fatalf("the holder's key was gone when its hold ended: the early stop came too late")
	}
	ttlResp, err := direct.TimeToLive(e.ctx, h.s.Lease())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the hold ended %v after the last keep-alive answer; the server's lease had %d s left", ended.Sub(at).Round(10*time.Millisecond), ttlResp.TTL)
	if ttlResp.TTL <= 0 {
		t.Fatalf("lease TTL left %d: already expiring when the hold ended", ttlResp.TTL)
	}
}

// A short silence, shorter than the trust window, leaves the hold alone.
func TestHoldSurvivesSilenceShorterThanTrustWindow(t *testing.T) {
	e := newEnv(t)
	h := newCutOffHolder(t, e, 10, 2.0/3)
	hctx, cancel := h.m.HoldContext(e.ctx)
	defer cancel()

	before, _ := h.s.KeepAliveAnswered()
	h.cut()
	time.Sleep(time.Second) // the fault's length, not a wait for an event
	h.heal()
	// Wait for two fresh answers after the silence: the keep-alive is back.
	deadline := time.Now().Add(30 * time.Second)
	seen := 0
	last := before
	for seen < 2 {
		if time.Now().After(deadline) {
			t.Fatal("keep-alives did not come back")
		}
		if at, _ := h.s.KeepAliveAnswered(); at.After(last) {
			last = at
			seen++
		}
		select {
		case <-hctx.Done():
			t.Fatalf("a 1 s silence in a 6.7 s trust window ended the hold: %v", context.Cause(hctx))
		case <-time.After(50 * time.Millisecond):
		}
	}
	if _, err := h.m.Guard(e.ctx, clientv3.OpPut("trust-guarded", "x")); err != nil {
		t.Fatalf("guarded write after the silence: %v", err)
	}
}

// After Orphan no keep-alive is answered: a hold ends at the trust window,
// before the lease expires on the server.
func TestOrphanedHoldEndsAtTrustWindow(t *testing.T) {
	e := newEnv(t)
	s := e.session(concurrency.WithTTL(6), concurrency.WithLeaseTrust(0.5))
	m := concurrency.NewMutex(s, "orphan-trust")
	if err := m.Lock(e.ctx); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		errc <- concurrency.WithLock(e.ctx, m, func(ctx context.Context) error {
			s.Orphan()
			<-ctx.Done()
			if !errors.Is(context.Cause(ctx), concurrency.ErrLeaseUnconfirmed) {
				return context.Cause(ctx)
			}
			r, err := e.client().Get(e.ctx, m.Key())
			if err != nil {
				return err
			}
			if len(r.Kvs) != 1 {
				return errors.New("key already gone when the orphaned hold ended")
			}
			return nil
		})
	}()
	if err := recv(t, errc, "WithLock on an orphaned session"); !errors.Is(err, concurrency.ErrLockLost) {
		t.Fatalf("WithLock: %v, want ErrLockLost", err)
	}
}

// Resign reports a leadership that was already lost, as Unlock does.
func TestResignAfterLossReportsLost(t *testing.T) {
	e := newEnv(t)
	s := e.session(concurrency.WithTTL(5))
	el := concurrency.NewElection(s, "resign-lost")
	if err := el.Campaign(e.ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client().Delete(e.ctx, el.Key()); err != nil {
		t.Fatal(err)
	}
	if err := el.Resign(e.ctx); !errors.Is(err, concurrency.ErrLeadershipLost) {
		t.Fatalf("Resign after the key was deleted: %v, want ErrLeadershipLost", err)
	}
	if err := el.Resign(e.ctx); err != nil {
		t.Fatalf("second Resign: %v, want nil (not leading)", err)
	}
	// A sibling's Resign is a release on purpose, not a loss.
	a, b := concurrency.NewElection(s, "resign-sib"), concurrency.NewElection(s, "resign-sib")
	if err := a.Campaign(e.ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if err := b.Campaign(e.ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if err := a.Resign(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Resign(e.ctx); err != nil {
		t.Fatalf("sibling Resign after the first: %v, want nil", err)
	}
}
