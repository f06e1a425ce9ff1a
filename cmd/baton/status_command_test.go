package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/concurrency"
)

// TestStatus: status shows a lock's holder (host, pid, note), its token,
// for how long it is held and its waiters, and an election's leader; in a
// table and in JSON.
func TestStatus(t *testing.T) {
	env, _ := serverEnv(t)
	holder := start(t, env, "lock", "--note", "nightly backup", "jobs/backup")
	tokenLine, _ := holder.stdout.waitFor(t, holder.name, 0, "BATON_FENCING_TOKEN=", 30*time.Second)
	token, _ := strconv.ParseInt(strings.TrimPrefix(tokenLine, "BATON_FENCING_TOKEN="), 10, 64)
	var waiters []*proc
	for range 2 {
		w := start(t, env, "lock", "jobs/backup", "--", "true")
		w.stderr.waitFor(t, w.name, 0, "waiting for lock jobs/backup", 30*time.Second)
		waiters = append(waiters, w)
	}
	leader := start(t, env, "elect", "--note", "primary", "jobs/sched")
	leader.stdout.waitFor(t, leader.name, 0, "BATON_FENCING_TOKEN=", 30*time.Second)

	code, stdout, stderr := runBaton(t, env, 30*time.Second, "status", "jobs/")
	if code != 0 {
		t.Fatalf("status: exit %d\n%s", code, stderr)
	}
	var lockRow, electRow []string
	for _, l := range strings.Split(stdout, "\n") {
		switch f := strings.Fields(l); {
		case len(f) > 1 && f[1] == "jobs/backup":
			lockRow = f
		case len(f) > 1 && f[1] == "jobs/sched":
			electRow = f
		}
	}
	// KIND NAME HOLDER(host pid N) NOTE(nightly backup) TOKEN HELD WAITERS
	wantPID := fmt.Sprintf("pid %d", holder.pid())
	if lockRow == nil || lockRow[0] != "lock" || !strings.Contains(stdout, wantPID+"  nightly backup") ||
		lockRow[len(lockRow)-3] != strconv.FormatInt(token, 10) || lockRow[len(lockRow)-1] != "2" ||
		lockRow[len(lockRow)-2] == "-" {
		t.Errorf("status table does not show lock jobs/backup held by %s (nightly backup), token %d, held for some time, 2 waiters:\n%s", wantPID, token, stdout)
	}
	if electRow == nil || electRow[0] != "election" || !strings.Contains(stdout, fmt.Sprintf("pid %d  primary", leader.pid())) {
		t.Errorf("status table does not show election jobs/sched led by pid %d:\n%s", leader.pid(), stdout)
	}

	code, stdout, stderr = runBaton(t, env, 30*time.Second, "status", "--json", "jobs/")
	if code != 0 {
		t.Fatalf("status --json: exit %d\n%s", code, stderr)
	}
	var entries []statusEntry
	if err := json.Unmarshal([]byte(stdout), &entries); err != nil {
		t.Fatalf("status --json: %v\n%s", err, stdout)
	}
	if len(entries) != 2 {
		t.Fatalf("status --json: %d entries, want 2:\n%s", len(entries), stdout)
	}
	e := entries[0]
	id := e.Holder.Identity
	if e.Name != "jobs/backup" || e.Kind != "lock" || e.Token != token || id == nil || id.PID != holder.pid() ||
		id.Note != "nightly backup" || e.HeldForSeconds == nil || len(e.Waiters) != 2 {
		t.Errorf("status --json lock entry: %+v", e)
	}
	for i, w := range e.Waiters {
		if w.Identity == nil || w.Identity.PID != waiters[i].pid() || w.Token <= e.Token {
			t.Errorf("waiter %d: %+v, want pid %d behind token %d", i, w, waiters[i].pid(), e.Token)
		}
	}
	if entries[1].Kind != "election" || entries[1].Holder.Identity == nil || entries[1].Holder.Identity.Note != "primary" {
		t.Errorf("status --json election entry: %+v", entries[1])
	}
}

// TestPrefixNamespacesKeys: with --prefix every key lives under it, and
// status under the same prefix shows names without it.
func TestPrefixNamespacesKeys(t *testing.T) {
	env, c := serverEnv(t)
	p := start(t, env, "--prefix", "team-a/", "lock", "deploy", "--", "sh", "-c", `echo "key $BATON_LOCK_KEY"; exec sleep 100`)
	line, _ := p.stdout.waitFor(t, p.name, 0, "key ", 30*time.Second)
	key := strings.TrimPrefix(line, "key ")
	if !strings.HasPrefix(key, "team-a/deploy/") {
		t.Errorf("BATON_LOCK_KEY %q, want it under team-a/deploy/", key)
	}
	r, err := c.Get(ctxT(t, 10*time.Second), key)
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("the key %q is not in etcd: %v %v", key, r, err)
	}
	code, stdout, stderr := runBaton(t, env, 30*time.Second, "--prefix", "team-a/", "status")
	if code != 0 || !strings.Contains(stdout, " deploy ") || strings.Contains(stdout, "team-a/deploy ") {
		t.Errorf("status under the prefix: exit %d, want name deploy:\n%s%s", code, stdout, stderr)
	}
	code, stdout, _ = runBaton(t, env, 30*time.Second, "--prefix", "team-b/", "status")
	if code != 0 || !strings.Contains(stdout, "no locks, elections or semaphores") {
		t.Errorf("status under another prefix: exit %d:\n%s", code, stdout)
	}
}

