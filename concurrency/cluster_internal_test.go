package concurrency

import (
	"context"
	"testing"
	"time"

	"github.com/batonhq/baton/internal/testutil"
)

// stretchLeaderWait makes leaderWait a minute for the test, so that a
// member restart fits in it.
func stretchLeaderWait(t *testing.T) {
	old := leaderWait
	leaderWait = time.Minute
	t.Cleanup(func() { leaderWait = old })
}

// A member between leaders refuses the watches waiters start (they require
// a leader). Waiters ask again, for up to leaderWait, so that a leader
// election does not fail a Lock or a Campaign. TestClusterElectionFailover
// failed once with "etcdserver: no leader" before this: its candidate was
// starting its watches as the raft leader's member stopped.
func TestWatchWaitsOutLeaderElection(t *testing.T) {
	stretchLeaderWait(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := testutil.Cluster(t)
	c := testutil.Client(t, cl.Members[1].Endpoints())
	for _, i := range []int{0, 2} {
		if err := cl.Members[i].Stop(); err != nil {
			t.Fatal(err)
		}
	}
	// Member 1 notices it has no leader after an election timeout; until
	// then it may still accept watches.
	for {
		w, err := startWatch(ctx, c, "k").created(ctx, c)
		if err != nil {
			if !transient(err) {
				t.Fatalf("a watch on a member without a leader: %v, want a transient error", err)
			}
			break
		}
		w.cancel()
		pause(ctx)
		if ctx.Err() != nil {
			t.Fatal("member 1 never refused a watch without a leader")
		}
	}
	done := make(chan error, 1)
	go func() {
		w, err := newWatch(ctx, c, "k")
		if w != nil {
			w.cancel()
		}
		done <- err
	}()
	if err := cl.Members[0].Restart(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("newWatch across a leader election: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("newWatch did not return after a leader was elected")
	}
}
