package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batonhq/baton/embedded"
	"github.com/batonhq/baton/internal/testutil"
)

// TestFlagErrorsNameTheFix: a duration without a unit and a malformed
// endpoint are one line that says what to type, before any dial; a bare
// number is seconds, as etcdctl's --ttl.
func TestFlagErrorsNameTheFix(t *testing.T) {
	ports, err := embedded.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	closed := fmt.Sprintf("127.0.0.1:%d", ports[0])
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"lock", "--ttl", "5x", "n"}, exitUsage, "use a duration such as 10s"},
		{[]string{"elect", "--timeout", "soon", "n"}, exitUsage, "use a duration such as 10s"},
		{[]string{"lock", "--ttl", "-5", "n"}, exitUsage, "--ttl must be at least 1s, got -5s"},
		{[]string{"--endpoints", "http//127.0.0.1:2379", "lock", "n"}, exitUsage, `--endpoints: "http//127.0.0.1:2379" is not host:port or http(s)://host:port (did you mean http://127.0.0.1:2379?)`},
		{[]string{"--endpoints", "htp://127.0.0.1:2379", "status"}, exitUsage, `unknown scheme "htp" (did you mean http://127.0.0.1:2379`},
		{[]string{"--endpoints", "127.0.0.1", "lock", "n"}, exitUsage, "no port"},
		// Parsed fine: the closed endpoint is what fails.
		{[]string{"--endpoints", closed, "--dial-timeout", "1", "lock", "--ttl", "5", "n"}, exitUnavailable, "connection refused"},
	} {
		begin := time.Now()
		code, _, stderr := inProcess(tc.args...)
		first, _, _ := strings.Cut(stderr, "\n")
		if code != tc.code || !strings.Contains(first, tc.says) || strings.Contains(first, "CMD's own flags") {
			t.Errorf("baton %s: exit %d, %q; want exit %d and a line with %q", strings.Join(tc.args, " "), code, first, tc.code, tc.says)
		}
		if took := time.Since(begin); tc.code == exitUsage && took > time.Second {
			t.Errorf("baton %s took %v: a usage error must come before any dial", strings.Join(tc.args, " "), took)
		}
	}
	t.Setenv("BATON_ENDPOINTS", "")
	code, _, stderr := inProcessEnv(map[string]string{"BATON_ENDPOINTS": "http//127.0.0.1:2379"}, "lock", "n")
	if code != exitUsage || !strings.HasPrefix(stderr, "baton: $BATON_ENDPOINTS: ") {
		t.Errorf("bad $BATON_ENDPOINTS: exit %d, %q; want the variable named", code, stderr)
	}
}

func inProcessEnv(env map[string]string, args ...string) (code int, stdout, stderr string) {
	r := startInProcess(env, false, args...)
	code = <-r.code
	return code, r.out.String(), r.err.String()
}

// TestServeStartErrors: a port in use and a data dir that is a file are
// one line naming the flag, without etcd's log.
func TestServeStartErrors(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	ports, err := embedded.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	busy := "http://" + taken.Addr().String()
	free := func(i int) string { return fmt.Sprintf("http://127.0.0.1:%d", ports[i]) }
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"--listen-client-urls", free(0), "--listen-peer-urls", busy}, "is already in use (another etcd or baton serve?): give another port with --listen-peer-urls"},
		{[]string{"--listen-client-urls", busy, "--listen-peer-urls", free(1)}, "give another port with --listen-client-urls"},
		{[]string{"--listen-client-urls", free(0), "--listen-peer-urls", free(1), "--data-dir", file}, "is a file, not a directory: give another --data-dir"},
	} {
		args := append([]string{"serve", "--data-dir", filepath.Join(t.TempDir(), "d")}, tc.args...)
		code, _, stderr := runBaton(t, testEnv(), 60*time.Second, args...)
		if code != exitUsage || !strings.Contains(stderr, tc.says) || strings.Contains(stderr, "{") || strings.Count(stderr, "\n") > 3 {
			t.Errorf("baton %s: exit %d, want %d with %q and no etcd log; stderr:\n%s", strings.Join(args, " "), code, exitUsage, tc.says, stderr)
		}
	}
}

