package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/internal/testutil"
)

// serverEnv starts an embedded etcd for the test and returns the
// environment that points baton at it, and a client.
func serverEnv(t *testing.T) ([]string, *clientv3.Client) {
	t.Helper()
	srv := testutil.Server(t)
	return testEnv("BATON_ENDPOINTS=" + strings.Join(srv.Endpoints(), ",")), testutil.Client(t, srv.Endpoints())
}

// TestLockChildrenNeverOverlap runs two baton lock loops at once whose
// children log start and stop to one file: the intervals must not
// overlap, and the fencing tokens must grow.
func TestLockChildrenNeverOverlap(t *testing.T) {
	env, _ := serverEnv(t)
	log := filepath.Join(t.TempDir(), "log")
	const workers, rounds = 2, 3
	script := `echo "start $W $BATON_FENCING_TOKEN $(date +%s%N)" >> "$LOG"; sleep 0.2; echo "stop $W $BATON_FENCING_TOKEN $(date +%s%N)" >> "$LOG"`
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				p := start(t, slices.Concat(env, []string{fmt.Sprintf("W=%d", w), "LOG=" + log}), "lock", "excl", "--", "sh", "-c", script)
				if code := p.wait(60 * time.Second); code != 0 {
					t.Errorf("worker %d: exit %d; stderr:\n%s", w, code, p.stderr.text())
					return
				}
			}
		}()
	}
	wg.Wait()
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	entries := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(entries) != 2*workers*rounds {
		t.Fatalf("%d log lines, want %d:\n%s", len(entries), 2*workers*rounds, b)
	}
	var lastStop, lastToken int64
	for i := 0; i < len(entries); i += 2 {
		s, e := strings.Fields(entries[i]), strings.Fields(entries[i+1])
		if s[0] != "start" || e[0] != "stop" || s[1] != e[1] || s[2] != e[2] {
			t.Fatalf("children overlap at lines %d-%d:\n%s", i+1, i+2, b)
		}
		token, _ := strconv.ParseInt(s[2], 10, 64)
		begin, _ := strconv.ParseInt(s[3], 10, 64)
		end, _ := strconv.ParseInt(e[3], 10, 64)
		if token <= lastToken {
			t.Errorf("token %d after token %d: tokens must grow", token, lastToken)
		}
		if begin < lastStop || end < begin {
			t.Errorf("interval %d..%d overlaps the previous one, which stopped at %d", begin, end, lastStop)
		}
		lastStop, lastToken = end, token
	}
}

