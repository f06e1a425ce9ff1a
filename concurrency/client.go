package concurrency

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// A member that stops without closing its connections (SIGSTOP, a frozen
// VM, a network that drops packets) is the fault etcd's client handles
// worst. Its TCP connections stay open, so gRPC keeps them "ready": the
// balancer goes on sending a share of new requests there, and every
// request and watch already on them hangs until the member comes back.
// gRPC's own keepalive could notice, but it refuses to ping more often
// than every 10 s, and removing the member from the client's endpoints
// closes its connection gracefully, which waits for those same requests.
//
// NewClient's remedy: probe every member on a connection of its own, and
// when one stays silent for the silence limit while another answers, close
// the client's connections to it at once. Requests on them fail with
// Unavailable (etcd's client repeats the reads; this package repeats its
// joins and releases), watches resume on a live member from where they
// were, and the lease keep-alives move too. gRPC then dials the member
// again; the new connection stays "connecting", so it gets no requests,
// until the member answers its handshake.
//
// A connection can also break without going quiet. When a fault loses
// bytes inside the stream (etcd's test proxy does, on a blackhole), the two
// ends' HTTP/2 header compression tables stop agreeing: the member then
// refuses every new request on that connection with RST_STREAM
// PROTOCOL_ERROR, while the connection and its pings stay up, so gRPC
// never replaces it. NewClient closes such a connection as soon as a
// request on it fails that way, and reports the failure as Unavailable.
// The member resets a stream whose headers it cannot decode before it runs
// the request, so the request can be sent again, as etcd's client does
// for reads and this package for its own requests; a user's write is left
// to the user, as any Unavailable is.

// Defaults of NewClient.
const (
	defaultSilenceLimit = time.Second
	minSilenceLimit     = 100 * time.Millisecond
)

// ErrInvalidClientOption is returned by NewClient for an option out of its
// range.
var ErrInvalidClientOption = errors.New("concurrency: invalid client option")

// A ClientOption configures NewClient.
type ClientOption func(*clientOptions)

type clientOptions struct {
	limit time.Duration
	err   error
}

// WithSilenceLimit sets how long a member may leave a probe unanswered,
// while another member answers, before the client's connections to it are
// closed (default 1 s, at least 100 ms). Probes are sent every quarter of
// the limit. A limit shorter than the cluster's slowest honest answer cuts
// healthy connections: requests on them are retried, but user requests
// whose outcome is unknown (a Guard's, a Txn's) fail with Unavailable.
func WithSilenceLimit(d time.Duration) ClientOption {
	return func(o *clientOptions) {
		if d < minSilenceLimit {
			o.err = errors.Join(o.err, fmt.Errorf("%w: silence limit %v is below %v", ErrInvalidClientOption, d, minSilenceLimit))
			return
		}
		o.limit = d
	}
}

