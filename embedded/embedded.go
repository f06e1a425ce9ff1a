// Package embedded runs a real etcd server inside the current process.
//
// It is what baton's tests, its benchmark and "baton serve" run on: a single
// node or a small cluster of members on loopback ports, with fsync on unless
// asked otherwise. It is not a substitute for an operated etcd cluster: when
// one machine is not enough, run etcd and point baton's clients at it.
//
// Library packages of baton never import this package; it pulls in etcd's
// server.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Errors returned by this package.
var (
	// ErrStartTimeout is returned when a member does not become ready in time.
	ErrStartTimeout = errors.New("embedded: etcd did not become ready in time")
	// ErrStopped is returned by operations on a member that is not running.
	ErrStopped = errors.New("embedded: member is not running")
	// ErrRunning is returned by Restart on a member that is running.
	ErrRunning = errors.New("embedded: member is already running")
)

// Config describes one member. The zero value is a single node with a
// temporary data directory and free loopback ports.
type Config struct {
	// Name of the member. Default "default", as etcd.
	Name string
	// Dir is the data directory. Empty means a new temporary directory,
	// removed by Close. A directory given here is never removed.
	Dir string
	// ListenClientURLs and AdvertiseClientURLs are the client URLs. Empty
	// means one free loopback port, listened on and advertised.
	ListenClientURLs    []string
	AdvertiseClientURLs []string
	// ListenPeerURLs and AdvertisePeerURLs are the peer URLs. Empty means
	// one free loopback port.
	ListenPeerURLs    []string
	AdvertisePeerURLs []string
	// InitialCluster is etcd's --initial-cluster. Empty means this member
	// alone.
	InitialCluster string
	// InitialClusterState is "new" (the default) or "existing".
	InitialClusterState string
	// InitialClusterToken is etcd's --initial-cluster-token. Default
	// "baton-cluster".
	InitialClusterToken string
	// NoFsync turns fsync off. Default false: every write is durable, as in
	// production, which is what the benchmark measures.
	NoFsync bool
	// LogLevel is etcd's log level. Default "error".
	LogLevel string
	// HeartbeatMs and ElectionMs are etcd's raft timing. Defaults 100 and
	// 1000, as etcd.
	HeartbeatMs, ElectionMs uint
	// MaxTxnOps is etcd's --max-txn-ops. Default 128, as etcd.
	MaxTxnOps uint
	// StartTimeout bounds how long Start waits for the member to be ready.
	// Default 30 s (a cluster member waits for its peers).
	StartTimeout time.Duration
	// ClientTLS and PeerTLS serve client and peer traffic over TLS (use
	// https:// URLs with them). The zero value means plain TCP.
	ClientTLS, PeerTLS TLS
	// QuietStart drops etcd's log entries until the member is ready: the
	// error Start returns says what failed, and a command line tool
	// prints that one line instead of etcd's JSON and stack traces.
	QuietStart bool
	// LogOutputs are where etcd logs: "stderr", "stdout" or file paths
	// (appended to; a member restarted goes on in the same file). Default
	// stderr. Tests send them to a file of their own: see
	// internal/testutil.LogOutputs.
	LogOutputs []string
}

// TLS is the certificate setup of one side (clients or peers), with etcd's
// meaning: --cert-file, --key-file, --trusted-ca-file, --client-cert-auth.
type TLS struct {
	CertFile, KeyFile, TrustedCAFile string
	ClientCertAuth                   bool
}

func (t TLS) empty() bool { return t == TLS{} }

// Server is one running (or stopped) embedded etcd member.
type Server struct {
	stopping atomic.Bool // set while Stop or Close shuts etcd down
	mu       sync.Mutex
	cfg      Config
	tempDir  bool
	etcd     *embed.Etcd
	closeLog func() // releases the log outputs of the running etcd
}

