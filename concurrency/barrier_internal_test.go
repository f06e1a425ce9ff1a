package concurrency

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/internal/testutil"
)

// etcd #16156/#16223 family: etcd's Wait took a watch that ended (here: it
// could not resume after a reconnect because the revisions it had to
// resume from were compacted) for a release. Ours reports the compaction,
// and the barrier is still held. This test is internal only to learn the
// moment Wait's watch is in place.
func TestBarrierWaitCompactedIsError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := testutil.Server(t)
	p := startProxy(t, srv.Endpoints()[0])
	admin := testutil.Client(t, srv.Endpoints())
	b := NewBarrier(admin, "compacted")
	if err := b.Hold(ctx); err != nil {
		t.Fatal(err)
	}
	waiter := testutil.Client(t, []string{p.endpoint()})
	watching := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- NewBarrier(waiter, "compacted").wait(ctx, func(ev string) {
			if ev == "watching" {
				close(watching)
			}
		})
	}()
	select {
	case <-watching:
	case err := <-errc:
		t.Fatalf("Wait returned before watching: %v", err)
	}

	// Cut the waiter off, move the revision on and compact it away.
	p.cut()
	var rev int64
	for range 3 {
		r, err := admin.Put(ctx, "compacted-other", "x")
		if err != nil {
			t.Fatal(err)
		}
		rev = r.Header.Revision
	}
	if _, err := admin.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	p.restore()
	select {
	case err := <-errc:
		if !errors.Is(err, rpctypes.ErrCompacted) {
			t.Fatalf("Wait: %v, want an error wrapping ErrCompacted", err)
		}
	case <-ctx.Done():
		t.Fatal("Wait whose watch was compacted did not return")
	}
	if err := b.TryWait(ctx); !errors.Is(err, ErrBarrierHeld) {
		t.Fatalf("barrier after the failed Wait: %v, want still held", err)
	}
}

// proxy is a loopback TCP proxy in front of one etcd endpoint that can
// cut its clients off and let them back.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	cutOff bool
	wg     sync.WaitGroup
}

func startProxy(t *testing.T, endpoint string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: strings.TrimPrefix(endpoint, "http://"), conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.closeAll()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) endpoint() string { return "http://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cutOff {
			p.mu.Unlock()
			in.Close()
			continue
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			in.Close()
			continue
		}
		p.conns[in], p.conns[out] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(in, out)
		go p.pipe(out, in)
	}
}

func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
}

func (p *proxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// cut closes every connection and refuses new ones until restore.
func (p *proxy) cut() {
	p.mu.Lock()
	p.cutOff = true
	p.mu.Unlock()
	p.closeAll()
}

func (p *proxy) restore() {
	p.mu.Lock()
	p.cutOff = false
	p.mu.Unlock()
}

// A Wait whose member loses its raft leader rides out the election: the
// member cancels the watch (it requires a leader), Wait watches again from
// where it stopped, and it returns nil for the release made once a leader
// is back, not before. etcd's recipe returned nil as soon as the watch
// ended (#16156), and ours used to return the "no leader" error.
func TestBarrierWaitRidesOutLeaderLoss(t *testing.T) {
	stretchLeaderWait(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := testutil.Cluster(t)
	holder := NewBarrier(testutil.Client(t, cl.Endpoints()), "leaderless")
	if err := holder.Hold(ctx); err != nil {
		t.Fatal(err)
	}
	events := make(chan string, 8)
	errc := make(chan error, 1)
	waiter := testutil.Client(t, cl.Members[1].Endpoints())
	go func() {
		errc <- NewBarrier(waiter, "leaderless").wait(ctx, func(ev string) { events <- ev })
	}()
	next := func(want string) {
		t.Helper()
		select {
		case ev := <-events:
			if ev != want {
				t.Fatalf("Wait traced %q, want %q", ev, want)
			}
		case err := <-errc:
			t.Fatalf("Wait returned %v before %q", err, want)
		case <-ctx.Done():
			t.Fatalf("no %q from Wait", want)
		}
	}
	next("watching")
	// Member 1 alone has no leader: after a few election timeouts it
	// cancels the watches that require one.
	for _, i := range []int{0, 2} {
		if err := cl.Members[i].Stop(); err != nil {
			t.Fatal(err)
		}
	}
	next("rewatch")
	if err := cl.Members[0].Restart(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		t.Fatalf("Wait returned %v while the barrier is held", err)
	default:
	}
	for {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		err := holder.Release(rctx)
		rcancel()
		if err == nil {
			break
		}
		if !transient(err) || ctx.Err() != nil {
			t.Fatalf("Release: %v", err)
		}
	}
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Wait across the leader loss: %v, want nil after the release", err)
		}
	case <-ctx.Done():
		t.Fatal("Wait did not return after the release")
	}
}