// TestAuthWithoutUser: etcd with authentication on and no --user: the
// line says which flag to give.
func TestAuthWithoutUser(t *testing.T) {
	srv := testutil.Server(t)
	c := testutil.Client(t, srv.Endpoints())
	ctx := ctxT(t, 30*time.Second)
	if _, err := c.RoleAdd(ctx, "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UserAdd(ctx, "root", "rootpw"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	env := testEnv("BATON_ENDPOINTS=" + strings.Join(srv.Endpoints(), ","))
	code, stdout, stderr := runBaton(t, env, 60*time.Second, "lock", "n", "--", "echo", "ran")
	if code != exitDenied || strings.Contains(stdout, "ran") || !strings.Contains(stderr, "give --user NAME:PASSWORD") || strings.Contains(stderr, "\n") {
		t.Errorf("exit %d, want %d with one line suggesting --user; stderr:\n%s", code, exitDenied, stderr)
	}
	code, _, stderr = runBaton(t, env, 60*time.Second, "--user", "root:rootpw", "lock", "n", "--", "true")
	if code != 0 {
		t.Errorf("with --user: exit %d; stderr:\n%s", code, stderr)
	}
}

// TestWaiterServerGone: a waiter whose only server stops says the server
// is unreachable (exit 69), not "session is expired".
func TestWaiterServerGone(t *testing.T) {
	srv := testutil.Server(t)
	env := testEnv("BATON_ENDPOINTS=" + strings.Join(srv.Endpoints(), ","))
	holder := start(t, env, "lock", "gone")
	holder.stdout.waitFor(t, holder.name, 0, "BATON_FENCING_TOKEN=", 30*time.Second)
	waiter := start(t, env, "--dial-timeout", "1s", "lock", "--ttl", "2s", "gone", "--", "echo", "ran")
	waiter.stderr.waitFor(t, waiter.name, 0, "waiting for lock gone", 30*time.Second)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	waiter.waitCode(exitUnavailable, 60*time.Second)
	if s := waiter.stderr.text(); !strings.Contains(s, "cannot reach etcd") || !strings.Contains(s, "is the server down?") || strings.Contains(s, "session is expired") {
		t.Errorf("waiter's stderr does not say the server is unreachable:\n%s", s)
	}
	// The holder, without CMD, gives up the lock it can no longer trust.
	holder.waitCode(exitLost, 60*time.Second)
	if s := holder.stderr.text(); !strings.Contains(s, "no keepalive answered for") {
		t.Errorf("holder's stderr does not say why it gave up:\n%s", s)
	}
}

// TestNestedNamesWarn: lock and elect warn when NAME and another name in
// use nest, since etcd's layout makes "a" wait for "a/b".
func TestNestedNamesWarn(t *testing.T) {
	env, _ := serverEnv(t)
	inner := start(t, env, "lock", "a/b")
	inner.stdout.waitFor(t, inner.name, 0, "BATON_FENCING_TOKEN=", 30*time.Second)
	const warning = `baton: warning: names "a" and "a/b" nest`
	code, stdout, stderr := runBaton(t, env, 30*time.Second, "lock", "--try", "a", "--", "echo", "ran")
	if code != exitHeld || strings.Contains(stdout, "ran") || !strings.Contains(stderr, warning) {
		t.Errorf("lock --try a while a/b is held: exit %d, want %d with %q; stderr:\n%s", code, exitHeld, warning, stderr)
	}
	code, _, stderr = runBaton(t, env, 30*time.Second, "elect", "--timeout", "200ms", "a", "--", "true")
	if code != exitTimeout || !strings.Contains(stderr, warning) {
		t.Errorf("elect a while a/b is held: exit %d, want %d with %q; stderr:\n%s", code, exitTimeout, warning, stderr)
	}
	outer := start(t, env, "lock", "p")
	outer.stdout.waitFor(t, outer.name, 0, "BATON_FENCING_TOKEN=", 30*time.Second)
	code, _, stderr = runBaton(t, env, 30*time.Second, "lock", "p/q", "--", "true")
	if code != 0 || !strings.Contains(stderr, `names "p" and "p/q" nest`) {
		t.Errorf("lock p/q while p is held: exit %d, want 0 with a warning; stderr:\n%s", code, stderr)
	}
	code, _, stderr = runBaton(t, env, 30*time.Second, "lock", "pq", "--", "true")
	if code != 0 || strings.Contains(stderr, "warning") {
		t.Errorf("lock pq while p is held: exit %d, want 0 and no warning; stderr:\n%s", code, stderr)
	}
}