// FreePorts returns n distinct free TCP ports on 127.0.0.1. A port is free
// when asked; another process may take it before it is used.
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("embedded: find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func loopbackURL(port int) string { return fmt.Sprintf("http://127.0.0.1:%d", port) }

// fill resolves defaults, picking ports and a temp dir where needed.
func (c *Config) fill() (tempDir bool, err error) {
	if c.Name == "" {
		c.Name = "default"
	}
	if c.Dir == "" {
		d, err := os.MkdirTemp("", "baton-etcd-")
		if err != nil {
			return false, fmt.Errorf("embedded: %w", err)
		}
		c.Dir = d
		tempDir = true
	}
	need := 0
	if len(c.ListenClientURLs) == 0 {
		need++
	}
	if len(c.ListenPeerURLs) == 0 {
		need++
	}
	ports, err := FreePorts(need)
	if err != nil {
		return tempDir, err
	}
	if len(c.ListenClientURLs) == 0 {
		c.ListenClientURLs = []string{loopbackURL(ports[0])}
		ports = ports[1:]
	}
	if len(c.ListenPeerURLs) == 0 {
		c.ListenPeerURLs = []string{loopbackURL(ports[0])}
	}
	if len(c.AdvertiseClientURLs) == 0 {
		c.AdvertiseClientURLs = c.ListenClientURLs
	}
	if len(c.AdvertisePeerURLs) == 0 {
		c.AdvertisePeerURLs = c.ListenPeerURLs
	}
	if c.InitialCluster == "" {
		c.InitialCluster = c.Name + "=" + strings.Join(c.AdvertisePeerURLs, ",")
	}
	if c.InitialClusterState == "" {
		c.InitialClusterState = embed.ClusterStateFlagNew
	}
	if c.InitialClusterToken == "" {
		c.InitialClusterToken = "baton-cluster"
	}
	if c.LogLevel == "" {
		c.LogLevel = "error"
	}
	if c.HeartbeatMs == 0 {
		c.HeartbeatMs = 100
	}
	if c.ElectionMs == 0 {
		c.ElectionMs = 1000
	}
	if c.MaxTxnOps == 0 {
		c.MaxTxnOps = embed.DefaultMaxTxnOps
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 30 * time.Second
	}
	return tempDir, nil
}

func parseURLs(ss []string) ([]url.URL, error) {
	out := make([]url.URL, 0, len(ss))
	for _, s := range ss {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("embedded: bad URL %q: %w", s, err)
		}
		out = append(out, *u)
	}
	return out, nil
}

func (c *Config) etcdConfig() (*embed.Config, error) {
	ec := embed.NewConfig()
	ec.Name = c.Name
	ec.Dir = c.Dir
	var err error
	if ec.ListenClientUrls, err = parseURLs(c.ListenClientURLs); err != nil {
		return nil, err
	}
	if ec.AdvertiseClientUrls, err = parseURLs(c.AdvertiseClientURLs); err != nil {
		return nil, err
	}
	if ec.ListenPeerUrls, err = parseURLs(c.ListenPeerURLs); err != nil {
		return nil, err
	}
	if ec.AdvertisePeerUrls, err = parseURLs(c.AdvertisePeerURLs); err != nil {
		return nil, err
	}
	ec.InitialCluster = c.InitialCluster
	ec.ClusterState = c.InitialClusterState
	ec.InitialClusterToken = c.InitialClusterToken
	ec.UnsafeNoFsync = c.NoFsync
	ec.LogLevel = c.LogLevel
	ec.LogOutputs = []string{"stderr"}
	if len(c.LogOutputs) > 0 {
		ec.LogOutputs = c.LogOutputs
	}
	if !c.ClientTLS.empty() {
		ec.ClientTLSInfo.CertFile = c.ClientTLS.CertFile
		ec.ClientTLSInfo.KeyFile = c.ClientTLS.KeyFile
		ec.ClientTLSInfo.TrustedCAFile = c.ClientTLS.TrustedCAFile
		ec.ClientTLSInfo.ClientCertAuth = c.ClientTLS.ClientCertAuth
	}
	if !c.PeerTLS.empty() {
		ec.PeerTLSInfo.CertFile = c.PeerTLS.CertFile
		ec.PeerTLSInfo.KeyFile = c.PeerTLS.KeyFile
		ec.PeerTLSInfo.TrustedCAFile = c.PeerTLS.TrustedCAFile
		ec.PeerTLSInfo.ClientCertAuth = c.PeerTLS.ClientCertAuth
	}
	ec.TickMs = c.HeartbeatMs
	ec.ElectionMs = c.ElectionMs
	ec.MaxTxnOps = c.MaxTxnOps
	// No metrics or gateway listeners: tests run many servers at once.
	ec.EnableGRPCGateway = false
	return ec, nil
}

