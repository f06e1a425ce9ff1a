package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/internal/testutil"
)

// These tests run the real etcdctl 3.7.3 next to baton. It is built from
// the module that tools/etcdctl pins (make etcdctl, which make test runs,
// and passes as $BATON_ETCDCTL), or here on first use.

var (
	etcdctlOnce sync.Once
	etcdctlPath string
	etcdctlErr  error
)

// etcdctl returns the path of a real etcdctl. Without one it skips the
// test, except in CI (env CI set), where it fails.
func etcdctl(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("BATON_ETCDCTL"); p != "" {
		return p
	}
	etcdctlOnce.Do(func() {
		etcdctlPath = filepath.Join(binDir, "etcdctl")
		cmd := exec.Command(goCommand(), "build", "-o", etcdctlPath, "go.etcd.io/etcd/etcdctl/v3")
		cmd.Dir = filepath.Join("..", "..", "tools", "etcdctl")
		if out, err := cmd.CombinedOutput(); err != nil {
			etcdctlErr = fmt.Errorf("building etcdctl in tools/etcdctl: %v\n%s", err, out)
		}
	})
	if etcdctlErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(etcdctlErr)
		}
		t.Skip(etcdctlErr)
	}
	return etcdctlPath
}

// waitKeys polls until count keys exist under prefix: the test's way to
// know that a waiter has queued. Polling, bounded, since a waiter says
// nothing when it queues.
func waitKeys(t *testing.T, c *clientv3.Client, prefix string, count int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := c.Get(ctxT(t, 10*time.Second), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if r.Count == count {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d keys under %s after 30s, want %d", r.Count, prefix, count)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestMixedFleetLockRev: five etcdctl and five baton holders queue on one
// lock, alternately, behind a gate; each CMD records ETCD_LOCK_REV. In
// acquisition order the values increase strictly, whichever tool held.
// Issue 14: baton set the key's create revision, so a baton holder after
// an etcdctl one saw a lower number ("2,13,14,15,16,7,8,...").
func TestMixedFleetLockRev(t *testing.T) {
	ctl := etcdctl(t)
	srv := testutil.Server(t)
	c := testutil.Client(t, srv.Endpoints())
	eps := strings.Join(srv.Endpoints(), ",")
	log := filepath.Join(t.TempDir(), "log")
	env := testEnv("BATON_ENDPOINTS="+eps, "LOG="+log)
	const script = `echo "$KIND $ETCD_LOCK_REV" >> "$LOG"`

	gate := start(t, env, "lock", "mix")
	gate.stdout.waitFor(t, gate.name, 0, "BATON_FENCING_TOKEN=", 30*time.Second)
	const holders = 10
	var procs []*proc
	for i := range holders {
		if i%2 == 0 {
			procs = append(procs, startExe(t, ctl, append(env, "KIND=etcdctl"), "--endpoints="+eps, "lock", "mix", "--", "sh", "-c", script))
		} else {
			procs = append(procs, start(t, append(env, "KIND=baton"), "lock", "mix", "--", "sh", "-c", script))
		}
		waitKeys(t, c, "mix/", int64(i+2)) // queued in this order
	}
	gate.signal(syscall.SIGINT)
	gate.waitCode(0, 30*time.Second)
	for _, p := range procs {
		p.waitCode(0, 60*time.Second)
	}

	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	entries := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(entries) != holders {
		t.Fatalf("%d entries, want %d:\n%s", len(entries), holders, b)
	}
	var last int64
	var revs []string
	for i, e := range entries {
		f := strings.Fields(e)
		want := "baton"
		if i%2 == 0 {
			want = "etcdctl"
		}
		if len(f) != 2 || f[0] != want {
			t.Fatalf("entry %d is %q, want %s's (the queue's order):\n%s", i, e, want, b)
		}
		rev, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || rev <= last {
			t.Errorf("entry %d: ETCD_LOCK_REV %q after %d: want strictly increasing values:\n%s", i, f[1], last, b)
		}
		last = rev
		revs = append(revs, f[1])
	}
	t.Logf("ETCD_LOCK_REV in acquisition order: %s", strings.Join(revs, ","))
}

// TestElectWithEtcdctl: etcdctl elect and baton elect share elections:
// each waits for the other's leader, sees its proposal, and takes over
// when it resigns; etcdctl elect -l shows baton's leader.
func TestElectWithEtcdctl(t *testing.T) {
	ctl := etcdctl(t)
	srv := testutil.Server(t)
	eps := strings.Join(srv.Endpoints(), ",")
	env := testEnv("BATON_ENDPOINTS=" + eps)

	// etcdctl leads; baton waits, names it, and leads once it resigns.
	first := startExe(t, ctl, env, "--endpoints="+eps, "elect", "el", "from-etcdctl")
	first.stdout.waitFor(t, first.name, 0, "from-etcdctl", 30*time.Second)
	second := start(t, env, "elect", "el", "from-baton", "--", "sh", "-c", `echo "led $BATON_PROPOSAL"; exec sleep 100`)
	line, _ := second.stderr.waitFor(t, second.name, 0, "waiting for leadership of el", 30*time.Second)
	if !strings.Contains(line, `"from-etcdctl"`) {
		t.Errorf("baton's progress %q does not name etcdctl's proposal", line)
	}
	listen := startExe(t, ctl, env, "--endpoints="+eps, "elect", "-l", "el")
	listen.stdout.waitFor(t, listen.name, 0, "from-etcdctl", 30*time.Second)
	if strings.Contains(second.stdout.text(), "led") {
		t.Fatal("baton led while etcdctl did")
	}
	first.signal(syscall.SIGINT) // etcdctl resigns
	first.waitCode(0, 30*time.Second)
	second.stdout.waitFor(t, second.name, 0, "led from-baton", 30*time.Second)
	listen.stdout.waitFor(t, listen.name, 0, "from-baton", 30*time.Second)

	// baton leads; etcdctl waits and leads once baton resigns.
	third := startExe(t, ctl, env, "--endpoints="+eps, "elect", "el", "third")
	waitKeys(t, testutil.Client(t, srv.Endpoints()), "el/", 2)
	if strings.Contains(third.stdout.text(), "third") {
		t.Fatal("etcdctl led while baton did")
	}
	second.signal(syscall.SIGTERM) // to CMD; baton resigns when it exits
	second.waitCode(exitSignalBase+int(syscall.SIGTERM), 30*time.Second)
	third.stdout.waitFor(t, third.name, 0, "third", 30*time.Second)
	listen.stdout.waitFor(t, listen.name, 0, "third", 30*time.Second)
	third.signal(syscall.SIGINT)
	third.waitCode(0, 30*time.Second)
	listen.signal(syscall.SIGINT)
	listen.waitCode(0, 30*time.Second)
}
