package main

// This file holds what lock and elect share once they hold: watching for
// the loss of the key, running CMD under it, and holding without CMD.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/internal/layout"
)

// held is a lock or a leadership this process holds.
type held struct {
	what  string               // "lock backup", "leadership of web"
	s     *concurrency.Session // the session it is held on
	lost  <-chan struct{}      // closed when it is lost
	cause func() error         // why, once lost
	key   string               // the key, with --prefix
	token int64                // its create revision: the fencing token
}

// holdWhile holds h until it is lost or released: hold is the lock's or
// the leadership's HoldContext, which ends when the key goes or the
// session ends. It runs argv with vars and childEnv in its environment,
// or without argv prints vars and waits for an interrupt (idle, said on
// stderr). lost reports that the hold ended by loss (exit 71); the caller
// releases otherwise.
func (a *app) holdWhile(hold func(context.Context) (context.Context, context.CancelFunc), h held, argv, vars, childEnv []string, idle string, sigs <-chan os.Signal, grace time.Duration) (lost bool, err error) {
	hctx, stop := hold(context.Background())
	defer stop()
	h.lost = hctx.Done()
	h.cause = func() error { return context.Cause(hctx) }
	if len(argv) == 0 {
		for _, v := range vars {
			fmt.Fprintln(a.io.Out, v)
		}
		if idle != "" {
			fmt.Fprintf(a.io.Err, "baton: %s\n", idle)
		}
		err = a.holdUntilInterrupted(h, sigs)
	} else {
		err = a.runChild(h, argv, append(vars, childEnv...), sigs, grace)
	}
	stop()
	return exitCode(err) == exitLost, err
}

// holdUntilInterrupted waits for a signal (then the caller releases
// and baton exits 0) or the loss of h (exit 71).
func (a *app) holdUntilInterrupted(h held, sigs <-chan os.Signal) error {
	select {
	case <-sigs:
		return nil
	case <-h.lost:
		return withCode(exitLost, fmt.Errorf("%s lost (%s)", h.what, h.why()))
	}
}

// why says why h was lost: the lease could no longer be trusted (no
// keep-alive answered for the --lease-trust part of the TTL), or the
// server said so.
func (h held) why() string {
	if h.cause != nil && errors.Is(h.cause(), concurrency.ErrLeaseUnconfirmed) && h.s != nil {
		at, ttl := h.s.KeepAliveAnswered()
		return fmt.Sprintf("no keepalive answered for %s of the %s TTL; the server may be expiring the lease", human(time.Since(at)), human(ttl))
	}
	return "session expired or key deleted"
}

// lostRevokeTimeout bounds the revoke after a loss: the server may be
// unreachable (that may be why), and the lease expires anyway.
const lostRevokeTimeout = time.Second

// endSession ends s: Close (revoke, bounded by the TTL) normally; after a
// loss, a revoke bounded by lostRevokeTimeout, so that baton exits
// promptly once CMD has stopped.
func endSession(s *concurrency.Session, lost bool) {
	if !lost {
		s.Close()
		return
	}
	s.Orphan()
	ctx, cancel := context.WithTimeout(context.Background(), lostRevokeTimeout)
	defer cancel()
	s.Client().Revoke(ctx, s.Lease())
}