// Start starts a member and waits until it serves clients. For a member of a
// cluster whose peers are not up yet, use StartCluster or start the members
// concurrently.
func Start(cfg Config) (*Server, error) { return StartContext(context.Background(), cfg) }

// StartContext is Start, given up when ctx ends: the member is stopped
// and the error is ctx's (errors.Is(err, ctx.Err())).
func StartContext(ctx context.Context, cfg Config) (*Server, error) {
	tempDir, err := cfg.fill()
	if err != nil {
		if tempDir {
			os.RemoveAll(cfg.Dir)
		}
		return nil, err
	}
	s := &Server{cfg: cfg, tempDir: tempDir}
	if err := s.start(ctx); err != nil {
		if tempDir {
			os.RemoveAll(cfg.Dir)
		}
		return nil, err
	}
	return s, nil
}

func (s *Server) start(ctx context.Context) error {
	ec, err := s.cfg.etcdConfig()
	if err != nil {
		return err
	}
	s.stopping.Store(false)
	var quiet atomic.Bool
	quiet.Store(s.cfg.QuietStart)
	defer quiet.Store(false)
	lg, closeLog, err := newLogger(s.cfg.LogLevel, ec.LogOutputs, &s.stopping, &quiet)
	if err != nil {
		return fmt.Errorf("embedded: logger: %w", err)
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	e, err := embed.StartEtcd(ec)
	if err != nil {
		closeLog()
		return fmt.Errorf("embedded: start %s: %w", s.cfg.Name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		closeLog()
		return fmt.Errorf("embedded: start %s: %w", s.cfg.Name, err)
	case <-ctx.Done():
		e.Server.Stop()
		e.Close()
		closeLog()
		return fmt.Errorf("embedded: start %s: %w", s.cfg.Name, ctx.Err())
	case <-time.After(s.cfg.StartTimeout):
		e.Server.Stop()
		e.Close()
		closeLog()
		return fmt.Errorf("%w: %s after %v", ErrStartTimeout, s.cfg.Name, s.cfg.StartTimeout)
	}
	s.etcd, s.closeLog = e, closeLog
	return nil
}

// shut stops the running etcd and releases its log outputs. s.mu is held.
func (s *Server) shut() {
	s.stopping.Store(true)
	s.etcd.Close()
	s.etcd = nil
	if s.closeLog != nil {
		s.closeLog()
		s.closeLog = nil
	}
}

// Name is the member's name.
func (s *Server) Name() string { return s.cfg.Name }

// Dir is the member's data directory.
func (s *Server) Dir() string { return s.cfg.Dir }

// Endpoints returns the client URLs that clients should dial.
func (s *Server) Endpoints() []string {
	return append([]string(nil), s.cfg.AdvertiseClientURLs...)
}

// PeerURLs returns the advertised peer URLs.
func (s *Server) PeerURLs() []string {
	return append([]string(nil), s.cfg.AdvertisePeerURLs...)
}

// Running reports whether the member is serving.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etcd != nil
}

// Etcd returns the underlying embedded etcd, or nil when stopped. It is for
// tests that need the server's internals, such as its raft status.
func (s *Server) Etcd() *embed.Etcd {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etcd
}

// Err returns a channel that receives fatal errors of the running server.
// It returns nil when the member is stopped.
func (s *Server) Err() <-chan error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd == nil {
		return nil
	}
	return s.etcd.Err()
}

// Stop stops the member and keeps its data, so that Restart brings it back
// with its state. Clients connected to it see their connections drop.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd == nil {
		return ErrStopped
	}
	s.shut()
	return nil
}

// Restart starts a stopped member again on the same ports and data.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd != nil {
		return ErrRunning
	}
	return s.start(context.Background())
}

// Close stops the member if it runs and removes its data directory if Start
// created it. It is safe to call more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd != nil {
		s.shut()
	}
	if s.tempDir {
		s.tempDir = false
		return os.RemoveAll(s.cfg.Dir)
	}
	return nil
}
