package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/internal/testutil"
)

// TestElectStopsChildOnResign: the leader's key is resigned from outside
// (ResumeElection + Resign on another session, as a second handle of the
// same leadership would); the child is stopped and baton exits 71.
func TestElectStopsChildOnResign(t *testing.T) {
	env, c := serverEnv(t)
	p := start(t, env, "elect", "sched", "--", "sh", "-c", `echo "leading $BATON_ELECTION_KEY $BATON_FENCING_TOKEN"; exec sleep 100`)
	line, _ := p.stdout.waitFor(t, p.name, 0, "leading ", 30*time.Second)
	f := strings.Fields(line)
	key := f[1]
	rev, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	s, err := concurrency.NewSession(c, concurrency.WithTTL(10))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := concurrency.ResumeElection(s, "sched", key, rev).Resign(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	p.waitCode(exitLost, 30*time.Second)
	if stderr := p.stderr.text(); !strings.Contains(stderr, "leadership of sched lost") || !strings.Contains(stderr, "killed by SIGTERM") {
		t.Errorf("stderr does not say leadership was lost and the child stopped:\n%s", stderr)
	}
}

// TestElectRunsOnlyWhileLeader: a second candidate's CMD starts only after
// the first leader's CMD exits, with a higher token and its proposal.
func TestElectRunsOnlyWhileLeader(t *testing.T) {
	env, _ := serverEnv(t)
	first := start(t, env, "elect", "--note", "one", "svc", "--", "sh", "-c", `echo "first $BATON_FENCING_TOKEN"; exec sleep 100`)
	line, _ := first.stdout.waitFor(t, first.name, 0, "first ", 30*time.Second)
	firstToken, _ := strconv.ParseInt(strings.TrimPrefix(line, "first "), 10, 64)

	second := start(t, env, "elect", "svc", "p2", "--", "sh", "-c", `echo "second $BATON_FENCING_TOKEN $BATON_PROPOSAL"`)
	progress, _ := second.stderr.waitFor(t, second.name, 0, "waiting for leadership of svc", 30*time.Second)
	if want := fmt.Sprintf("pid %d (one)", first.pid()); !strings.Contains(progress, want) {
		t.Errorf("progress %q does not name the leader %q", progress, want)
	}
	if strings.Contains(second.stdout.text(), "second") {
		t.Fatal("the second candidate ran CMD while the first led")
	}
	first.signal(syscall.SIGTERM) // forwarded: sh dies of it
	first.waitCode(exitSignalBase+int(syscall.SIGTERM), 30*time.Second)
	line, _ = second.stdout.waitFor(t, second.name, 0, "second ", 30*time.Second)
	f := strings.Fields(line)
	if tok, _ := strconv.ParseInt(f[1], 10, 64); tok <= firstToken || f[2] != "p2" {
		t.Errorf("second leader printed %q, want a token > %d and proposal p2", line, firstToken)
	}
	second.waitCode(0, 30*time.Second)
}

// TestElectListen: --listen prints "no leader", then the leader, then "no
// leader" again after the leader resigns (on SIGINT); --json prints the
// same as JSON lines.
func TestElectListen(t *testing.T) {
	env, _ := serverEnv(t)
	text := start(t, env, "elect", "--listen", "web")
	js := start(t, env, "elect", "--listen", "--json", "web")
	_, nt := text.stdout.waitFor(t, text.name, 0, "no leader", 30*time.Second)
	_, nj := js.stdout.waitFor(t, js.name, 0, `"leader":null`, 30*time.Second)

	leader := start(t, env, "elect", "web", "10.0.0.5:8080")
	keyLine, _ := leader.stdout.waitFor(t, leader.name, 0, "BATON_ELECTION_KEY=", 30*time.Second)
	key := strings.TrimPrefix(keyLine, "BATON_ELECTION_KEY=")
	line, nt := text.stdout.waitFor(t, text.name, nt, "leader: ", 30*time.Second)
	if !strings.Contains(line, `"10.0.0.5:8080"`) || !strings.Contains(line, key) {
		t.Errorf("--listen printed %q, want the proposal and key %s", line, key)
	}
	line, nj = js.stdout.waitFor(t, js.name, nj, key, 30*time.Second)
	var ev leaderLine
	if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Leader == nil || ev.Leader.Value != "10.0.0.5:8080" || ev.Leader.Token <= 0 {
		t.Errorf("--json printed %q (%v), want the leader with its value and token", line, err)
	}

	leader.signal(syscall.SIGINT)
	leader.waitCode(0, 30*time.Second)
	text.stdout.waitFor(t, text.name, nt, "no leader", 30*time.Second)
	line, _ = js.stdout.waitFor(t, js.name, nj, `"leader":null`, 30*time.Second)
	if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Leader != nil || ev.Rev <= 0 {
		t.Errorf("--json printed %q (%v), want no leader at a revision", line, err)
	}
	text.signal(syscall.SIGINT)
	js.signal(syscall.SIGINT)
	text.waitCode(0, 30*time.Second)
	js.waitCode(0, 30*time.Second)
}

// TestElectListenHandoff: with a standby queued, a handoff is one
// "leader" line in text and in JSON alike, and the update by which a baton
// leader records since when it leads prints nothing in either: it must
// not read as a second leader. A new proposal is a "value" line.
func TestElectListenHandoff(t *testing.T) {
	env, c := serverEnv(t)
	text := start(t, env, "elect", "--listen", "ho")
	js := start(t, env, "elect", "--listen", "--json", "ho")
	text.stdout.waitFor(t, text.name, 0, "no leader", 30*time.Second)
	js.stdout.waitFor(t, js.name, 0, `"leader":null`, 30*time.Second)

	a := start(t, env, "elect", "--note", "A", "ho")
	keyA, _ := a.stdout.waitFor(t, a.name, 0, "BATON_ELECTION_KEY=", 30*time.Second)
	b := start(t, env, "elect", "--note", "B", "ho")
	b.stderr.waitFor(t, b.name, 0, "waiting for leadership of ho", 30*time.Second)
	// The waiting line can come before B's key is written (the elector
	// grants its session meanwhile): B is queued once its key is there,
	// and only then is A's resignation a handoff rather than "no leader".
	waitKeys(t, c, "ho/", 2)
	a.signal(syscall.SIGINT)
	a.waitCode(0, 30*time.Second)
	keyB, _ := b.stdout.waitFor(t, b.name, 0, "BATON_ELECTION_KEY=", 30*time.Second)
	tokB, _ := b.stdout.waitFor(t, b.name, 0, "BATON_FENCING_TOKEN=", 30*time.Second)
	rev, _ := strconv.ParseInt(strings.TrimPrefix(tokB, "BATON_FENCING_TOKEN="), 10, 64)
	s, err := concurrency.NewSession(c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// B has recorded since when it leads once status shows it; then a new
	// proposal, then B resigns: the last two lines are known events.
	waitAcquired(t, c, strings.TrimPrefix(keyB, "BATON_ELECTION_KEY="))
	if err := concurrency.ResumeElection(s, "ho", strings.TrimPrefix(keyB, "BATON_ELECTION_KEY="), rev).Proclaim(ctxT(t, 10*time.Second), "new-value"); err != nil {
		t.Fatal(err)
	}
	text.stdout.waitFor(t, text.name, 0, `leader's new value: "new-value"`, 30*time.Second)
	js.stdout.waitFor(t, js.name, 0, `"change":"value"`, 30*time.Second)

	keys := []string{"", strings.TrimPrefix(keyA, "BATON_ELECTION_KEY="), strings.TrimPrefix(keyB, "BATON_ELECTION_KEY="), strings.TrimPrefix(keyB, "BATON_ELECTION_KEY=")}
	changes := []string{changeNone, changeLeader, changeLeader, changeValue}
	tl := strings.Split(text.stdout.text(), "\n")
	jl := strings.Split(js.stdout.text(), "\n")
	if len(tl) != len(keys) || len(jl) != len(keys) {
		t.Fatalf("text printed %d lines, JSON %d; want %d each:\n%s\n%s", len(tl), len(jl), len(keys), text.stdout.text(), js.stdout.text())
	}
	for i := range keys {
		var ev leaderLine
		if err := json.Unmarshal([]byte(jl[i]), &ev); err != nil {
			t.Fatal(err)
		}
		key := ""
		if ev.Leader != nil {
			key = ev.Leader.Key
		}
		if ev.Change != changes[i] || key != keys[i] || !strings.Contains(tl[i], keys[i]) {
			t.Errorf("line %d: text %q, JSON %q; want %q for key %q in both", i, tl[i], jl[i], changes[i], keys[i])
		}
	}
	b.signal(syscall.SIGINT)
}

// waitAcquired polls key until its baton identity has the time it was
// acquired.
func waitAcquired(t *testing.T, c *clientv3.Client, key string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := c.Get(ctxT(t, 10*time.Second), key)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Kvs) == 1 {
			if _, ok := heldSince(r.Kvs[0]); ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not record its acquisition within 30s", key)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// termScript is a CMD for --recampaign tests: it says so when the previous
// CMD of the same baton ($PIDF holds its pid) still runs as it starts,
// prints "start ID TOKEN KEY NANOS", and "stop ID TOKEN NANOS" on SIGTERM.
const termScript = `if [ -s "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null; then echo "overlap $ID"; fi; echo $$ > "$PIDF"
echo "start $ID $BATON_FENCING_TOKEN $BATON_ELECTION_KEY $(date +%s%N)"
trap 'echo "stop $ID $BATON_FENCING_TOKEN $(date +%s%N)"; exit 0' TERM
while :; do sleep 0.05; done`

// TestElectRecampaign: two batons with --recampaign; the leader loses four
// times in a row, by a deleted key and by a revoked lease in turn. Each
// loss stops its CMD, the other baton leads and runs CMD, and the loser
// campaigns again, so each runs CMD at least twice. The terms of one
// baton never overlap (each CMD checks that its predecessor is gone, and
// the stamps alternate), and the tokens grow from term to term.
func TestElectRecampaign(t *testing.T) {
	env, c := serverEnv(t)
	dir := t.TempDir()
	run := func(id string) *proc {
		return start(t, append(slices.Clone(env), "ID="+id, "PIDF="+dir+"/"+id), "elect", "--recampaign", "--note", id, "rc", "--", "sh", "-c", termScript)
	}
	a := run("A")
	_, nextA := a.stdout.waitFor(t, a.name, 0, "start A ", 30*time.Second)
	b := run("B")
	b.stderr.waitFor(t, b.name, 0, "waiting for leadership of rc", 30*time.Second)
	procs := map[string]*proc{"A": a, "B": b}
	next := map[string]int{"A": nextA, "B": 0}
	nextErr := map[string]int{"A": 0, "B": 0}
	leader, other := "A", "B"
	lastToken := int64(0)
	const losses = 4
	for i := range losses {
		lines := strings.Split(procs[leader].stdout.text(), "\n")
		f := strings.Fields(lines[next[leader]-1]) // start ID TOKEN KEY NANOS
		token, _ := strconv.ParseInt(f[2], 10, 64)
		if token <= lastToken {
			t.Errorf("term %d of %s has token %d after %d: tokens must grow", i, leader, token, lastToken)
		}
		lastToken = token
		if i%2 == 0 {
			if _, err := c.Delete(ctxT(t, 10*time.Second), f[3]); err != nil {
				t.Fatal(err)
			}
		} else if _, err := c.Revoke(ctxT(t, 10*time.Second), leaseOf(t, c, f[3])); err != nil {
			t.Fatal(err)
		}
		p := procs[leader]
		_, next[leader] = p.stdout.waitFor(t, p.name, next[leader], "stop "+leader+" "+f[2], 30*time.Second)
		_, nextErr[leader] = p.stderr.waitFor(t, p.name, nextErr[leader], "campaigning again", 30*time.Second)
		q := procs[other]
		_, next[other] = q.stdout.waitFor(t, q.name, next[other], "start "+other+" ", 30*time.Second)
		leader, other = other, leader
	}
	// The loser of the last round waits again.
	procs[other].stderr.waitFor(t, procs[other].name, nextErr[other], "waiting for leadership of rc", 30*time.Second)
	// The candidate that waits is interrupted (first: it would lead once
	// the leader resigns); the leader's CMD exits 0 on SIGTERM, which
	// baton passes on.
	procs[other].signal(syscall.SIGTERM)
	procs[other].waitCode(exitSignalBase+int(syscall.SIGTERM), 30*time.Second)
	procs[leader].signal(syscall.SIGTERM)
	procs[leader].waitCode(0, 30*time.Second)

	for id, p := range procs {
		out := p.stdout.text()
		if strings.Contains(out, "overlap") {
			t.Errorf("%s started a CMD while its previous one still ran:\n%s", id, out)
		}
		var starts int
		var lastStop int64
		for i, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			want := "start"
			if i%2 == 1 {
				want = "stop"
			}
			if len(f) < 3 || f[0] != want {
				t.Fatalf("%s: line %d is %q, want a %s line: its terms overlap:\n%s", id, i, l, want, out)
			}
			at, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
			if want == "start" {
				starts++
				if at <= lastStop {
					t.Errorf("%s: a term started at %d, before the previous one stopped at %d", id, at, lastStop)
				}
			} else {
				lastStop = at
			}
		}
		if starts < 2 {
			t.Errorf("%s ran CMD %d times, want at least 2:\n%s", id, starts, out)
		}
	}
}

// TestElectExitCodes: without --recampaign, CMD's code comes back (127
// for a missing CMD), a loss is 71 whether the key is deleted or the lease
// revoked, --timeout is 72 naming the leader, and an interrupt while
// waiting is 128+N. With --recampaign CMD's own exit still ends baton with
// its code.
func TestElectExitCodes(t *testing.T) {
	env, c := serverEnv(t)
	for _, args := range [][]string{
		{"elect", "codes", "--", "sh", "-c", "exit 3"},
		{"elect", "--recampaign", "codes", "--", "sh", "-c", "exit 3"},
	} {
		if code, _, stderr := runBaton(t, env, 30*time.Second, args...); code != 3 {
			t.Errorf("baton %s: exit %d, want 3; stderr:\n%s", strings.Join(args, " "), code, stderr)
		}
	}
	if code, _, stderr := runBaton(t, env, 30*time.Second, "elect", "codes", "--", "/nonexistent/cmd"); code != exitNotFound {
		t.Errorf("missing CMD: exit %d, want %d; stderr:\n%s", code, exitNotFound, stderr)
	}
	p := start(t, env, "elect", "--note", "revoked", "codes", "--", "sh", "-c", `echo "key $BATON_ELECTION_KEY"; exec sleep 100`)
	line, _ := p.stdout.waitFor(t, p.name, 0, "key ", 30*time.Second)
	key := strings.TrimPrefix(line, "key ")

	code, _, stderr := runBaton(t, env, 30*time.Second, "elect", "--timeout", "300ms", "codes", "--", "true")
	if code != exitTimeout || !strings.Contains(stderr, "timed out after 300ms waiting for leadership of codes: held by") || !strings.Contains(stderr, "(revoked)") {
		t.Errorf("--timeout: exit %d, want %d naming the leader; stderr:\n%s", code, exitTimeout, stderr)
	}
	w := start(t, env, "elect", "codes", "--", "true")
	w.stderr.waitFor(t, w.name, 0, "waiting for leadership of codes", 30*time.Second)
	w.signal(syscall.SIGINT)
	w.waitCode(exitSignalBase+int(syscall.SIGINT), 30*time.Second)

	if _, err := c.Revoke(ctxT(t, 10*time.Second), leaseOf(t, c, key)); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	p.waitCode(exitLost, 30*time.Second)
	if took := time.Since(revoked); took > 2*time.Second {
		t.Errorf("baton exited %v after the revoke, want promptly", took)
	}
	if s := p.stderr.text(); !strings.Contains(s, "leadership of codes lost") || strings.Contains(s, "campaigning again") {
		t.Errorf("stderr does not say leadership was lost, or campaigns again without --recampaign:\n%s", s)
	}
	// Nothing is left under the election once they have all exited.
	if r, err := c.Get(ctxT(t, 10*time.Second), "codes/", clientv3.WithPrefix()); err != nil || len(r.Kvs) != 0 {
		t.Errorf("keys left under codes/: %v (%v)", r.Kvs, err)
	}
}

// TestElectRecampaignInterrupted: a signal that comes while CMD is being
// stopped after a loss is passed on to CMD, as always, and ends baton
// (71) instead of a new campaign: it was meant to stop baton.
func TestElectRecampaignInterrupted(t *testing.T) {
	env, c := serverEnv(t)
	// CMD exits at the second SIGTERM: the first is baton's, on the loss.
	p := start(t, env, "elect", "--recampaign", "ri", "--", "sh", "-c",
		`n=0; trap 'n=$((n+1)); echo "term $n"; [ $n -ge 2 ] && exit 0' TERM; echo "key $BATON_ELECTION_KEY"; while :; do sleep 0.05; done`)
	line, next := p.stdout.waitFor(t, p.name, 0, "key ", 30*time.Second)
	if _, err := c.Delete(ctxT(t, 10*time.Second), strings.TrimPrefix(line, "key ")); err != nil {
		t.Fatal(err)
	}
	p.stdout.waitFor(t, p.name, next, "term 1", 30*time.Second)
	p.signal(syscall.SIGTERM)
	p.waitCode(exitLost, 30*time.Second)
	if s := p.stderr.text(); strings.Contains(s, "campaigning again") || strings.Contains(s, "waiting for") {
		t.Errorf("baton campaigned again after the signal:\n%s", s)
	}
}

// TestRenewDeadline: --lease-trust maps to a RenewDeadline the elector
// takes, at its edges too (1 is the TTL less 1ms); 1/3 and less are
// usage errors.
func TestRenewDeadline(t *testing.T) {
	srv := testutil.Server(t)
	c := testutil.Client(t, srv.Endpoints())
	for _, tc := range []struct {
		ttl   int
		trust float64
		want  time.Duration
	}{
		{10, 2.0 / 3, 6666666666},
		{10, 1, 10*time.Second - time.Millisecond},
		{2, 0.5, time.Second},
		{10, 0.34, 3400 * time.Millisecond},
		{10, 1.0 / 3, 0},
		{10, 0.1, 0},
	} {
		d, err := renewDeadline(tc.ttl, tc.trust)
		if tc.want == 0 {
			if exitCode(err) != exitUsage {
				t.Errorf("ttl %d, trust %v: %v, %v; want a usage error", tc.ttl, tc.trust, d, err)
			}
			continue
		}
		if err != nil || d != tc.want {
			t.Errorf("ttl %d, trust %v: %v, %v; want %v", tc.ttl, tc.trust, d, err, tc.want)
			continue
		}
		_, err = concurrency.NewLeaderElector(concurrency.LeaderElectionConfig{
			Client: c, Prefix: "rd", TTL: time.Duration(tc.ttl) * time.Second, RenewDeadline: d,
			Callbacks: concurrency.LeaderCallbacks{OnStartedLeading: func(context.Context, *concurrency.Leadership) {}},
		})
		if err != nil {
			t.Errorf("ttl %d, trust %v: the elector refuses RenewDeadline %v: %v", tc.ttl, tc.trust, d, err)
		}
	}
}