// TestQueueKind checks how status tells entries apart, on keys written by
// etcd's own clients: an empty value is a lock, any other value an
// election; keys not on their lease are not queue keys.
func TestQueueKind(t *testing.T) {
	kv := func(key, val string, lease, rev int64) *mvccpb.KeyValue {
		return &mvccpb.KeyValue{Key: []byte(key), Value: []byte(val), Lease: lease, CreateRevision: rev}
	}
	o := &statusOptions{app: &app{}}
	got := o.entries([]*mvccpb.KeyValue{
		kv("a/1f", "", 0x1f, 5),
		kv("a/2a", "", 0x2a, 6),
		kv("e/3b", "proposal", 0x3b, 7),
		kv("plain/key", "x", 0, 8),  // no lease: data, not a queue
		kv("x/ff", "", 0x1f, 9),     // wrong lease for its name
		kv("b/1f-1", "", 0x1f, 10),  // second handle of one session
		kv("b/1f-x", "", 0x1f, 11),  // not a handle suffix
		kv("/4c", "", 0x4c, 12),     // empty name
		kv("s/5d", "2/3", 0x5d, 13), // semaphore: granted
		kv("s/6e", "1/3", 0x6e, 14), // granted: 3 of 3
		kv("s/7f", "1/3", 0x7f, 15), // waits
	}, time.Now())
	var summary []string
	for _, e := range got {
		summary = append(summary, fmt.Sprintf("%s %s %d %d", e.Kind, e.Name, e.Token, len(e.Waiters)))
		if e.Kind == kindSemaphore && (e.Used != 3 || e.Limit != 3 || len(e.Holders) != 2) {
			t.Errorf("semaphore entry %+v, want 3 of 3 permits used by 2 holders", e)
		}
	}
	want := []string{"lock a 5 1", "lock b 10 0", "election e 7 0", "semaphore s 13 1"}
	if strings.Join(summary, ",") != strings.Join(want, ",") {
		t.Errorf("entries %q, want %q", summary, want)
	}
}

// TestStatusSemaphore: status shows a semaphore of baton's concurrency
// package: permits in use, holders and waiters.
func TestStatusSemaphore(t *testing.T) {
	env, c := serverEnv(t)
	sessions := make([]*concurrency.Session, 3)
	for i := range sessions {
		s, err := concurrency.NewSession(c, concurrency.WithTTL(30))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		sessions[i] = s
	}
	ctx := ctxT(t, 60*time.Second)
	if err := concurrency.NewSemaphore(sessions[0], "pool", 3).Acquire(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := concurrency.NewSemaphore(sessions[1], "pool", 3).Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	r, err := c.Get(ctx, "pool/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || r.Count != 2 {
		t.Fatalf("%v keys under pool/ (%v), want 2", r, err)
	}
	wch := c.Watch(ctx, "pool/", clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision+1))
	waiting := make(chan error, 1)
	wctx, cancel := context.WithCancel(ctx)
	go func() { waiting <- concurrency.NewSemaphore(sessions[2], "pool", 3).Acquire(wctx, 2) }()
	defer func() {
		cancel()
		<-waiting
	}()
	// The waiter's key is the first change under pool/ after the grants.
	if wr := <-wch; wr.Err() != nil || len(wr.Events) == 0 || !wr.Events[0].IsCreate() {
		t.Fatalf("watch: %v %v, want the waiter's key", wr.Err(), wr.Events)
	}
	code, stdout, stderr := runBaton(t, env, 30*time.Second, "status", "pool")
	if code != 0 || !strings.Contains(stdout, "semaphore") || !strings.Contains(stdout, "3/3 permits, 2 holders") {
		t.Fatalf("status: exit %d, want the semaphore with 3/3 permits and 2 holders:\n%s%s", code, stdout, stderr)
	}
	if f := strings.Fields(strings.Split(stdout, "\n")[1]); f[len(f)-1] != "1" {
		t.Errorf("status shows %s waiters, want 1:\n%s", f[len(f)-1], stdout)
	}
}
