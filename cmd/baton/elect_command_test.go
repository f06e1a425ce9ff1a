package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/concurrency"
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
