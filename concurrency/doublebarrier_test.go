package concurrency_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/internal/testutil"
)

// async runs f in a goroutine and returns its result channel.
func async(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

// hasKey reports whether key exists.
func hasKey(t *testing.T, e *env, key string) bool {
	t.Helper()
	r, err := e.client().Get(e.ctx, key, clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return r.Count > 0
}

// Nobody passes Enter before count participants have called it, nobody
// passes Leave before all have called it, and the barrier can be used
// again afterwards.
func TestDoubleBarrierEnterAndLeaveTogether(t *testing.T) {
	e := newEnv(t)
	const n = 4
	for round := range 2 {
		var entering, leaving atomic.Int32
		var wg sync.WaitGroup
		for range n {
			b := concurrency.NewDoubleBarrier(e.session(), "db", n)
			wg.Add(1)
			go func() {
				defer wg.Done()
				entering.Add(1)
				if err := b.Enter(e.ctx); err != nil {
					t.Errorf("round %d Enter: %v", round, err)
					return
				}
				if got := entering.Load(); got != n {
					t.Errorf("round %d: Enter returned with %d of %d in", round, got, n)
				}
				leaving.Add(1)
				if err := b.Leave(e.ctx); err != nil {
					t.Errorf("round %d Leave: %v", round, err)
					return
				}
				if got := leaving.Load(); got != n {
					t.Errorf("round %d: Leave returned with %d of %d leaving", round, got, n)
				}
			}()
		}
		wg.Wait()
		if ks := e.keys("db/waiters"); len(ks) != 0 {
			t.Fatalf("round %d left participant keys %v", round, ks)
		}
		if hasKey(t, e, "db/ready") {
			t.Fatalf("round %d left the ready key", round)
		}
	}
}

func TestDoubleBarrierBlocksUntilCount(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	a := concurrency.NewDoubleBarrier(e.session(), "blk", 3)
	b := concurrency.NewDoubleBarrier(e.session(), "blk", 3)
	c := concurrency.NewDoubleBarrier(e.session(), "blk", 3)
	ea := async(func() error { return a.Enter(e.ctx) })
	waitKeys(t, e.ctx, admin, "blk/waiters", 1) // a is the oldest
	eb := async(func() error { return b.Enter(e.ctx) })
	waitKeys(t, e.ctx, admin, "blk/waiters", 2)
	roundTrip(t, e.ctx, admin)
	mustNotReturn(t, ea, "Enter with 2 of 3")
	mustNotReturn(t, eb, "Enter with 2 of 3")
	if err := c.Enter(e.ctx); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []<-chan error{ea, eb} {
		if err := recv(t, ch, "Enter once full"); err != nil {
			t.Fatal(err)
		}
	}
	// Leave: the first two wait for the third.
	la := async(func() error { return a.Leave(e.ctx) })
	lc := async(func() error { return c.Leave(e.ctx) })
	waitKeys(t, e.ctx, admin, "blk/waiters", 2) // c left; a (oldest) stays in until the end
	roundTrip(t, e.ctx, admin)
	mustNotReturn(t, la, "Leave with one still in")
	mustNotReturn(t, lc, "Leave with one still in")
	if err := b.Leave(e.ctx); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []<-chan error{la, lc} {
		if err := recv(t, ch, "Leave once all left"); err != nil {
			t.Fatal(err)
		}
	}
}

// etcd #14603: participants beyond count were let in. Here 8 race for 3
// places: exactly 3 get in, the others get ErrTooManyParticipants and leave
// no key behind; and a latecomer to a full barrier is refused at once.
func TestDoubleBarrierTooManyParticipants(t *testing.T) {
	e := newEnv(t)
	const count, racers = 3, 8
	bs := make([]*concurrency.DoubleBarrier, racers)
	for i := range bs {
		bs[i] = concurrency.NewDoubleBarrier(e.session(), "many", count)
	}
	var in, refused atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, b := range bs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			switch err := b.Enter(e.ctx); {
			case err == nil:
				in.Add(1)
			case errors.Is(err, concurrency.ErrTooManyParticipants):
				refused.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if in.Load() != count || refused.Load() != racers-count {
		t.Fatalf("%d in, %d refused; want %d and %d", in.Load(), refused.Load(), count, racers-count)
	}
	if ks := e.keys("many/waiters"); len(ks) != count {
		t.Fatalf("participant keys %v, want %d", ks, count)
	}
	late := concurrency.NewDoubleBarrier(e.session(), "many", count)
	if err := late.Enter(e.ctx); !errors.Is(err, concurrency.ErrTooManyParticipants) {
		t.Fatalf("Enter of a full barrier: %v", err)
	}
	if err := late.TryEnter(e.ctx); !errors.Is(err, concurrency.ErrTooManyParticipants) {
		t.Fatalf("TryEnter of a full barrier: %v", err)
	}
	if ks := e.keys("many/waiters"); len(ks) != count {
		t.Fatalf("refused participant left a key: %v", ks)
	}
}

// A participant whose session ends before the barrier fills no longer
// counts: its Enter fails, and the barrier waits for someone to take its
// place.
func TestDoubleBarrierSessionEndsBeforeFull(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	a := concurrency.NewDoubleBarrier(e.session(), "dies", 3)
	sb := e.session()
	b := concurrency.NewDoubleBarrier(sb, "dies", 3)
	ea := async(func() error { return a.Enter(e.ctx) })
	eb := async(func() error { return b.Enter(e.ctx) })
	waitKeys(t, e.ctx, admin, "dies/waiters", 2)
	if _, err := admin.Revoke(e.ctx, sb.Lease()); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, eb, "Enter of a participant whose session ended"); !errors.Is(err, concurrency.ErrSessionExpired) {
		t.Fatalf("got %v, want ErrSessionExpired", err)
	}
	c := concurrency.NewDoubleBarrier(e.session(), "dies", 3)
	ec := async(func() error { return c.Enter(e.ctx) })
	waitKeys(t, e.ctx, admin, "dies/waiters", 2)
	roundTrip(t, e.ctx, admin)
	mustNotReturn(t, ea, "Enter with 2 live of 3")
	mustNotReturn(t, ec, "Enter with 2 live of 3")
	d := concurrency.NewDoubleBarrier(e.session(), "dies", 3)
	if err := d.Enter(e.ctx); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []<-chan error{ea, ec} {
		if err := recv(t, ch, "Enter once full"); err != nil {
			t.Fatal(err)
		}
	}
}

// A participant whose session ends after the barrier filled counts as
// having left, whether it is the oldest (the one the others wait for) or
// not, and the barrier is clean afterwards.
func TestDoubleBarrierSessionEndsAfterFull(t *testing.T) {
	for _, who := range []string{"oldest", "youngest"} {
		t.Run(who, func(t *testing.T) {
			e := newEnv(t)
			admin := e.client()
			s0, s1 := e.session(), e.session()
			first := concurrency.NewDoubleBarrier(s0, "after", 2)
			ef := async(func() error { return first.Enter(e.ctx) })
			waitKeys(t, e.ctx, admin, "after/waiters", 1)
			second := concurrency.NewDoubleBarrier(s1, "after", 2)
			if err := second.Enter(e.ctx); err != nil {
				t.Fatal(err)
			}
			if err := recv(t, ef, "Enter"); err != nil {
				t.Fatal(err)
			}
			dying, dyingS, living := first, s0, second
			if who == "youngest" {
				dying, dyingS, living = second, s1, first
			}
			lv := async(func() error { return living.Leave(e.ctx) })
			roundTrip(t, e.ctx, admin)
			mustNotReturn(t, lv, "Leave with the other still in")
			if _, err := admin.Revoke(e.ctx, dyingS.Lease()); err != nil {
				t.Fatal(err)
			}
			if err := recv(t, lv, "Leave after the other's session ended"); err != nil {
				t.Fatal(err)
			}
			if err := dying.Leave(e.ctx); !errors.Is(err, concurrency.ErrBarrierLost) || !errors.Is(err, concurrency.ErrSessionExpired) {
				t.Fatalf("Leave of the dead participant: %v, want ErrBarrierLost (which matches ErrSessionExpired)", err)
			}
			if ks := e.keys("after/waiters"); len(ks) != 0 || hasKey(t, e, "after/ready") {
				t.Fatalf("barrier not clean: %v, ready %v", ks, hasKey(t, e, "after/ready"))
			}
			// The next round works.
			x := concurrency.NewDoubleBarrier(e.session(), "after", 1)
			if err := x.Enter(e.ctx); err != nil {
				t.Fatal(err)
			}
			if err := x.Leave(e.ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestDoubleBarrierTryForms(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	a := concurrency.NewDoubleBarrier(e.session(), "try", 2)
	b := concurrency.NewDoubleBarrier(e.session(), "try", 2)
	if err := a.TryEnter(e.ctx); !errors.Is(err, concurrency.ErrBarrierNotFull) {
		t.Fatalf("TryEnter alone: %v", err)
	}
	if ks := e.keys("try/waiters"); len(ks) != 0 {
		t.Fatalf("failed TryEnter left %v", ks)
	}
	ea := async(func() error { return a.Enter(e.ctx) })
	waitKeys(t, e.ctx, admin, "try/waiters", 1)
	if err := b.TryEnter(e.ctx); err != nil {
		t.Fatalf("TryEnter that fills: %v", err)
	}
	if err := recv(t, ea, "Enter"); err != nil {
		t.Fatal(err)
	}
	if err := a.TryLeave(e.ctx); !errors.Is(err, concurrency.ErrBarrierNotEmpty) {
		t.Fatalf("TryLeave with another in: %v", err)
	}
	lb := async(func() error { return b.Leave(e.ctx) })
	waitKeys(t, e.ctx, admin, "try/waiters", 1)
	if err := a.TryLeave(e.ctx); err != nil {
		t.Fatalf("TryLeave of the last one: %v", err)
	}
	if err := recv(t, lb, "Leave"); err != nil {
		t.Fatal(err)
	}
	if hasKey(t, e, "try/ready") {
		t.Fatal("ready key left")
	}
}

// A cancelled Enter leaves no key, and does not count: the barrier still
// needs count live participants.
func TestDoubleBarrierCancelledEnter(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	ctx, cancel := context.WithCancel(e.ctx)
	gone := concurrency.NewDoubleBarrier(e.session(), "cancel", 2)
	eg := async(func() error { return gone.Enter(ctx) })
	waitKeys(t, e.ctx, admin, "cancel/waiters", 1)
	cancel()
	if err := recv(t, eg, "cancelled Enter"); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	if ks := e.keys("cancel/waiters"); len(ks) != 0 {
		t.Fatalf("cancelled Enter left %v", ks)
	}
	a := concurrency.NewDoubleBarrier(e.session(), "cancel", 2)
	if err := a.TryEnter(e.ctx); !errors.Is(err, concurrency.ErrBarrierNotFull) {
		t.Fatalf("TryEnter after a cancelled Enter: %v", err)
	}
	// The cancelled participant can enter again.
	eg = async(func() error { return gone.Enter(e.ctx) })
	waitKeys(t, e.ctx, admin, "cancel/waiters", 1)
	if err := a.Enter(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, eg, "Enter again"); err != nil {
		t.Fatal(err)
	}
}

func TestDoubleBarrierBadInput(t *testing.T) {
	e := newEnv(t)
	s := e.session()
	cases := []struct {
		b    *concurrency.DoubleBarrier
		want error
	}{
		{concurrency.NewDoubleBarrier(nil, "x", 2), concurrency.ErrNilSession},
		{concurrency.NewDoubleBarrier(s, "", 2), concurrency.ErrEmptyPrefix},
		{concurrency.NewDoubleBarrier(s, "x", 0), concurrency.ErrInvalidCount},
		{concurrency.NewDoubleBarrier(s, "x", -1), concurrency.ErrInvalidCount},
	}
	for i, c := range cases {
		for name, f := range map[string]func() error{
			"Enter": func() error { return c.b.Enter(e.ctx) }, "TryEnter": func() error { return c.b.TryEnter(e.ctx) },
			"Leave": func() error { return c.b.Leave(e.ctx) }, "TryLeave": func() error { return c.b.TryLeave(e.ctx) },
		} {
			if err := f(); !errors.Is(err, c.want) {
				t.Errorf("case %d %s: %v, want %v", i, name, err, c.want)
			}
		}
	}
	ok := concurrency.NewDoubleBarrier(s, "x", 1)
	if err := ok.Leave(e.ctx); !errors.Is(err, concurrency.ErrBarrierNotEntered) {
		t.Fatalf("Leave without Enter: %v", err)
	}
	if err := ok.TryLeave(e.ctx); !errors.Is(err, concurrency.ErrBarrierNotEntered) {
		t.Fatalf("TryLeave without Enter: %v", err)
	}
	assertEmpty(t, e)
	if err := ok.Enter(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := ok.Enter(e.ctx); !errors.Is(err, concurrency.ErrAlreadyEntered) {
		t.Fatalf("second Enter: %v", err)
	}
	if err := ok.Leave(e.ctx); err != nil {
		t.Fatal(err)
	}
}

// etcd #6278/#16156 family: participants of "db2" do not count for "db".
func TestDoubleBarrierPrefixSibling(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	other := concurrency.NewDoubleBarrier(e.session(), "dbs2", 2)
	eo := async(func() error { return other.Enter(e.ctx) })
	waitKeys(t, e.ctx, admin, "dbs2/waiters", 1)
	b := concurrency.NewDoubleBarrier(e.session(), "dbs", 2)
	if err := b.TryEnter(e.ctx); !errors.Is(err, concurrency.ErrBarrierNotFull) {
		t.Fatalf("TryEnter on dbs with a participant on dbs2: %v", err)
	}
	mustNotReturn(t, eo, "Enter on dbs2")
	if err := concurrency.NewDoubleBarrier(e.session(), "dbs2", 2).Enter(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, eo, "Enter on dbs2"); err != nil {
		t.Fatal(err)
	}
}

// On a 3-member cluster, a double barrier of 3 fills and empties across a
// stop and a restart of the raft leader's member: the member stops while
// two participants wait in Enter and the third enters during the outage;
// it restarts while two wait in Leave. Every participant gets through
// (retrying what the outage failed), Enter and Leave return only once all
// three have called them, and a second round runs after the restart.
func TestDoubleBarrierClusterMemberRestart(t *testing.T) {
	cl := testutil.Cluster(t)
	ctx := testCtx(t)
	admin := testutil.Client(t, cl.Endpoints())
	const n = 3
	var ps []*concurrency.DoubleBarrier
	var sessions []*concurrency.Session
	for range n {
		s := clusterSession(t, cl)
		sessions = append(sessions, s)
		ps = append(ps, concurrency.NewDoubleBarrier(s, "cdb", n))
	}
	bad := func(err error) bool {
		return errors.Is(err, concurrency.ErrTooManyParticipants) || errors.Is(err, concurrency.ErrAlreadyEntered) ||
			errors.Is(err, concurrency.ErrBarrierNotEntered)
	}
	var entering, leaving atomic.Int32
	enter := func(p *concurrency.DoubleBarrier) <-chan error {
		entering.Add(1)
		return async(func() error {
			err := untilDone(ctx, p.Enter, bad)
			if err == nil && entering.Load() < n {
				err = fmt.Errorf("Enter returned with %d of %d participants arrived", entering.Load(), n)
			}
			return err
		})
	}
	leave := func(p *concurrency.DoubleBarrier) <-chan error {
		leaving.Add(1)
		return async(func() error {
			failed := false
			err := untilDone(ctx, func(ctx context.Context) error {
				err := p.Leave(ctx)
				if errors.Is(err, concurrency.ErrBarrierNotEntered) && failed {
					return nil // an earlier try took us out, then failed waiting
				}
				failed = err != nil
				if err == nil && leaving.Load() < n {
					err = fmt.Errorf("Leave returned with %d of %d participants leaving", leaving.Load(), n)
					t.Error(err)
				}
				return err
			}, bad)
			return err
		})
	}
	all := func(what string, chs ...<-chan error) {
		t.Helper()
		for _, ch := range chs {
			if err := recv(t, ch, what); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}
	}

	e0, e1 := enter(ps[0]), enter(ps[1])
	waitKeys(t, ctx, admin, "cdb/waiters", 2)
	mustNotReturn(t, e0, "Enter with 2 of 3 in")
	lead := stopLeader(t, cl)
	all("Enter across the leader's stop", e0, e1, enter(ps[2]))

	l0, l1 := leave(ps[0]), leave(ps[1])
	waitKeys(t, ctx, admin, "cdb/waiters", 2) // the oldest stays in while it waits
	if err := cl.Members[lead].Restart(); err != nil {
		t.Fatal(err)
	}
	mustNotReturn(t, l0, "Leave with one participant in")
	all("Leave across the member's restart", l0, l1, leave(ps[2]))

	entering.Store(0)
	leaving.Store(0)
	all("Enter after the restart", enter(ps[0]), enter(ps[1]), enter(ps[2]))
	all("Leave after the restart", leave(ps[0]), leave(ps[1]), leave(ps[2]))
	for _, s := range sessions {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	r, err := admin.Get(ctx, "cdb/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range r.Kvs {
		if string(kv.Key) != "cdb/withdrawn" {
			t.Fatalf("key %s left after the rounds", kv.Key)
		}
	}
}