// TestLockInterruptWaiterThenHolder: SIGINT to a waiter makes it give up
// without running CMD; SIGINT to the holder reaches its CMD, the lock is
// released, and the next waiter gets it with a higher token. The waiters'
// progress lines name the holder.
func TestLockInterruptWaiterThenHolder(t *testing.T) {
	env, _ := serverEnv(t)
	holder := start(t, env, "lock", "--note", "first", "q", "--", "sh", "-c", `echo "held $BATON_FENCING_TOKEN"; exec sleep 100`)
	line, _ := holder.stdout.waitFor(t, holder.name, 0, "held ", 30*time.Second)
	holderToken, err := strconv.ParseInt(strings.TrimPrefix(line, "held "), 10, 64)
	if err != nil {
		t.Fatal(err)
	}

	w1 := start(t, env, "lock", "q", "--", "sh", "-c", "echo w1 ran")
	progress, _ := w1.stderr.waitFor(t, w1.name, 0, "waiting for lock q", 30*time.Second)
	want := fmt.Sprintf("pid %d (first)", holder.pid())
	if !strings.Contains(progress, want) || !strings.Contains(progress, "waited") {
		t.Errorf("progress line %q does not name the holder (%q) and the wait", progress, want)
	}
	w2 := start(t, env, "lock", "q", "--", "sh", "-c", `echo "w2 $BATON_FENCING_TOKEN"`)
	w2.stderr.waitFor(t, w2.name, 0, "waiting for lock q", 30*time.Second)

	w1.signal(syscall.SIGINT)
	w1.waitCode(exitSignalBase+int(syscall.SIGINT), 30*time.Second)
	if strings.Contains(w1.stdout.text(), "w1 ran") {
		t.Error("the interrupted waiter ran its command")
	}
	if !strings.Contains(w1.stderr.text(), "interrupted") {
		t.Errorf("waiter's stderr does not say it was interrupted:\n%s", w1.stderr.text())
	}

	holder.signal(syscall.SIGINT)
	// sleep dies of the forwarded SIGINT, and baton passes that on.
	holder.waitCode(exitSignalBase+int(syscall.SIGINT), 30*time.Second)
	line, _ = w2.stdout.waitFor(t, w2.name, 0, "w2 ", 30*time.Second)
	w2Token, err := strconv.ParseInt(strings.TrimPrefix(line, "w2 "), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if w2Token <= holderToken {
		t.Errorf("next holder's token %d, want > %d", w2Token, holderToken)
	}
	w2.waitCode(0, 30*time.Second)
}

// TestLockExitCodes: CMD's exit code comes back; a missing CMD is 127.
func TestLockExitCodes(t *testing.T) {
	env, _ := serverEnv(t)
	code, _, stderr := runBaton(t, env, 30*time.Second, "lock", "codes", "--", "sh", "-c", "exit 3")
	if code != 3 {
		t.Errorf("exit %d, want 3; stderr:\n%s", code, stderr)
	}
	code, _, stderr = runBaton(t, env, 30*time.Second, "lock", "codes", "--", "/nonexistent/cmd")
	if code != exitNotFound || !strings.Contains(stderr, "/nonexistent/cmd") {
		t.Errorf("exit %d, want %d naming the command; stderr:\n%s", code, exitNotFound, stderr)
	}
	code, stdout, _ := runBaton(t, env, 30*time.Second, "lock", "codes", "--", "sh", "-c",
		`echo "$BATON_LOCK_KEY $ETCD_LOCK_KEY $BATON_FENCING_TOKEN $ETCD_LOCK_REV"`)
	f := strings.Fields(stdout)
	if code != 0 || len(f) != 4 || !strings.HasPrefix(f[0], "codes/") || f[0] != f[1] {
		t.Fatalf("exit %d, environment %q: want BATON_LOCK_KEY = ETCD_LOCK_KEY = codes/<lease>", code, stdout)
	}
	// The token is the key's create revision; ETCD_LOCK_REV, as
	// etcdctl's, the revision at acquisition, which is not earlier.
	token, _ := strconv.ParseInt(f[2], 10, 64)
	rev, _ := strconv.ParseInt(f[3], 10, 64)
	if token <= 0 || rev < token {
		t.Errorf("BATON_FENCING_TOKEN %d, ETCD_LOCK_REV %d: want a token and a revision at least as high", token, rev)
	}
}

// leaseOf reads the lease of key.
func leaseOf(t *testing.T, c *clientv3.Client, key string) clientv3.LeaseID {
	t.Helper()
	r, err := c.Get(ctxT(t, 10*time.Second), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 1 || r.Kvs[0].Lease == 0 {
		t.Fatalf("key %q: %v, want one key on a lease", key, r.Kvs)
	}
	return clientv3.LeaseID(r.Kvs[0].Lease)
}

// TestLockLossKillsChild: the holder's lease is revoked from outside; the
// child is stopped within a second and baton exits 71, saying why.
func TestLockLossKillsChild(t *testing.T) {
	env, c := serverEnv(t)
	p := start(t, env, "lock", "lossy", "--", "sh", "-c", `echo "running $BATON_LOCK_KEY"; exec sleep 100`)
	line, _ := p.stdout.waitFor(t, p.name, 0, "running ", 30*time.Second)
	lease := leaseOf(t, c, strings.TrimPrefix(line, "running "))
	if _, err := c.Revoke(ctxT(t, 10*time.Second), lease); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	code := p.wait(30 * time.Second)
	if took := time.Since(revoked); took > time.Second {
		t.Errorf("baton exited %v after the revoke, want within a second", took)
	}
	if code != exitLost {
		t.Errorf("exit %d, want %d", code, exitLost)
	}
	stderr := p.stderr.text()
	if !strings.Contains(stderr, "lock lossy lost") || !strings.Contains(stderr, "SIGTERM") {
		t.Errorf("stderr does not say the lock was lost and the child stopped:\n%s", stderr)
	}
}

// TestLockLossKillGrace: a child that ignores SIGTERM gets SIGKILL after
// --kill-grace.
func TestLockLossKillGrace(t *testing.T) {
	env, c := serverEnv(t)
	p := start(t, env, "lock", "--kill-grace", "300ms", "stubborn", "--", "sh", "-c",
		`trap "" TERM; echo "running $BATON_LOCK_KEY"; while :; do sleep 0.05; done`)
	line, _ := p.stdout.waitFor(t, p.name, 0, "running ", 30*time.Second)
	if _, err := c.Delete(ctxT(t, 10*time.Second), strings.TrimPrefix(line, "running ")); err != nil {
		t.Fatal(err)
	}
	p.waitCode(exitLost, 30*time.Second)
	if stderr := p.stderr.text(); !strings.Contains(stderr, "SIGKILL") || !strings.Contains(stderr, "killed by SIGKILL") {
		t.Errorf("stderr does not report the SIGKILL:\n%s", stderr)
	}
}

// TestLockTry: --try on a held lock exits 75 at once, naming the holder;
// without CMD, lock prints key and token and holds until SIGINT, after
// which --try succeeds.
func TestLockTry(t *testing.T) {
	env, c := serverEnv(t)
	holder := start(t, env, "lock", "--note", "keeper", "t")
	keyLine, next := holder.stdout.waitFor(t, holder.name, 0, "BATON_LOCK_KEY=t/", 30*time.Second)
	tokenLine, _ := holder.stdout.waitFor(t, holder.name, next, "BATON_FENCING_TOKEN=", 30*time.Second)
	key := strings.TrimPrefix(keyLine, "BATON_LOCK_KEY=")
	r, err := c.Get(ctxT(t, 10*time.Second), key)
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("key %s: %v %v", key, r, err)
	}
	if want := "BATON_FENCING_TOKEN=" + strconv.FormatInt(r.Kvs[0].CreateRevision, 10); tokenLine != want {
		t.Errorf("token line %q, want %q", tokenLine, want)
	}

	code, stdout, stderr := runBaton(t, env, 30*time.Second, "lock", "--try", "t", "--", "echo", "ran")
	if code != exitHeld {
		t.Errorf("--try on a held lock: exit %d, want %d; stderr:\n%s", code, exitHeld, stderr)
	}
	if strings.Contains(stdout, "ran") {
		t.Error("--try ran the command on a held lock")
	}
	if want := fmt.Sprintf("pid %d (keeper)", holder.pid()); !strings.Contains(stderr, want) {
		t.Errorf("--try's error does not name the holder %q:\n%s", want, stderr)
	}

	holder.signal(syscall.SIGINT)
	holder.waitCode(0, 30*time.Second)
	code, stdout, stderr = runBaton(t, env, 30*time.Second, "lock", "--try", "t", "--", "echo", "ran")
	if code != 0 || strings.TrimSpace(stdout) != "ran" {
		t.Errorf("--try on a free lock: exit %d, stdout %q, stderr:\n%s", code, stdout, stderr)
	}
}

// TestLockTimeout: --timeout gives up with exit 72 and removes the
// waiter's key.
func TestLockTimeout(t *testing.T) {
	env, c := serverEnv(t)
	holder := start(t, env, "lock", "slow")
	holder.stdout.waitFor(t, holder.name, 0, "BATON_FENCING_TOKEN=", 30*time.Second)
	code, _, stderr := runBaton(t, env, 30*time.Second, "lock", "--timeout", "500ms", "slow", "--", "true")
	if code != exitTimeout || !strings.Contains(stderr, "timed out") {
		t.Errorf("exit %d, want %d with \"timed out\"; stderr:\n%s", code, exitTimeout, stderr)
	}
	r, err := c.Get(ctxT(t, 10*time.Second), "slow/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if r.Count != 1 {
		t.Errorf("%d keys under slow/ after the timeout, want only the holder's", r.Count)
	}
}