// runChild runs argv while h is held and returns its exit status as an
// error (nil for 0). SIGINT, SIGTERM and SIGHUP are passed on. When h is
// lost it gets SIGTERM, then SIGKILL after grace (at once when grace is
// 0), and runChild returns an exit-71 error whatever CMD's own status.
func (a *app) runChild(h held, argv, env []string, sigs <-chan os.Signal, grace time.Duration) error {
	path, err := exec.LookPath(argv[0])
	if err != nil {
		code := exitCannotRun
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
			code = exitNotFound
		}
		return withCode(code, fmt.Errorf("run %s: %w", argv[0], err))
	}
	cmd := &exec.Cmd{Path: path, Args: argv, Env: append(os.Environ(), env...)}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = a.io.In, a.io.Out, a.io.Err
	// When baton's output is not a file (tests), Wait copies CMD's output;
	// a grandchild that keeps the pipe open must not hold baton forever.
	cmd.WaitDelay = 2 * time.Second
	ch, err := startChild(cmd)
	if err != nil {
		return withCode(exitCannotRun, fmt.Errorf("run %s: %w", argv[0], err))
	}
	defer ch.kill() // whatever CMD left behind
	a.log.Info("CMD started", "cmd", argv[0], "pid", cmd.Process.Pid, "key", h.key, "token", h.token)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	lost := h.lost
	var wasLost bool
	var why string
	var kill <-chan time.Time
	var got os.Signal
	for {
		select {
		case err := <-done:
			a.log.Info("CMD ended", "cmd", argv[0], "pid", cmd.Process.Pid, "status", describeExit(cmd.ProcessState))
			if wasLost {
				err := withCode(exitLost, fmt.Errorf("%s lost (%s): %s was stopped (%s)", h.what, why, argv[0], describeExit(cmd.ProcessState)))
				if got != nil {
					return signalledError{err, got}
				}
				return err
			}
			if err != nil && cmd.ProcessState == nil {
				return fmt.Errorf("run %s: %w", argv[0], err)
			}
			if code := exitStatus(cmd.ProcessState); code != 0 {
				return withCode(code, nil)
			}
			return nil
		case sig := <-sigs:
			got = sig
			if s, ok := sig.(syscall.Signal); ok {
				ch.signal(s)
			}
		case <-lost:
			lost, wasLost, why = nil, true, h.why()
			if grace <= 0 {
				fmt.Fprintf(a.io.Err, "baton: %s lost (%s): killing %s (SIGKILL)\n", h.what, why, argv[0])
				ch.kill()
				continue
			}
			fmt.Fprintf(a.io.Err, "baton: %s lost (%s): stopping %s (SIGTERM, SIGKILL after %v)\n", h.what, why, argv[0], grace)
			ch.signal(syscall.SIGTERM)
			kill = time.After(grace)
		case <-kill:
			kill = nil
			fmt.Fprintf(a.io.Err, "baton: %s still running %v after SIGTERM: SIGKILL\n", argv[0], grace)
			ch.kill()
		}
	}
}

// signalledError is the loss of a hold during which baton got a signal,
// which it passed on to CMD: elect --recampaign exits after it instead of
// campaigning again, since the signal was meant to stop baton.
type signalledError struct {
	error
	sig os.Signal
}

func (e signalledError) Unwrap() error { return e.error }

// child is CMD, started by startChild (one file per system).
type child struct {
	cmd *exec.Cmd
	// signal sends a signal to CMD's process group.
	signal func(syscall.Signal)
	// kill sends SIGKILL to everything CMD started that is still running;
	// CMD's own end is then seen by cmd.Wait.
	kill func()
}

// describeExit says how CMD ended: "exit status 1", "killed by SIGTERM".
func describeExit(ps *os.ProcessState) string {
	if ps == nil {
		return "unknown status"
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "killed by " + signalName(ws.Signal())
	}
	return fmt.Sprintf("exit status %d", ps.ExitCode())
}

func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGINT:
		return "SIGINT"
	}
	return s.String()
}

// acquire runs take (Mutex.Lock or Election.Campaign) while showing who is
// in the way, bounded by timeout (0: no bound) and interrupted by SIGINT or
// SIGTERM. name is the prefix of the queue, what its description. On an
// interrupt or a timeout the caller's deferred Session.Close removes
// whatever take left behind.
func (a *app) acquire(c *clientv3.Client, s *concurrency.Session, name, what string, timeout time.Duration, sigs <-chan os.Signal, take func(context.Context) error) error {
	// Our key is the session's first claim under name: name/hex(lease).
	ownKey := layout.Own(layout.Dir(name), int64(s.Lease()))
	p := startProgress(a, s, name, ownKey, what)
	ctx, cancel := context.WithCancel(context.Background())
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), timeout)
	}
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- take(ctx) }()
	var (
		err     error
		sig     os.Signal
		expired bool
	)
	select {
	case err = <-errc:
	case sig = <-sigs:
		cancel()
		err = <-errc
	case <-s.Done():
		// The lease is no longer renewed: our place in the queue goes
		// with it, and take may not notice while etcd is unreachable.
		expired = true
		cancel()
		err = <-errc
	}
	shown := p.stop()
	if expired && err != nil {
		err = concurrency.ErrSessionExpired
	}
	switch {
	case sig != nil:
		return withCode(exitCodeOf(sig), fmt.Errorf("interrupted (%v) while waiting for %s", sig, what))
	case err != nil && timeout > 0 && errors.Is(err, context.DeadlineExceeded):
		return withCode(exitTimeout, fmt.Errorf("timed out after %v waiting for %s%s", timeout, what, a.holderNote(c, name)))
	case err != nil && errors.Is(err, concurrency.ErrSessionExpired) && !a.answers(context.Background(), c):
		// The lease ran out because no keep-alive got through: say so,
		// not "session is expired".
		return placeLost(c, what)
	case err != nil:
		return fmt.Errorf("%s: %w", what, err)
	}
	if shown {
		fmt.Fprintf(a.io.Err, "baton: got %s after waiting %s\n", what, human(p.waited()))
	}
	return nil
}

