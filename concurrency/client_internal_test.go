package concurrency

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/internal/testutil"
)

func TestNewClientRefusesBadSilenceLimit(t *testing.T) {
	c, err := NewClient(clientv3.Config{Endpoints: []string{"127.0.0.1:1"}}, WithSilenceLimit(10*time.Millisecond))
	if !errors.Is(err, ErrInvalidClientOption) || c != nil {
		t.Fatalf("NewClient(WithSilenceLimit(10ms)) = %v, %v; want nil, ErrInvalidClientOption", c, err)
	}
}

// failoverOf is c's prober.
func failoverOf(t *testing.T, c *clientv3.Client) *failover {
	v, ok := failovers.Load(c)
	if !ok {
		t.Fatal("client not made by NewClient")
	}
	return v.(*failover)
}

// waitHeard waits until c's probes have had an answer from ep.
func waitHeard(t *testing.T, f *failover, ep string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		f.mu.Lock()
		_, ok := f.heard[ep]
		f.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no probe of %s answered in 30 s", ep)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A waiter whose watch and keep-alives sit on a connection that falls
// silent (the member stops answering but keeps its TCP connection open, as
// a SIGSTOPped process does) gets its turn through the other endpoint once
// NewClient's probes cut that connection. The control, a client of
// clientv3.New, waits for as long as the silence lasts.
func TestNewClientMovesWaiterOffSilentConnection(t *testing.T) {
	srv := testutil.Server(t)
	for _, tc := range []struct {
		name     string
		failover bool
	}{{"NewClient", true}, {"clientv3.New", false}} {
		t.Run(tc.name, func(t *testing.T) {
			p1, ep1 := testutil.Proxy(t, srv.Endpoints()[0])
			_, ep2 := testutil.Proxy(t, srv.Endpoints()[0])
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			pfx := "/client-test/" + tc.name

			a := testutil.Client(t, srv.Endpoints())
			sa, err := NewSession(a)
			if err != nil {
				t.Fatal(err)
			}
			defer sa.Close()
			ma := NewMutex(sa, pfx)
			if err := ma.Lock(ctx); err != nil {
				t.Fatal(err)
			}

			// The waiter dials ep1 alone, so that its watch and its
			// keep-alive stream are on ep1's connection; ep2 comes after.
			cfg := clientv3.Config{Endpoints: []string{ep1}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
			var b *clientv3.Client
			if tc.failover {
				b, err = NewClient(cfg)
			} else {
				b, err = clientv3.New(cfg)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			sb, err := NewSession(b)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				p1.UnpauseTx()
				p1.UnpauseRx()
				sb.Close()
			}()
			mb := NewMutex(sb, pfx)
			locked := make(chan error, 1)
			go func() { locked <- mb.Lock(ctx) }()
			waitKeys(t, a, pfx, 2)
			b.SetEndpoints(ep1, ep2)
			if tc.failover {
				waitHeard(t, failoverOf(t, b), ep2)
			}

			p1.PauseTx()
			p1.PauseRx()
			if err := ma.Unlock(ctx); err != nil {
				t.Fatal(err)
			}
			if !tc.failover {
				// The control: its watch hangs on the silent
				// connection. Four silence limits is long enough to
				// show it would not have moved.
				select {
				case err := <-locked:
					t.Fatalf("Lock on clientv3.New returned %v while its connection was silent; the test no longer tells the two apart", err)
				case <-time.After(4 * defaultSilenceLimit):
				}
				p1.UnpauseTx()
				p1.UnpauseRx()
			}
			select {
			case err := <-locked:
				if err != nil {
					t.Fatalf("Lock: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the waiter did not get the lock within 30 s of the release")
			}
			if tc.failover {
				f := failoverOf(t, b)
				f.mu.Lock()
				cuts := f.cuts
				f.mu.Unlock()
				if cuts == 0 {
					t.Fatal("the lock came, but no connection was cut: the waiter was not on the silent one")
				}
			}
			if err := mb.Unlock(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A client with one endpoint has nowhere to move: its probes never cut.
func TestNewClientAloneNeverCuts(t *testing.T) {
	srv := testutil.Server(t)
	p, ep := testutil.Proxy(t, srv.Endpoints()[0])
	c, err := NewClient(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f := failoverOf(t, c)
	waitHeard(t, f, ep)
	if _, err := c.Get(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
	p.PauseTx()
	p.PauseRx()
	deadline := time.Now().Add(30 * time.Second)
	for {
		f.mu.Lock()
		quiet := f.quiet
		f.mu.Unlock()
		if quiet >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the probes saw no silence in 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.UnpauseTx()
	p.UnpauseRx()
	f.mu.Lock()
	cuts := f.cuts
	f.mu.Unlock()
	if cuts != 0 {
		t.Fatalf("a client alone cut %d connections", cuts)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Get(ctx, "x"); err != nil {
		t.Fatalf("Get after the silence: %v", err)
	}
}

// waitKeys waits until n keys are under pfx.
func waitKeys(t *testing.T, c *clientv3.Client, pfx string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get(context.Background(), pfx, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err == nil && resp.Count == int64(n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d keys under %s did not appear in 30 s (err %v)", n, pfx, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A member that refuses requests on a connection whose header compression
// went out of step (RST_STREAM PROTOCOL_ERROR) gets that connection closed
// and the failure reported as Unavailable; the next request dials anew.
// Other errors pass as they are and close nothing.
func TestNewClientClosesRefusingConnection(t *testing.T) {
	srv := testutil.Server(t)
	c, err := NewClient(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := failoverOf(t, c)
	// The peer of a real request on the client's connection.
	var real peer.Peer
	if _, err := pb.NewKVClient(c.ActiveConnection()).Range(ctx, &pb.RangeRequest{Key: []byte("x")}, grpc.Peer(&real)); err != nil {
		t.Fatal(err)
	}
	conns := func() (n int) {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, cs := range f.conns {
			n += len(cs)
		}
		return n
	}
	if conns() != 1 {
		t.Fatalf("%d tracked connections, want 1", conns())
	}
	// invoker fails with err, as a request on the real connection would.
	invoker := func(err error) grpc.UnaryInvoker {
		return func(_ context.Context, _ string, _, _ any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
			for _, o := range opts {
				if po, ok := o.(grpc.PeerCallOption); ok {
					*po.PeerAddr = real
				}
			}
			return err
		}
	}
	other := status.Error(codes.Internal, "some other internal error")
	if err := f.unary(ctx, "/etcdserverpb.KV/Range", nil, nil, nil, invoker(other)); err != other {
		t.Fatalf("another error came back as %v", err)
	}
	if conns() != 1 {
		t.Fatal("another error closed the connection")
	}
	refused := status.Error(codes.Internal, "stream terminated by RST_STREAM with error code: PROTOCOL_ERROR")
	err = f.unary(ctx, "/etcdserverpb.KV/Range", nil, nil, nil, invoker(refused))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "PROTOCOL_ERROR") {
		t.Fatalf("refused request: %v; want Unavailable, with the cause", err)
	}
	f.mu.Lock()
	cuts, broke := f.cuts, f.broke
	f.mu.Unlock()
	if cuts != 1 || broke != 1 {
		t.Fatalf("%d connections closed for %d refusals; want 1 and 1", cuts, broke)
	}
	// The client dials again and goes on.
	if _, err := c.Get(ctx, "x"); err != nil {
		t.Fatalf("Get after the close: %v", err)
	}
	if conns() != 1 {
		t.Fatalf("%d tracked connections after the redial, want 1", conns())
	}
}
