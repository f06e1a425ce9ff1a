package concurrency_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/internal/testutil"
)

// testCtx bounds a whole test: a hang fails instead of stalling CI.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// env is one embedded server and a way to make clients on it.
type env struct {
	t   *testing.T
	eps []string
	ctx context.Context
}

func newEnv(t *testing.T) *env {
	t.Helper()
	s := testutil.Server(t)
	return &env{t: t, eps: s.Endpoints(), ctx: testCtx(t)}
}

func (e *env) client() *clientv3.Client {
	e.t.Helper()
	return testutil.Client(e.t, e.eps)
}

// session makes a session on a client of its own, as a separate process
// would have.
func (e *env) session(opts ...concurrency.SessionOption) *concurrency.Session {
	e.t.Helper()
	s, err := concurrency.NewSession(e.client(), opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { s.Close() })
	return s
}

// keys returns the keys under pfx + "/" in create order.
func (e *env) keys(pfx string) []string {
	e.t.Helper()
	c := e.client()
	r, err := c.Get(e.ctx, pfx+"/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		e.t.Fatal(err)
	}
	var ks []string
	for _, kv := range r.Kvs {
		ks = append(ks, string(kv.Key))
	}
	return ks
}

// waitKeys blocks until pfx has n keys, watching for changes rather than
// polling.
func waitKeys(t *testing.T, ctx context.Context, c *clientv3.Client, pfx string, n int) {
	t.Helper()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := c.Watch(wctx, pfx+"/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-wch
	for {
		r, err := c.Get(ctx, pfx+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if r.Count == int64(n) {
			return
		}
		select {
		case _, ok := <-wch:
			if !ok {
				t.Fatalf("waiting for %d keys under %s: %v", n, pfx, ctx.Err())
			}
		case <-ctx.Done():
			t.Fatalf("waiting for %d keys under %s: %v (have %d)", n, pfx, ctx.Err(), r.Count)
		}
	}
}

// lockAsync starts m.Lock in a goroutine and returns its result channel.
func lockAsync(ctx context.Context, m *concurrency.Mutex) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- m.Lock(ctx) }()
	return ch
}

// mustNotReturn checks that ch has not delivered yet.
func mustNotReturn(t *testing.T, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s returned early: %v", what, err)
	default:
	}
}

// recv waits for ch with a generous liveness bound.
func recv(t *testing.T, ch <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not return", what)
		return nil
	}
}
