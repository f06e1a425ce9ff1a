package concurrency_test

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/embedded"
	"github.com/batonhq/baton/internal/testutil"
)

// retry runs f until it succeeds, for requests made while the cluster
// elects a new leader. The bound is for liveness only.
func retry(t *testing.T, ctx context.Context, what string, f func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := f(rctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
	}
}

// untilDone calls f, each time with a fresh 5 s timeout, until it returns
// nil or an error that fatal says no retry can cure; it returns that last
// error. It is for calls made from a test's worker goroutines (no
// t.Fatal there) while the cluster elects a new leader.
func untilDone(ctx context.Context, f func(ctx context.Context) error, fatal func(error) bool) error {
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := f(rctx)
		cancel()
		if err == nil || fatal(err) || ctx.Err() != nil {
			return err
		}
	}
}

// progress counts the operations a cluster test's workers complete, so
// that the test can wait for some before, during and after an outage.
type progress chan struct{}

func newProgress() progress { return make(progress, 1024) }

func (p progress) done() {
	select {
	case p <- struct{}{}:
	default:
	}
}

// await waits for n more operations, with a generous liveness bound.
func (p progress) await(t *testing.T, n int, when string) {
	t.Helper()
	for range n {
		select {
		case <-p:
		case <-time.After(30 * time.Second):
			t.Fatalf("no progress %s", when)
		}
	}
}

// clusterSession makes a session with a 10 s TTL on a client of its own
// that knows every member of cl; it is closed when the test ends.
func clusterSession(t *testing.T, cl *embedded.Cluster) *concurrency.Session {
	t.Helper()
	s, err := concurrency.NewSession(testutil.Client(t, cl.Endpoints()), concurrency.WithTTL(10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// outage waits for n operations, stops the raft leader's member, waits for
// n more, restarts it, and waits for n more.
func outage(t *testing.T, cl *embedded.Cluster, prog progress, n int) {
	t.Helper()
	prog.await(t, n, "before the outage")
	lead := stopLeader(t, cl)
	prog.await(t, n, "with the leader stopped")
	if err := cl.Members[lead].Restart(); err != nil {
		t.Fatal(err)
	}
	prog.await(t, n, "after the restart")
}

// closeLeavesNoKeys closes sessions and checks that no key is left under
// pfx: every key of the recipe went with them.
func closeLeavesNoKeys(t *testing.T, ctx context.Context, cl *embedded.Cluster, sessions []*concurrency.Session, pfx string) {
	t.Helper()
	for _, s := range sessions {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	r, err := testutil.Client(t, cl.Endpoints()).Get(ctx, pfx, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || r.Count != 0 {
		t.Fatalf("keys left under %s after every session closed: %v %v", pfx, r, err)
	}
}

// stopLeader stops the raft leader's member and returns its index.
func stopLeader(t *testing.T, cl *embedded.Cluster) int {
	t.Helper()
	lead := cl.Leader()
	if lead < 0 {
		t.Fatal("no raft leader")
	}
	if err := cl.Members[lead].Stop(); err != nil {
		t.Fatal(err)
	}
	return lead
}

// A lock held while the raft leader dies stays held, the waiter keeps
// waiting, and the handoff still works once a new leader is elected; the
// dead member comes back and the next holder's token is higher.
func TestClusterLeaderKilledWhileLockHeld(t *testing.T) {
	cl := testutil.Cluster(t)
	ctx := testCtx(t)
	newSession := func() *concurrency.Session { return clusterSession(t, cl) }
	admin := testutil.Client(t, cl.Endpoints())
	holder := concurrency.NewMutex(newSession(), "cluster-lock")
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	waiter := concurrency.NewMutex(newSession(), "cluster-lock")
	errc := lockAsync(ctx, waiter)
	waitKeys(t, ctx, admin, "cluster-lock", 2)

	lead := cl.Leader()
	if lead < 0 {
		t.Fatal("no raft leader")
	}
	if err := cl.Members[lead].Stop(); err != nil {
		t.Fatal(err)
	}
	// Still held: the holder's guarded write goes through once a new
	// leader is up, and the waiter has not been let in.
	retry(t, ctx, "guarded write after leader loss", func(ctx context.Context) error {
		_, err := holder.Guard(ctx)
		return err
	})
	mustNotReturn(t, errc, "waiter's Lock while the holder holds")
	token := holder.Rev()
	retry(t, ctx, "Unlock after leader loss", func(ctx context.Context) error {
		err := holder.Unlock(ctx)
		if errors.Is(err, concurrency.ErrLockReleased) {
			return nil // an earlier try went through
		}
		return err
	})
	if err := recv(t, errc, "waiter's Lock"); err != nil {
		t.Fatal(err)
	}
	if waiter.Rev() <= token {
		t.Fatalf("token %d not above %d", waiter.Rev(), token)
	}
	if err := cl.Members[lead].Restart(); err != nil {
		t.Fatal(err)
	}
	// A client on the restarted member alone sees the current holder.
	only := testutil.Client(t, cl.Members[lead].Endpoints())
	retry(t, ctx, "read from restarted member", func(ctx context.Context) error {
		r, err := only.Get(ctx, waiter.Key())
		if err == nil && (len(r.Kvs) != 1 || r.Kvs[0].CreateRevision != waiter.Rev()) {
			t.Fatalf("restarted member sees %v", r.Kvs)
		}
		return err
	})
	if err := waiter.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

// Elections fail over across members: candidates on clients that each use
// one member, the leader's member is stopped, and a candidate on another
// member takes over when the leader's session ends.
func TestClusterElectionFailover(t *testing.T) {
	cl := testutil.Cluster(t)
	ctx := testCtx(t)
	var cands []*concurrency.Election
	for i := range 3 {
		c := testutil.Client(t, cl.Members[i].Endpoints())
		s, err := concurrency.NewSession(c, concurrency.WithTTL(5))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		cands = append(cands, concurrency.NewElection(s, "cluster-el"))
	}
	if err := cands[0].Campaign(ctx, "m0"); err != nil {
		t.Fatal(err)
	}
	obsCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := cands[2].Events(obsCtx)
	// Member 2 may not have applied m0's campaign yet when the observer
	// starts there: it may first report the earlier state, no leader.
	nextLeader(t, events, "m0", "")
	won := campaignAsync(ctx, cands[1], "m1")
	waitKeys(t, ctx, testutil.Client(t, cl.Endpoints()), "cluster-el", 2)
	// The leader's member dies; its client can no longer keep the lease
	// alive, so the lease expires and the next candidate leads.
	if err := cl.Members[0].Stop(); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, won, "Campaign of m1"); err != nil {
		t.Fatal(err)
	}
	nextLeader(t, events, "m1", "")
	if err := cl.Members[0].Restart(); err != nil {
		t.Fatal(err)
	}
	if err := cands[1].Resign(ctx); err != nil {
		t.Fatal(err)
	}
	nextLeader(t, events, "")
}