// NewClient is clientv3.New with what this package needs of a client to
// recover from a member that stops answering: see WithSilenceLimit. Any
// client works with the package; on one made by clientv3.New, a member
// that is paused (SIGSTOP) or cut off without a reset stalls the requests
// and watches that the balancer put on it for as long as the fault lasts,
// as it does etcd's own package.
//
// NewClient sets a context dialer of its own, after cfg.DialOptions, so a
// dialer given there is not used; it adds a unary and a stream interceptor
// after any given there. A cfg.DialKeepAliveTime of 0 is set to 10 s with
// a 3 s timeout, so that a connection the probes cannot see (a member
// removed from the endpoints) is still found dead in the end.
//
// The probes stop when the client closes.
func NewClient(cfg clientv3.Config, opts ...ClientOption) (*clientv3.Client, error) {
	o := clientOptions{limit: defaultSilenceLimit}
	for _, opt := range opts {
		opt(&o)
	}
	if o.err != nil {
		return nil, o.err
	}
	f := &failover{
		limit: o.limit,
		conns: make(map[string]map[*trackedConn]struct{}),
		heard: make(map[string]time.Time),
		termc: make(chan struct{}),
	}
	cfg.DialOptions = append(append([]grpc.DialOption(nil), cfg.DialOptions...),
		grpc.WithContextDialer(f.dial),
		grpc.WithChainUnaryInterceptor(f.unary),
		grpc.WithChainStreamInterceptor(f.stream))
	if cfg.DialKeepAliveTime == 0 {
		cfg.DialKeepAliveTime, cfg.DialKeepAliveTimeout = 10*time.Second, 3*time.Second
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.TLS != nil {
		f.tls = credentials.NewTLS(cfg.TLS.Clone())
	}
	failovers.Store(c, f)
	go f.run(c)
	return c, nil
}

// failover is NewClient's prober and the registry of the client's
// connections, by dialled address.
type failover struct {
	limit time.Duration
	tls   credentials.TransportCredentials

	mu    sync.Mutex
	conns map[string]map[*trackedConn]struct{}
	heard map[string]time.Time // endpoint → when its probe was last answered
	cuts  int                  // connections closed, for tests
	broke int                  // requests refused on a broken connection, for tests
	quiet int                  // probes that got no answer, for tests
	term  uint64               // the highest raft term a probe saw with a leader
	termc chan struct{}        // closed when a probe sees a leader of a newer term
}

// failovers maps the clients made by NewClient to their prober.
var failovers sync.Map // *clientv3.Client → *failover

// newTerm returns a channel that closes when one of c's probes sees a
// leader elected in a term newer than any seen before, or nil for a client
// not made by NewClient. A request stuck at the time of an election was
// likely sent to the old leader, or forwarded to it, and is lost: its
// attempt is given up then (repeated), rather than at its deadline.
func newTerm(c *clientv3.Client) <-chan struct{} {
	v, ok := failovers.Load(c)
	if !ok {
		return nil
	}
	f := v.(*failover)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.termc
}

// sawLeader records a probe's answer: a leader, in term.
func (f *failover) sawLeader(leader, term uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if leader == 0 || term <= f.term {
		return
	}
	if f.term != 0 {
		close(f.termc)
		f.termc = make(chan struct{})
	}
	f.term = term
}

// trackedConn is one of the client's connections. answered is set once
// the member has sent anything on it: only such a connection is closed
// when the member falls silent. A connection still waiting for the
// member's handshake is left to complete it when the member comes back.
type trackedConn struct {
	net.Conn
	f        *failover
	addr     string
	answered atomic.Bool
	forget   sync.Once
}

func (c *trackedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && !c.answered.Load() {
		c.answered.Store(true)
	}
	return n, err
}

func (c *trackedConn) Close() error {
	c.forget.Do(func() { c.f.remove(c) })
	return c.Conn.Close()
}

// dialAddr is how etcd's client dials an address from its resolver: a
// "unix:" address is a socket path, anything else host:port over TCP.
func dialAddr(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		return d.DialContext(ctx, "unix", strings.TrimPrefix(p, "//"))
	}
	return d.DialContext(ctx, "tcp", addr)
}

func (f *failover) dial(ctx context.Context, addr string) (net.Conn, error) {
	conn, err := dialAddr(ctx, addr)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: conn, f: f, addr: addr}
	f.mu.Lock()
	if f.conns[addr] == nil {
		f.conns[addr] = make(map[*trackedConn]struct{})
	}
	f.conns[addr][tc] = struct{}{}
	f.mu.Unlock()
	return tc, nil
}

func (f *failover) remove(c *trackedConn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns[c.addr], c)
	if len(f.conns[c.addr]) == 0 {
		delete(f.conns, c.addr)
	}
}

// cut closes the client's answered connections to addr, and returns how
// many it closed.
func (f *failover) cut(addr string) int {
	f.mu.Lock()
	var cs []*trackedConn
	for c := range f.conns[addr] {
		if c.answered.Load() {
			cs = append(cs, c)
		}
	}
	f.cuts += len(cs)
	f.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
	return len(cs)
}

// refusedConn reports whether err is a member refusing a request because
// the connection's header compression is out of step (see the top of this
// file).
func refusedConn(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.Internal &&
		(strings.Contains(st.Message(), "RST_STREAM with error code: PROTOCOL_ERROR") ||
			strings.Contains(st.Message(), "RST_STREAM with error code: COMPRESSION_ERROR"))
}

// broken closes the connection that p names when err says the member
// refused the request on it (refusedConn), and returns the error to
// report: Unavailable then, err otherwise.
func (f *failover) broken(err error, p *peer.Peer) error {
	if !refusedConn(err) || p.Addr == nil || p.LocalAddr == nil {
		return err
	}
	remote, local := p.Addr.String(), p.LocalAddr.String()
	f.mu.Lock()
	var cs []*trackedConn
	for _, conns := range f.conns {
		for c := range conns {
			if c.RemoteAddr().String() == remote && c.LocalAddr().String() == local {
				cs = append(cs, c)
			}
		}
	}
	f.cuts += len(cs)
	f.broke++
	f.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
	return status.Errorf(codes.Unavailable, "concurrency: connection to %s closed, the member refused a request on it: %v", remote, status.Convert(err).Message())
}

