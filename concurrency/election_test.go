package concurrency_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	etcdc "go.etcd.io/etcd/client/v3/concurrency"

	"github.com/batonhq/baton/concurrency"
)

func campaignAsync(ctx context.Context, e *concurrency.Election, val string) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- e.Campaign(ctx, val) }()
	return ch
}

// nextLeader reads Events until a leader with value want (or, for want
// == "", no leader) shows up, and fails on any other leader in between.
func nextLeader(t *testing.T, ch <-chan concurrency.LeaderEvent, want string, allowed ...string) concurrency.LeaderEvent {
	t.Helper()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("events closed waiting for %q", want)
			}
			got := ""
			if ev.Leader != nil {
				got = string(ev.Leader.Value)
			}
			if got == want {
				return ev
			}
			ok = false
			for _, a := range allowed {
				ok = ok || a == got
			}
			if !ok {
				t.Fatalf("saw leader %q while waiting for %q", got, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no leader %q", want)
		}
	}
}

func TestElectionFailoverObserversSeeLeadersInOrder(t *testing.T) {
	e := newEnv(t)
	obs := concurrency.NewElection(e.session(), "failover")
	octx, ocancel := context.WithCancel(e.ctx)
	defer ocancel()
	observed := obs.Observe(octx)
	events := obs.Events(octx)
	if ev := nextLeader(t, events, ""); ev.Leader != nil {
		t.Fatal("want no leader first")
	}

	var cands []*concurrency.Election
	var sessions []*concurrency.Session
	var waits []<-chan error
	for i := range 3 {
		s := e.session()
		sessions = append(sessions, s)
		c := concurrency.NewElection(s, "failover")
		cands = append(cands, c)
		waits = append(waits, campaignAsync(e.ctx, c, fmt.Sprint("c", i)))
		waitKeys(t, e.ctx, e.client(), "failover", i+1)
	}
	if err := recv(t, waits[0], "first Campaign"); err != nil {
		t.Fatal(err)
	}
	// Failover: the leader resigns, the next one's session dies, the
	// last candidate leads.
	if err := cands[0].Resign(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, waits[1], "second Campaign"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client().Revoke(e.ctx, sessions[1].Lease()); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, waits[2], "third Campaign"); err != nil {
		t.Fatal(err)
	}
	var revs []int64
	for _, want := range []string{"c0", "c1", "c2"} {
		select {
		case r, ok := <-observed:
			if !ok {
				t.Fatal("Observe closed")
			}
			if got := string(r.Kvs[0].Value); got != want {
				t.Fatalf("Observe saw %q, want %q", got, want)
			}
			revs = append(revs, r.Kvs[0].CreateRevision)
		case <-time.After(30 * time.Second):
			t.Fatalf("Observe: no %s", want)
		}
	}
	if !(revs[0] < revs[1] && revs[1] < revs[2]) {
		t.Fatalf("leader tokens not increasing: %v", revs)
	}
	nextLeader(t, events, "c0")
	nextLeader(t, events, "c1")
	nextLeader(t, events, "c2")
	if err := cands[2].Resign(e.ctx); err != nil {
		t.Fatal(err)
	}
	// etcd's Observe never says so; Events reports that nobody leads.
	nextLeader(t, events, "")
	ocancel()
	for range observed {
	}
	for range events {
	}
}

