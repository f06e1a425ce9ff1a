package embedded

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The same settings as internal/testutil, which imports this package
	// and so cannot be imported here.
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
	)
}

func newClient(t *testing.T, eps []string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestSingleStartsFastAndKeepsDataAcrossRestart(t *testing.T) {
	t0 := time.Now()
	s, err := Start(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Liveness bound from the issue: a node starts in under 2 s. The race
	// detector slows everything, so allow it a generous margin.
	if d := time.Since(t0); d > 10*time.Second {
		t.Fatalf("start took %v", d)
	}
	t.Logf("single node ready in %v", time.Since(t0))
	if !s.Running() || s.Name() == "" {
		t.Fatalf("started: Running %v, Name %q", s.Running(), s.Name())
	}
	if fi, err := os.Stat(filepath.Join(s.Dir(), "member")); err != nil || !fi.IsDir() {
		t.Fatalf("Dir %q holds no member directory: %v", s.Dir(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := newClient(t, s.Endpoints())
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != ErrStopped {
		t.Fatalf("second Stop: %v, want ErrStopped", err)
	}
	if s.Running() {
		t.Fatal("Running after Stop")
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(); err != ErrRunning {
		t.Fatalf("second Restart: %v, want ErrRunning", err)
	}
	r, err := c.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: %v", r.Kvs)
	}
}

func TestClusterSurvivesLeaderKill(t *testing.T) {
	cl, err := StartCluster(3, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newClient(t, cl.Endpoints())
	if _, err := c.Put(ctx, "a", "1"); err != nil {
		t.Fatal(err)
	}
	lead := cl.Leader()
	if lead < 0 {
		t.Fatal("no leader")
	}
	if err := cl.Members[lead].Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "a", "2"); err != nil {
		t.Fatalf("put with leader down: %v", err)
	}
	if err := cl.Members[lead].Restart(); err != nil {
		t.Fatal(err)
	}
	only := newClient(t, cl.Members[lead].Endpoints())
	r, err := only.Get(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Kvs[0].Value) != "2" {
		t.Fatalf("restarted member reads %q", r.Kvs[0].Value)
	}
}

func TestStartClusterRejectsZero(t *testing.T) {
	if _, err := StartCluster(0, Config{}); err == nil {
		t.Fatal("want error")
	}
}