// placeLost is the error (exit 69) of a waiter whose place in the queue
// expired with its lease because no endpoint of c answered.
func placeLost(c *clientv3.Client, what string) error {
	return withCode(exitUnavailable, fmt.Errorf("%s: %w at %s: it stopped answering while we waited, and our place in the queue expired with the lease (is the server down?)",
		what, errUnreachable, strings.Join(c.Endpoints(), ",")))
}

// answers reports whether any endpoint of c answers within the dial
// timeout, or before ctx ends.
func (a *app) answers(ctx context.Context, c *clientv3.Client) bool {
	ctx, cancel := context.WithTimeout(ctx, a.dialTimeout)
	defer cancel()
	ok := make(chan bool, len(c.Endpoints()))
	for _, ep := range c.Endpoints() {
		go func() {
			_, err := c.Status(ctx, ep)
			ok <- err == nil
		}()
	}
	for range c.Endpoints() {
		if <-ok {
			return true
		}
	}
	return false
}

// warnNested warns on stderr when name and another name in use nest:
// etcd's layout keeps the queue of NAME under NAME/, so "a" waits behind
// the holders of "a/b" (etcdctl's and etcd's Mutex do the same). baton
// keeps the layout, for interop, and says so.
func (a *app) warnNested(c *clientv3.Client, name string) {
	for _, other := range nestedNames(c, name, a.dialTimeout) {
		outer, inner := min(name, other), max(name, other) // outer is a prefix of inner
		fmt.Fprintln(a.io.Err, nestWarning(outer, inner))
	}
}

// nestWarning is the warning for names outer and inner, where outer/ is a
// prefix of inner.
func nestWarning(outer, inner string) string {
	return fmt.Sprintf("baton: warning: names %q and %q nest: etcd keeps the queue of %q under %q, so %q also waits for the holders of %q (as with etcdctl); choose names where neither is the other followed by /",
		outer, inner, outer, outer+"/", outer, inner)
}

// nestedNames lists the live names that nest with name: those under
// name/ (keys name/x/.../lease) and those name is under (a key p/lease
// for a prefix p of name ending before a /). Errors count as none: this
// is only a warning.
func nestedNames(c *clientv3.Client, name string, timeout time.Duration) []string {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out []string
	if r, err := c.Get(ctx, name+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly()); err == nil {
		seen := map[string]bool{}
		for _, kv := range r.Kvs {
			rest := strings.TrimPrefix(string(kv.Key), name+"/")
			if i := strings.LastIndexByte(rest, '/'); i >= 0 && !seen[rest[:i]] {
				seen[rest[:i]] = true
				out = append(out, name+"/"+rest[:i])
			}
		}
	}
	for i := strings.LastIndexByte(name, '/'); i > 0; i = strings.LastIndexByte(name[:i], '/') {
		parent := name[:i]
		r, err := c.Get(ctx, parent+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			break
		}
		for _, kv := range r.Kvs {
			if !strings.Contains(strings.TrimPrefix(string(kv.Key), parent+"/"), "/") {
				out = append(out, parent) // a holder or waiter of parent itself
				break
			}
		}
	}
	return out
}

// holderNote describes the current holder of the queue under name, as
// ": held by web1 pid 4242 for 3s, token 57", or "" when there is none or
// the read fails.
func (a *app) holderNote(c *clientv3.Client, name string) string {
	ctx, cancel := context.WithTimeout(context.Background(), a.dialTimeout)
	defer cancel()
	r, err := c.Get(ctx, name+"/", clientv3.WithFirstCreate()...)
	if err != nil || len(r.Kvs) == 0 {
		return ""
	}
	kv := r.Kvs[0]
	s := ": held by " + holderOf(kv)
	if since, ok := heldSince(kv); ok {
		s += " for " + human(time.Since(since))
	}
	return s + fmt.Sprintf(", token %d", kv.CreateRevision)
}