func TestElectionProclaimAndLeader(t *testing.T) {
	e := newEnv(t)
	el := concurrency.NewElection(e.session(), "proclaim")
	if _, err := el.Leader(e.ctx); !errors.Is(err, concurrency.ErrElectionNoLeader) {
		t.Fatalf("Leader with none: %v", err)
	}
	if err := el.Proclaim(e.ctx, "x"); !errors.Is(err, concurrency.ErrElectionNotLeader) {
		t.Fatalf("Proclaim before Campaign: %v", err)
	}
	if err := el.Campaign(e.ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := el.Proclaim(e.ctx, "b"); err != nil {
		t.Fatal(err)
	}
	r, err := el.Leader(e.ctx)
	if err != nil || string(r.Kvs[0].Value) != "b" || string(r.Kvs[0].Key) != el.Key() || r.Kvs[0].CreateRevision != el.Rev() {
		t.Fatalf("Leader: %v %v", r, err)
	}
	if _, err := el.Guard(e.ctx, clientv3.OpPut("by-leader", "1")); err != nil {
		t.Fatal(err)
	}
	if err := el.Resign(e.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := el.Guard(e.ctx, clientv3.OpPut("by-leader", "2")); !errors.Is(err, concurrency.ErrElectionNotLeader) {
		t.Fatalf("Guard after Resign: %v", err)
	}
}

// etcd #11007, #22387: Campaign reported leadership after its lease had
// expired while it waited.
func TestCampaignNeverLeadsWithoutItsKey(t *testing.T) {
	e := newEnv(t)
	leader := concurrency.NewElection(e.session(), "nokey")
	if err := leader.Campaign(e.ctx, "l"); err != nil {
		t.Fatal(err)
	}
	s := e.session()
	c := concurrency.NewElection(s, "nokey")
	errc := campaignAsync(e.ctx, c, "c")
	waitKeys(t, e.ctx, e.client(), "nokey", 2)
	if _, err := e.client().Revoke(e.ctx, s.Lease()); err != nil {
		t.Fatal(err)
	}
	if err := leader.Resign(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, errc, "Campaign"); !errors.Is(err, concurrency.ErrSessionExpired) {
		t.Fatalf("Campaign after its lease expired: %v, want ErrSessionExpired", err)
	}
	if c.Key() != "" || c.Rev() != -1 {
		t.Fatalf("failed Campaign kept state: %q %d", c.Key(), c.Rev())
	}
}

// etcd #21128: Campaign left its key on errors other than cancellation.
// Here every way out of a wait removes the key.
func TestCampaignErrorPathsRemoveKey(t *testing.T) {
	e := newEnv(t)
	leader := concurrency.NewElection(e.session(), "cleanup")
	if err := leader.Campaign(e.ctx, "l"); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"cancel", "deadline"} {
		t.Run(kind, func(t *testing.T) {
			ctx, cancel := context.WithCancel(e.ctx)
			if kind == "deadline" {
				ctx, cancel = context.WithTimeout(e.ctx, 2*time.Second)
			}
			defer cancel()
			c := concurrency.NewElection(e.session(), "cleanup")
			errc := campaignAsync(ctx, c, "c")
			waitKeys(t, e.ctx, e.client(), "cleanup", 2)
			if kind == "cancel" {
				cancel()
			}
			if err := recv(t, errc, "Campaign"); err == nil {
				t.Fatal("Campaign succeeded behind a leader")
			}
			if ks := e.keys("cleanup"); len(ks) != 1 || ks[0] != leader.Key() {
				t.Fatalf("keys %v, want only the leader's", ks)
			}
		})
	}
}

// Compaction under a waiting candidate is not an error (etcd #21128 came
// from ErrCompacted): it keeps waiting and wins when its turn comes.
func TestCampaignSurvivesCompaction(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	leader := concurrency.NewElection(e.session(), "compact")
	if err := leader.Campaign(e.ctx, "l"); err != nil {
		t.Fatal(err)
	}
	c := concurrency.NewElection(e.session(), "compact")
	errc := campaignAsync(e.ctx, c, "c")
	waitKeys(t, e.ctx, admin, "compact", 2)
	var rev int64
	for i := range 5 {
		r, err := admin.Put(e.ctx, "noise", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		rev = r.Header.Revision
	}
	if _, err := admin.Compact(e.ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	if err := leader.Resign(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, errc, "Campaign"); err != nil {
		t.Fatal(err)
	}
}

// etcd #22123: Resign forgot the leadership even when its request failed.
func TestResignKeepsStateWhenRequestFails(t *testing.T) {
	e := newEnv(t)
	el := concurrency.NewElection(e.session(), "resign")
	if err := el.Campaign(e.ctx, "v"); err != nil {
		t.Fatal(err)
	}
	key, rev := el.Key(), el.Rev()
	failed, cancel := context.WithCancel(e.ctx)
	cancel()
	if err := el.Resign(failed); err == nil {
		t.Fatal("Resign with a dead context succeeded")
	}
	if el.Key() != key || el.Rev() != rev {
		t.Fatalf("state lost after a failed Resign: %q %d", el.Key(), el.Rev())
	}
	if ks := e.keys("resign"); len(ks) != 1 {
		t.Fatalf("keys %v", ks)
	}
	if err := el.Resign(e.ctx); err != nil {
		t.Fatal(err)
	}
	if ks := e.keys("resign"); len(ks) != 0 {
		t.Fatalf("keys after retried Resign: %v", ks)
	}
}

// etcd #22082 for elections: a Resign of an old leadership must not delete
// a newer one under the same key name.
func TestResignDeletesOnlyOwnLeadership(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	s := e.session()
	el := concurrency.NewElection(s, "resign-guard")
	if err := el.Campaign(e.ctx, "old"); err != nil {
		t.Fatal(err)
	}
	key := el.Key()
	if _, err := admin.Delete(e.ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Put(e.ctx, key, "newer", clientv3.WithLease(s.Lease())); err != nil {
		t.Fatal(err)
	}
	// The old leadership was lost when its key was deleted: Resign says so.
	if err := el.Resign(e.ctx); !errors.Is(err, concurrency.ErrLeadershipLost) {
		t.Fatalf("Resign of a lost leadership: %v, want ErrLeadershipLost", err)
	}
	r, err := admin.Get(e.ctx, key)
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "newer" {
		t.Fatalf("Resign touched a newer leadership: %v %v", r, err)
	}
}

// etcd #13469: ResumeElection used pfx, NewElection pfx + "/".
func TestResumeElectionUsesSamePrefix(t *testing.T) {
	e := newEnv(t)
	s := e.session()
	el := concurrency.NewElection(s, "resume-el")
	if err := el.Campaign(e.ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	re := concurrency.ResumeElection(s, "resume-el", el.Key(), el.Rev())
	r, err := re.Leader(e.ctx)
	if err != nil || string(r.Kvs[0].Key) != el.Key() {
		t.Fatalf("resumed Leader: %v %v", r, err)
	}
	if err := re.Proclaim(e.ctx, "v2"); err != nil {
		t.Fatal(err)
	}
	// A campaign on "resume-el" and one on "resume-elx" must not mix.
	other := concurrency.NewElection(e.session(), "resume-elx")
	if err := other.Campaign(e.ctx, "x"); err != nil {
		t.Fatal(err)
	}
	r, err = re.Leader(e.ctx)
	if err != nil || string(r.Kvs[0].Value) != "v2" {
		t.Fatalf("Leader after a sibling prefix: %v %v", r, err)
	}
	if err := re.Resign(e.ctx); err != nil {
		t.Fatal(err)
	}
	if ks := e.keys("resume-el"); len(ks) != 0 {
		t.Fatalf("keys after resumed Resign: %v", ks)
	}
}

// etcd #18163: Observe took the first PUT of a watch batch as the leader.
// Here one transaction removes the leader and brings two candidates at
// once; Observe and Events must agree with Leader. The batch logic itself
// is tested on synthetic batches in election_internal_test.go.
func TestObserveReportsRealLeaderOfABatch(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	s := e.session()
	obs := concurrency.NewElection(s, "batch")
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	events := obs.Events(ctx)
	nextLeader(t, events, "")
	ch := obs.Observe(ctx)
	lease := clientv3.WithLease(s.Lease())
	if _, err := admin.Put(ctx, "batch/x", "x", lease); err != nil {
		t.Fatal(err)
	}
	nextLeader(t, events, "x")
	if r := <-ch; string(r.Kvs[0].Value) != "x" {
		t.Fatalf("Observe: %s", r.Kvs[0].Value)
	}
	if _, err := admin.Txn(ctx).Then(
		clientv3.OpPut("batch/m", "m", lease),
		clientv3.OpDelete("batch/x"),
		clientv3.OpPut("batch/b", "b", lease),
	).Commit(); err != nil {
		t.Fatal(err)
	}
	lr, err := obs.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := string(lr.Kvs[0].Value)
	nextLeader(t, events, want)
	if r := <-ch; string(r.Kvs[0].Value) != want {
		t.Fatalf("Observe: %s, Leader: %s", r.Kvs[0].Value, want)
	}
}

func TestObserveAcrossCompaction(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	obs := concurrency.NewElection(e.session(), "obs-compact")
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	ch := obs.Observe(ctx)
	a := concurrency.NewElection(e.session(), "obs-compact")
	if err := a.Campaign(e.ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if r := <-ch; string(r.Kvs[0].Value) != "a" {
		t.Fatalf("first: %s", r.Kvs[0].Value)
	}
	r, err := admin.Put(e.ctx, "noise", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Compact(e.ctx, r.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	if err := a.Resign(e.ctx); err != nil {
		t.Fatal(err)
	}
	b := concurrency.NewElection(e.session(), "obs-compact")
	if err := b.Campaign(e.ctx, "b"); err != nil {
		t.Fatal(err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			t.Fatal("Observe closed after a compaction")
		}
		if string(r.Kvs[0].Value) != "b" {
			t.Fatalf("after compaction: %s", r.Kvs[0].Value)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no leader after compaction")
	}
	cancel()
	if _, ok := <-ch; ok {
		t.Fatal("Observe kept sending after ctx ended")
	}
}

func TestElectionInteroperatesWithEtcdElection(t *testing.T) {
	e := newEnv(t)
	es, err := etcdc.NewSession(e.client())
	if err != nil {
		t.Fatal(err)
	}
	defer es.Close()
	theirs := etcdc.NewElection(es, "mixed-el")
	if err := theirs.Campaign(e.ctx, "etcd"); err != nil {
		t.Fatal(err)
	}
	ours := concurrency.NewElection(e.session(), "mixed-el")
	errc := campaignAsync(e.ctx, ours, "baton")
	waitKeys(t, e.ctx, e.client(), "mixed-el", 2)
	mustNotReturn(t, errc, "baton Campaign while etcd leads")
	r, err := ours.Leader(e.ctx)
	if err != nil || string(r.Kvs[0].Value) != "etcd" {
		t.Fatalf("Leader: %v %v", r, err)
	}
	if err := theirs.Resign(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, errc, "baton Campaign"); err != nil {
		t.Fatal(err)
	}
	lr, err := theirs.Leader(e.ctx)
	if err != nil || string(lr.Kvs[0].Value) != "baton" {
		t.Fatalf("etcd sees leader %v %v", lr, err)
	}
}

func TestWithLeadershipSignalsLoss(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	s := e.session()
	el := concurrency.NewElection(s, "lead-loss")
	inside := make(chan struct{})
	var cause error
	errc := make(chan error, 1)
	go func() {
		errc <- concurrency.WithLeadership(e.ctx, el, "me", func(ctx context.Context) error {
			close(inside)
			<-ctx.Done()
			cause = context.Cause(ctx)
			return nil
		})
	}()
	<-inside
	if _, err := admin.Revoke(e.ctx, s.Lease()); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, errc, "WithLeadership"); !errors.Is(err, concurrency.ErrLeadershipLost) {
		t.Fatalf("WithLeadership: %v", err)
	}
	if !errors.Is(cause, concurrency.ErrLeadershipLost) {
		t.Fatalf("cause %v", cause)
	}
}

func TestElectionBadInput(t *testing.T) {
	e := newEnv(t)
	if err := concurrency.NewElection(nil, "p").Campaign(e.ctx, "v"); !errors.Is(err, concurrency.ErrNilSession) {
		t.Fatalf("nil session: %v", err)
	}
	el := concurrency.NewElection(e.session(), "")
	if err := el.Campaign(e.ctx, "v"); !errors.Is(err, concurrency.ErrEmptyPrefix) {
		t.Fatalf("empty prefix: %v", err)
	}
	if _, ok := <-el.Observe(e.ctx); ok {
		t.Fatal("Observe on a bad election sent something")
	}
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	good := concurrency.NewElection(e.session(), "bad-el")
	if err := good.Campaign(ctx, "v"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
	if err := good.Resign(e.ctx); err != nil {
		t.Fatalf("Resign when not leading: %v", err)
	}
	r, err := e.client().Get(e.ctx, "", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || r.Count != 0 {
		t.Fatalf("bad input wrote keys: %v %v", r, err)
	}
}

// Election's one "lost" error: after the leader key went, Guard and
// Proclaim report an error that matches ErrLeadershipLost (as Resign and
// the hold's context do) as well as etcd's ErrElectionNotLeader; without a
// leadership at all they report ErrElectionNotLeader alone.
func TestElectionLossIsLeadershipLostEverywhere(t *testing.T) {
	e := newEnv(t)
	admin := e.client()
	el := concurrency.NewElection(e.session(), "el-vocab")
	if _, err := el.Guard(e.ctx); !errors.Is(err, concurrency.ErrElectionNotLeader) || errors.Is(err, concurrency.ErrLeadershipLost) {
		t.Fatalf("Guard before Campaign: %v", err)
	}
	for _, call := range []string{"Guard", "Proclaim", "Resign"} {
		if err := el.Campaign(e.ctx, "v"); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Delete(e.ctx, el.Key()); err != nil {
			t.Fatal(err)
		}
		var err error
		switch call {
		case "Guard":
			_, err = el.Guard(e.ctx, clientv3.OpPut("el-vocab-data", "x"))
			if !errors.Is(err, concurrency.ErrElectionNotLeader) {
				t.Fatalf("Guard after the loss: %v, want it to match ErrElectionNotLeader too", err)
			}
			el.Resign(e.ctx)
		case "Proclaim":
			err = el.Proclaim(e.ctx, "w")
			if !errors.Is(err, concurrency.ErrElectionNotLeader) {
				t.Fatalf("Proclaim after the loss: %v, want it to match ErrElectionNotLeader too", err)
			}
		case "Resign":
			err = el.Resign(e.ctx)
		}
		if !errors.Is(err, concurrency.ErrLeadershipLost) {
			t.Fatalf("%s after the leader key went: %v, want ErrLeadershipLost", call, err)
		}
		if el.Rev() != -1 && call != "Guard" {
			t.Fatalf("%s after the loss: still leading with token %d", call, el.Rev())
		}
	}
}
