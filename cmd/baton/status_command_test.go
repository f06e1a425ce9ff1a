package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/internal/testutil"
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
	if code != 0 || !strings.Contains(stdout, "nothing under") {
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

// statusJSON runs "status --json ARGS" in-process against eps and returns
// its entries by kind and name ("rwmutex rw").
func statusJSON(t *testing.T, eps []string, args ...string) map[string]statusEntry {
	t.Helper()
	code, stdout, stderr := inProcess(append([]string{"--endpoints", strings.Join(eps, ","), "status", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("status --json: exit %d\n%s", code, stderr)
	}
	var entries []statusEntry
	if err := json.Unmarshal([]byte(stdout), &entries); err != nil {
		t.Fatalf("status --json: %v\n%s", err, stdout)
	}
	m := map[string]statusEntry{}
	for _, e := range entries {
		m[e.Kind+" "+e.Name] = e
	}
	return m
}

// statusText runs "status ARGS" in-process against eps.
func statusText(t *testing.T, eps []string, args ...string) string {
	t.Helper()
	code, stdout, stderr := inProcess(append([]string{"--endpoints", strings.Join(eps, ","), "status"}, args...)...)
	if code != 0 {
		t.Fatalf("status: exit %d\n%s", code, stderr)
	}
	return stdout
}

func newSessions(t *testing.T, c *clientv3.Client, n int) []*concurrency.Session {
	t.Helper()
	ss := make([]*concurrency.Session, n)
	for i := range ss {
		s, err := concurrency.NewSession(c, concurrency.WithTTL(30))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		ss[i] = s
	}
	return ss
}

// background runs f and waits for it when the test ends (after cancel).
func background(t *testing.T, f func(ctx context.Context) error) (cancel func(), done <-chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	errc, finished := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(finished)
		errc <- f(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-finished
	})
	return cancel, errc
}

// TestStatusRWMutex: an RWMutex is one entry, not two locks (rw/read and
// rw/write): its readers hold it together, a writer behind them waits and
// so does a reader behind the writer; once the readers leave, the writer
// holds it.
func TestStatusRWMutex(t *testing.T) {
	srv := testutil.Server(t)
	c := testutil.Client(t, srv.Endpoints())
	ss := newSessions(t, c, 4)
	ctx := ctxT(t, 60*time.Second)
	r1, r2 := concurrency.NewRWMutex(ss[0], "rw"), concurrency.NewRWMutex(ss[1], "rw")
	for _, r := range []*concurrency.RWMutex{r1, r2} {
		if err := r.RLock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	w := concurrency.NewRWMutex(ss[2], "rw")
	_, wDone := background(t, func(ctx context.Context) error { return w.Lock(ctx) })
	waitKeys(t, c, "rw/", 3)
	_, _ = background(t, func(ctx context.Context) error { return concurrency.NewRWMutex(ss[3], "rw").RLock(ctx) })
	waitKeys(t, c, "rw/", 4)

	got := statusJSON(t, srv.Endpoints(), "rw")
	e, ok := got["rwmutex rw"]
	if len(got) != 1 || !ok {
		t.Fatalf("status shows %v, want one rwmutex rw", keys(got))
	}
	if e.Mode != "read" || len(e.Holders) != 2 || len(e.Waiters) != 2 || e.Waiters[0].Mode != "write" || e.Waiters[1].Mode != "read" ||
		e.Token != max(r1.Rev(), r2.Rev()) {
		t.Errorf("rwmutex with 2 readers, a writer and a reader waiting: %+v (reader tokens %d, %d)", e, r1.Rev(), r2.Rev())
	}
	if s := statusText(t, srv.Endpoints(), "rw"); !strings.Contains(s, "rwmutex") || !strings.Contains(s, "2 readers") {
		t.Errorf("status table:\n%s", s)
	}

	for _, r := range []*concurrency.RWMutex{r1, r2} {
		if err := r.RUnlock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-wDone; err != nil {
		t.Fatal(err)
	}
	e = statusJSON(t, srv.Endpoints(), "rw")["rwmutex rw"]
	if e.Mode != "write" || len(e.Holders) != 1 || e.Token != w.Rev() || len(e.Waiters) != 1 || e.Waiters[0].Mode != "read" {
		t.Errorf("rwmutex held by the writer (token %d), a reader waiting: %+v", w.Rev(), e)
	}
	if s := statusText(t, srv.Endpoints(), "rw"); !strings.Contains(s, "writer lease ") {
		t.Errorf("status table does not show the writer:\n%s", s)
	}
	if err := w.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

func keys(m map[string]statusEntry) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// TestStatusBarriers: a DoubleBarrier shows who is in and whether it
// filled; a Barrier shows while held.
func TestStatusBarriers(t *testing.T) {
	srv := testutil.Server(t)
	c := testutil.Client(t, srv.Endpoints())
	ss := newSessions(t, c, 3)
	ctx := ctxT(t, 60*time.Second)

	gate := concurrency.NewBarrier(c, "gate")
	if err := gate.Hold(ctx); err != nil {
		t.Fatal(err)
	}
	dbs := make([]*concurrency.DoubleBarrier, 3)
	entered := make(chan error, 2)
	for i := range dbs {
		dbs[i] = concurrency.NewDoubleBarrier(ss[i], "round", 3)
	}
	for _, b := range dbs[:2] {
		go func() { entered <- b.Enter(ctx) }()
	}
	waitKeys(t, c, "round/waiters/", 2)
	got := statusJSON(t, srv.Endpoints())
	if b, ok := got["barrier gate"]; !ok || b.Token == 0 {
		t.Errorf("status does not show barrier gate held: %v", got)
	}
	if d := got["doublebarrier round"]; len(d.Participants) != 2 || d.Full {
		t.Errorf("double barrier with 2 of 3 in: %+v", d)
	}
	if len(got) != 2 {
		t.Errorf("status shows %v, want barrier gate and doublebarrier round", keys(got))
	}
	if s := statusText(t, srv.Endpoints()); !strings.Contains(s, "2 in, filling") || !strings.Contains(s, "barrier        gate") {
		t.Errorf("status table:\n%s", s)
	}

	if err := dbs[2].Enter(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-entered; err != nil {
			t.Fatal(err)
		}
	}
	if err := gate.Release(ctx); err != nil {
		t.Fatal(err)
	}
	got = statusJSON(t, srv.Endpoints())
	if d := got["doublebarrier round"]; len(d.Participants) != 3 || !d.Full {
		t.Errorf("double barrier full with 3 in: %+v", d)
	}
	if _, ok := got["barrier gate"]; ok || len(got) != 1 {
		t.Errorf("status after the release of gate: %v", keys(got))
	}
	left := make(chan error, 3)
	for _, b := range dbs {
		go func() { left <- b.Leave(ctx) }()
	}
	for range dbs {
		if err := <-left; err != nil {
			t.Fatal(err)
		}
	}
	// Only the withdrawal marker may stay: no barrier is shown.
	if got = statusJSON(t, srv.Endpoints()); len(got) != 0 {
		t.Errorf("status after every participant left: %v", keys(got))
	}
}

// TestStatusQueue: a queue shows its depth, its line of waiting consumers
// in order, and its consumers' claim records; not a lock or an election
// per waiter key.
func TestStatusQueue(t *testing.T) {
	srv := testutil.Server(t)
	c := testutil.Client(t, srv.Endpoints())
	ctx := ctxT(t, 60*time.Second)
	producer := concurrency.NewQueue(c, "jobs")
	for _, v := range []string{"a", "b", "c"} {
		if err := producer.Enqueue(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	e := statusJSON(t, srv.Endpoints(), "jobs")["queue jobs"]
	if e.Depth != 3 || len(e.Consumers) != 0 {
		t.Errorf("queue with 3 items: %+v", e)
	}
	first, second := concurrency.NewQueue(c, "jobs"), concurrency.NewQueue(c, "jobs")
	if v, err := first.Dequeue(ctx); err != nil || v != "a" {
		t.Fatalf("Dequeue = %q, %v", v, err)
	}
	_, got1 := background(t, func(ctx context.Context) error {
		for range 3 { // b and c, then one that waits
			if _, err := first.Dequeue(ctx); err != nil {
				return err
			}
		}
		return nil
	})
	waitKeys(t, c, "jobs/w/", 1)
	_, _ = background(t, func(ctx context.Context) error { _, err := second.Dequeue(ctx); return err })
	waitKeys(t, c, "jobs/w/", 2)

	all := statusJSON(t, srv.Endpoints(), "jobs")
	e, ok := all["queue jobs"]
	if len(all) != 1 || !ok {
		t.Fatalf("status shows %v, want one queue jobs", keys(all))
	}
	if e.Depth != 0 || len(e.Consumers) != 2 || e.Consumers[0].Token >= e.Consumers[1].Token || len(e.Claims) == 0 {
		t.Errorf("empty queue with 2 consumers in line and a claim record: %+v", e)
	}
	if s := statusText(t, srv.Endpoints(), "jobs"); !strings.Contains(s, "queue") || !strings.Contains(s, "0 items, 1 claims") {
		t.Errorf("status table:\n%s", s)
	}
	if err := producer.Enqueue(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if err := <-got1; err != nil {
		t.Fatal(err)
	}
	// The first in line got "d": the second is alone in line now.
	waitKeys(t, c, "jobs/w/", 1)
	if e := statusJSON(t, srv.Endpoints(), "jobs")["queue jobs"]; len(e.Consumers) != 1 || e.Depth != 0 {
		t.Errorf("queue after the first consumer got its item: %+v", e)
	}
}

// TestStatusEscapes (issue 14, 5): a new line or a tab in a NAME or a
// --note is shown escaped, and wide characters keep the columns aligned:
// every row has its HOLDER at the header's display column.
func TestStatusEscapes(t *testing.T) {
	srv := testutil.Server(t)
	env := map[string]string{"BATON_ENDPOINTS": strings.Join(srv.Endpoints(), ",")}
	var runs []*inProcessRun
	for _, args := range [][]string{
		{"--note", "tab\there", "bad\nname"},
		{"--note", "宽字符", "日本語"},
		{"--note", "plain", "ok"},
	} {
		r := startInProcess(env, false, append([]string{"lock"}, args...)...)
		r.out.waitCount(t, "BATON_FENCING_TOKEN=", 1, 30*time.Second)
		runs = append(runs, r)
	}
	defer func() {
		for _, r := range runs {
			r.sigs <- syscall.SIGTERM
			if code := <-r.code; code != 0 {
				t.Errorf("lock exit %d: %s", code, r.err.String())
			}
		}
	}()
	out := statusText(t, srv.Endpoints())
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("status printed %d lines, want a header and 3 rows:\n%s", len(lines), out)
	}
	for _, want := range []string{`"bad\nname"`, `"tab\there"`, "日本語", "宽字符"} {
		if !strings.Contains(out, want) {
			t.Errorf("status table lacks %s:\n%s", want, out)
		}
	}
	host, _ := os.Hostname()
	col := func(line, sub string) int {
		i := strings.Index(line, sub)
		if i < 0 {
			t.Fatalf("%q not in %q", sub, line)
		}
		return displayWidth(line[:i])
	}
	holderCol, noteCol := col(lines[0], "HOLDER"), col(lines[0], "NOTE")
	for _, l := range lines[1:] {
		if col(l, host+" pid") != holderCol || col(l, "pid "+strconv.Itoa(os.Getpid()))+len("pid "+strconv.Itoa(os.Getpid()))+2 != noteCol {
			t.Errorf("row out of line with the header (HOLDER at %d, NOTE at %d):\n%s", holderCol, noteCol, out)
		}
	}
}

func TestCell(t *testing.T) {
	for in, want := range map[string]string{
		"plain":       "plain",
		"with space":  "with space",
		"a\tb":        `"a\tb"`,
		"a\nb":        `"a\nb"`,
		"日本":          "日本",
		`"quoted"`:    `"\"quoted\""`,
		"\xff":        `"\xff"`,
		"zero\u200bw": `"zero\u200bw"`,
	} {
		if got := cell(in); got != want {
			t.Errorf("cell(%q) = %s, want %s", in, got, want)
		}
	}
	if w := displayWidth("日本a\u0301"); w != 5 {
		t.Errorf("displayWidth = %d, want 5", w)
	}
}

// TestStatusWarnsNested: status warns, on stderr, when a live lock or
// election name is a prefix of another live name followed by / (issue 14:
// "a" waits for the holders of "a/b"), as lock and elect do; names that
// only share a prefix ("ab") do not nest. The table itself is unchanged.
func TestStatusWarnsNested(t *testing.T) {
	srv := testutil.Server(t)
	c := testutil.Client(t, srv.Endpoints())
	env := testEnv("BATON_ENDPOINTS=" + strings.Join(srv.Endpoints(), ","))
	for _, name := range []string{"a/b", "ab", "e/x/y"} {
		p := start(t, env, "lock", name)
		p.stdout.waitFor(t, p.name, 0, "BATON_FENCING_TOKEN=", 30*time.Second)
	}
	outer := start(t, env, "lock", "a") // waits behind a/b
	outer.stderr.waitFor(t, outer.name, 0, "waiting for lock a", 30*time.Second)
	waitKeys(t, c, "a/", 2)                       // a/b's and the waiter's
	candidate := start(t, env, "elect", "e", "p") // waits behind e/x/y
	candidate.stderr.waitFor(t, candidate.name, 0, "waiting for leadership of e", 30*time.Second)
	waitKeys(t, c, "e/", 2) // e/x/y's and the candidate's

	for _, args := range [][]string{{"status"}, {"status", "--json"}} {
		code, stdout, stderr := inProcess(append([]string{"--endpoints", strings.Join(srv.Endpoints(), ",")}, args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s", args, code, stderr)
		}
		want := []string{nestWarning("a", "a/b"), nestWarning("e", "e/x/y")}
		if got := strings.Split(strings.TrimSpace(stderr), "\n"); !slices.Equal(got, want) {
			t.Errorf("%v: stderr\n%s\nwant exactly\n%s", args, stderr, strings.Join(want, "\n"))
		}
		if strings.Contains(stdout, "warning") {
			t.Errorf("%v: the warning went to stdout:\n%s", args, stdout)
		}
	}
	// Under a PREFIX that holds one name only, there is nothing to say.
	if code, _, stderr := inProcess("--endpoints", strings.Join(srv.Endpoints(), ","), "status", "ab"); code != 0 || stderr != "" {
		t.Errorf("status ab: exit %d, stderr %q; want 0 and nothing", code, stderr)
	}
}
