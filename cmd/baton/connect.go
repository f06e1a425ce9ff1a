package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
	"go.uber.org/zap"

	"github.com/batonhq/baton/concurrency"
)

// connect dials etcd and checks, within --dial-timeout, that at least one
// endpoint answers: clientv3.New alone succeeds on an unreachable server
// and the first request would hang instead. With --prefix, every key the
// returned client reads or writes is under the prefix.
//
// The client lives until Close, not until ctx ends: a command that is
// interrupted still has to release what it holds.
func (a *app) connect(ctx context.Context) (*clientv3.Client, error) {
	if a.dialTimeout <= 0 {
		return nil, usageErrorf("--dial-timeout must be > 0, got %v", a.dialTimeout)
	}
	eps, source := a.endpointsAndSource()
	if err := checkEndpoints(eps, source); err != nil {
		return nil, err
	}
	tlsCfg, err := a.tlsConfig()
	if err != nil {
		return nil, err
	}
	user, password, err := a.credentials()
	if err != nil {
		return nil, err
	}
	// NewClient: a member that stops answering (paused, cut off
	// without a reset) loses its share of requests within a second.
	c, err := concurrency.NewClient(clientv3.Config{
		Endpoints:   eps,
		DialTimeout: a.askTimeout(),
		TLS:         tlsCfg,
		Username:    user,
		Password:    password,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		// With a user, New authenticates at once, bounded by the dial
		// timeout: an unreachable server shows up here.
		if isDenied(err) {
			return nil, fmt.Errorf("authentication failed for user %q: %w", user, err)
		}
		return nil, a.unreachable(eps, tlsCfg, err)
	}
	if err := a.reach(ctx, c, eps, tlsCfg); err != nil {
		c.Close()
		return nil, err
	}
	if a.prefix != "" {
		c.KV = namespace.NewKV(c.KV, a.prefix)
		c.Watcher = namespace.NewWatcher(c.Watcher, a.prefix)
		c.Lease = namespace.NewLease(c.Lease, a.prefix)
	}
	return c, nil
}

// reach asks every endpoint for its status at once and returns when one
// answers, or with an error naming them all after the dial timeout.
func (a *app) reach(ctx context.Context, c *clientv3.Client, eps []string, tlsCfg *tls.Config) error {
	ctx, cancel := context.WithTimeout(ctx, a.askTimeout())
	defer cancel()
	errc := make(chan error, len(eps))
	for _, ep := range eps {
		go func() {
			_, err := c.Status(ctx, ep)
			errc <- err
		}()
	}
	var last error
	for range eps {
		err := <-errc
		if err == nil {
			return nil
		}
		if isDenied(err) {
			return err
		}
		last = err
	}
	return a.unreachable(eps, tlsCfg, last)
}

// probeTimeout bounds the dial that explains an unreachable endpoint: a
// quarter of the dial timeout, at most half a second. Asking etcd gets the
// rest, so that the error comes within --dial-timeout.
func (a *app) probeTimeout() time.Duration { return min(a.dialTimeout/4, 500*time.Millisecond) }

func (a *app) askTimeout() time.Duration { return a.dialTimeout - a.probeTimeout() }

// unreachable is the one-line error for endpoints that did not answer.
// gRPC reports only "deadline exceeded"; a plain TCP (or TLS) dial to each
// endpoint tells the user why.
func (a *app) unreachable(eps []string, tlsCfg *tls.Config, err error) error {
	causes := make([]string, len(eps))
	for i, ep := range eps {
		causes[i] = probe(ep, tlsCfg, err, a.probeTimeout())
	}
	why := causes[0]
	if len(eps) > 1 {
		for i := range causes {
			causes[i] = eps[i] + ": " + causes[i]
		}
		why = strings.Join(causes, "; ")
	}
	return fmt.Errorf("%w at %s within %v (--dial-timeout): %s",
		errUnreachable, strings.Join(eps, ","), a.dialTimeout, why)
}

// probe explains why ep did not answer: the dial's error, the TLS
// handshake's error, or, when both work, that no etcd answered there.
func probe(ep string, tlsCfg *tls.Config, err error, timeout time.Duration) string {
	if cause := grpcCause(err); cause != "no answer" {
		return cause
	}
	host, secure := ep, tlsCfg != nil
	if u, perr := url.Parse(ep); perr == nil && u.Host != "" {
		host = u.Host
		secure = u.Scheme == "https" || (secure && u.Scheme != "http")
	}
	d := &net.Dialer{Timeout: timeout}
	if !secure {
		conn, derr := d.Dial("tcp", host)
		if derr != nil {
			return grpcCause(derr)
		}
		conn.Close()
		return "the port accepts connections but no etcd answered (is it https? then give --cacert)"
	}
	cfg := &tls.Config{}
	if tlsCfg != nil {
		cfg = tlsCfg.Clone()
	}
	if h, _, serr := net.SplitHostPort(host); serr == nil && cfg.ServerName == "" {
		cfg.ServerName = h
	}
	conn, derr := tls.DialWithDialer(d, "tcp", host, cfg)
	if derr != nil {
		return grpcCause(derr)
	}
	conn.Close()
	if len(cfg.Certificates) == 0 {
		return "TLS works but no etcd answered (does the server want a client certificate? give --cert and --key)"
	}
	return "TLS works but no etcd answered"
}

// grpcCause shortens a connection error to its cause: "connection
// refused", a TLS complaint, or "no answer".
func grpcCause(err error) string {
	if err == nil {
		return "no answer"
	}
	msg := err.Error()
	for _, marker := range []string{"tls: ", "x509: ", "connection refused", "no such host", "connection reset", "i/o timeout"} {
		if i := strings.LastIndex(msg, marker); i >= 0 {
			cause := msg[i:]
			if j := strings.IndexAny(cause, "\"\n"); j >= 0 {
				cause = cause[:j]
			}
			return strings.TrimSuffix(cause, ")")
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "deadline exceeded") {
		return "no answer"
	}
	return msg
}
