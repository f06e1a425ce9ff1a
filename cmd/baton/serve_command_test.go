package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batonhq/baton/embedded"
	"github.com/batonhq/baton/internal/testutil"
)

// TestServeCluster: three baton serve processes with etcd's cluster flags
// form a 3-member cluster; lock works through it, and keeps working after
// one member is killed.
func TestServeCluster(t *testing.T) {
	ports, err := embedded.FreePorts(6)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"a", "b", "c"}
	url := func(p int) string { return fmt.Sprintf("http://127.0.0.1:%d", p) }
	var initial, clients []string
	for i, n := range names {
		initial = append(initial, n+"="+url(ports[2*i+1]))
		clients = append(clients, url(ports[2*i]))
	}
	dir := t.TempDir()
	env := testEnv()
	members := make([]*proc, len(names))
	for i, n := range names {
		members[i] = start(t, env, "serve", "--name", n, "--data-dir", filepath.Join(dir, n),
			"--listen-client-urls", clients[i], "--listen-peer-urls", url(ports[2*i+1]),
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", "cli-test")
	}
	for i, m := range members {
		m.stdout.waitFor(t, m.name, 0, "is ready", 60*time.Second)
		m.stdout.waitFor(t, m.name, 0, "clients: "+clients[i], time.Second)
	}
	eps := "--endpoints=" + strings.Join(clients, ",")
	code, stdout, stderr := runBaton(t, env, 60*time.Second, eps, "lock", "c", "--", "echo", "one")
	if code != 0 || strings.TrimSpace(stdout) != "one" {
		t.Fatalf("lock on the cluster: exit %d, stdout %q\n%s", code, stdout, stderr)
	}
	members[0].cmd.Process.Kill()
	members[0].wait(30 * time.Second)
	code, stdout, stderr = runBaton(t, env, 60*time.Second, eps, "lock", "c", "--", "echo", "two")
	if code != 0 || strings.TrimSpace(stdout) != "two" {
		t.Fatalf("lock with a member down: exit %d, stdout %q\n%s", code, stdout, stderr)
	}
	for _, m := range members[1:] {
		m.signal(syscall.SIGTERM)
		m.waitCode(0, 30*time.Second)
		m.stderr.waitFor(t, m.name, 0, "stopped", time.Second)
	}
}

// TestServeKeepsData: a key written to baton serve is still there after
// it is stopped with SIGINT and started again on the same data dir.
func TestServeKeepsData(t *testing.T) {
	ports, err := embedded.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	args := []string{"serve", "--data-dir", filepath.Join(t.TempDir(), "data"),
		"--listen-client-urls", client, "--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", ports[1])}
	srv := start(t, testEnv(), args...)
	srv.stdout.waitFor(t, srv.name, 0, "is ready", 60*time.Second)
	c := testutil.Client(t, []string{client})
	if _, err := c.Put(ctxT(t, 10*time.Second), "kept", "yes"); err != nil {
		t.Fatal(err)
	}
	srv.signal(syscall.SIGINT)
	srv.waitCode(0, 30*time.Second)

	srv = start(t, testEnv(), args...)
	srv.stdout.waitFor(t, srv.name, 0, "is ready", 60*time.Second)
	r, err := c.Get(ctxT(t, 30*time.Second), "kept")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "yes" {
		t.Fatalf("after a restart: %v %v, want kept=yes", r, err)
	}
	srv.signal(syscall.SIGTERM)
	srv.waitCode(0, 30*time.Second)
}