// unary is NewClient's interceptor of unary requests (broken).
func (f *failover) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var p peer.Peer
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Peer(&p))...)
	return f.broken(err, &p)
}

// stream is NewClient's interceptor of streams (watches, keep-alives):
// a refusal comes with the stream's first answer.
func (f *failover) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	p := new(peer.Peer)
	s, err := streamer(ctx, desc, cc, method, append(opts, grpc.Peer(p))...)
	if err != nil {
		return nil, f.broken(err, p)
	}
	return &checkedStream{ClientStream: s, f: f, p: p}, nil
}

// checkedStream is a stream whose failures go through broken. The peer is
// known once the stream has ended, which a failed RecvMsg means.
type checkedStream struct {
	grpc.ClientStream
	f *failover
	p *peer.Peer
}

func (s *checkedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err == nil || err == io.EOF {
		return err
	}
	return s.f.broken(err, s.p)
}

// endpointAddr is the address etcd's client dials for endpoint ep.
func endpointAddr(ep string) string {
	scheme, rest, ok := strings.Cut(ep, "://")
	switch {
	case !ok:
		return ep
	case scheme == "unix" || scheme == "unixs":
		return "unix:" + rest
	case scheme == "http" || scheme == "https":
		host, _, _ := strings.Cut(rest, "/")
		return host
	}
	return ep
}

// run probes the client's endpoints until it closes, following changes
// of the endpoint list (SetEndpoints, Sync).
func (f *failover) run(c *clientv3.Client) {
	ctx := c.Ctx()
	probes := make(map[string]context.CancelFunc)
	var wg sync.WaitGroup
	defer func() {
		failovers.Delete(c)
		for _, stop := range probes {
			stop()
		}
		wg.Wait()
	}()
	tick := time.NewTicker(f.limit)
	defer tick.Stop()
	for {
		want := make(map[string]bool)
		for _, ep := range c.Endpoints() {
			want[ep] = true
			if probes[ep] == nil {
				pctx, stop := context.WithCancel(ctx)
				probes[ep] = stop
				wg.Add(1)
				go func() {
					defer wg.Done()
					f.probe(pctx, ep)
				}()
			}
		}
		for ep, stop := range probes {
			if !want[ep] {
				stop()
				delete(probes, ep)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// probe asks ep for its status every quarter of the silence limit, on a
// connection of its own, until ctx ends. Any answer, an error included,
// shows the member alive; only a probe that gets no answer within the
// limit counts as silence.
func (f *failover) probe(ctx context.Context, ep string) {
	addr := endpointAddr(ep)
	creds := insecure.NewCredentials()
	if f.tls != nil && !strings.HasPrefix(ep, "http://") && !strings.HasPrefix(ep, "unix://") {
		creds = f.tls
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds), grpc.WithContextDialer(dialAddr))
	if err != nil {
		return
	}
	defer conn.Close()
	m := pb.NewMaintenanceClient(conn)
	every := f.limit / 4
	for {
		sent := time.Now()
		pctx, cancel := context.WithTimeout(ctx, f.limit)
		st, err := m.Status(pctx, &pb.StatusRequest{})
		cancel()
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		if status.Code(err) == codes.DeadlineExceeded {
			f.mu.Lock()
			f.quiet++
			f.mu.Unlock()
			if f.othersHeard(ep, sent) {
				f.cut(addr)
			}
		} else {
			f.mu.Lock()
			f.heard[ep] = now
			f.mu.Unlock()
			if err == nil {
				f.sawLeader(st.Leader, st.RaftTerm)
			}
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// othersHeard reports whether a member other than ep answered a probe
// after since, while ep was silent. When none did, the silence is not
// ep's alone: this process is starved of CPU, its network is down, or all
// members are. Cutting then would only add reconnections to the fault, and
// a reconnection whose handshake is lost waits for gRPC's connect timeout
// (20 s) before it tries again.
func (f *failover) othersHeard(ep string, since time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for other, at := range f.heard {
		if other != ep && at.After(since) {
			return true
		}
	}
	return false
}
