package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
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
	if code != 0 || !strings.Contains(stdout, "no locks or elections") {
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
		kv("plain/key", "x", 0, 8), // no lease: data, not a queue
		kv("x/ff", "", 0x1f, 9),    // wrong lease for its name
		kv("b/1f-1", "", 0x1f, 10), // second handle of one session
		kv("b/1f-x", "", 0x1f, 11), // not a handle suffix
		kv("/4c", "", 0x4c, 12),    // empty name
	}, time.Now())
	var summary []string
	for _, e := range got {
		summary = append(summary, fmt.Sprintf("%s %s %d %d", e.Kind, e.Name, e.Token, len(e.Waiters)))
	}
	want := []string{"lock a 5 1", "lock b 10 0", "election e 7 0"}
	if strings.Join(summary, ",") != strings.Join(want, ",") {
		t.Errorf("entries %q, want %q", summary, want)
	}
}
