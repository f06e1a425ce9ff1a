package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/embedded"
	"github.com/batonhq/baton/internal/bench"
	"github.com/batonhq/baton/internal/testutil"
)

// TestUsageErrors: bad command lines exit 64 (78 for an unreadable CA)
// with one line saying what is wrong, before talking to any server (the
// endpoint here is closed).
func TestUsageErrors(t *testing.T) {
	ports, err := embedded.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	ep := fmt.Sprintf("--endpoints=127.0.0.1:%d", ports[0])
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"lock"}, exitUsage, "missing NAME"},
		{[]string{"elect"}, exitUsage, "missing NAME"},
		{[]string{"lock", "--ttl", "0s", "x"}, exitUsage, "--ttl"},
		{[]string{"lock", "--try", "--timeout", "1s", "x"}, exitUsage, "exclude each other"},
		{[]string{"lock", "--kill-grace", "-1s", "x"}, exitUsage, "--kill-grace"},
		{[]string{"lock", "--bogus", "x"}, exitUsage, "unknown flag"},
		{[]string{"elect", "--json", "x"}, exitUsage, "--json goes with --listen"},
		{[]string{"elect", "--listen", "x", "p"}, exitUsage, "--listen takes only NAME"},
		{[]string{"elect", "a", "b", "c"}, exitUsage, "too many arguments"},
		{[]string{"elect", "--recampaign", "--listen", "x"}, exitUsage, "--recampaign goes with campaigning"},
		{[]string{"elect", "--lease-trust", "1/3", "x"}, exitUsage, "--lease-trust for elect must be more than 1/3"},
		{[]string{"--log-level", "loud", "status"}, exitUsage, "--log-level must be debug, info, warn or error"},
		{[]string{"--log-format", "xml", "status"}, exitUsage, "--log-format must be text or json"},
		{[]string{"serve", "--log-level", "loud"}, exitUsage, "--log-level must be"},
		{[]string{"status", "a", "b"}, exitUsage, "accepts at most 1 arg"},
		{[]string{"bench", "--only", "nosuch"}, exitUsage, `no suite "nosuch"`},
		{[]string{"serve", "--initial-cluster-state", "maybe"}, exitUsage, "--initial-cluster-state"},
		{[]string{"nosuch"}, exitUsage, "unknown command"},
		{[]string{"--user", "bob", "status"}, exitUsage, `user "bob" has no password`},
		{[]string{"--cert", "c.pem", "status"}, exitUsage, "--cert and --key go together"},
		{[]string{"--dial-timeout", "0s", "status"}, exitUsage, "--dial-timeout"},
		{[]string{"--cacert", "/nonexistent/ca.pem", "status"}, exitConfig, "/nonexistent/ca.pem"},
	} {
		code, stdout, stderr := inProcess(append([]string{ep}, tc.args...)...)
		first, _, _ := strings.Cut(stderr, "\n")
		if code != tc.code || !strings.Contains(first, tc.says) || !strings.HasPrefix(first, "baton: ") {
			t.Errorf("baton %s: exit %d, first line %q; want exit %d and a line with %q (stdout %q)",
				strings.Join(tc.args, " "), code, first, tc.code, tc.says, stdout)
		}
	}
}

// TestUnreachable: a closed endpoint gives one line naming it, exit 69,
// within the dial timeout.
func TestUnreachable(t *testing.T) {
	ports, err := embedded.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	ep := fmt.Sprintf("127.0.0.1:%d", ports[0])
	for _, args := range [][]string{
		{"--endpoints", ep, "--dial-timeout", "1s", "status"},
		{"--endpoints", ep, "--dial-timeout", "1s", "lock", "x", "--", "true"},
		{"--endpoints", ep, "--dial-timeout", "1s", "--user", "u:p", "elect", "--listen", "x"},
	} {
		begin := time.Now()
		code, _, stderr := inProcess(args...)
		took := time.Since(begin)
		if code != exitUnavailable || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, ep) ||
			!strings.Contains(stderr, "connection refused") {
			t.Errorf("baton %s: exit %d, stderr %q; want exit %d and one line naming %s and the refusal", strings.Join(args, " "), code, stderr, exitUnavailable, ep)
		}
		if took > 3*time.Second { // the dial timeout, and slack for a busy machine
			t.Errorf("baton %s took %v with a 1s dial timeout", strings.Join(args, " "), took)
		}
	}
}

// TestEndpointPrecedence: --endpoints, then BATON_ENDPOINTS, then
// ETCDCTL_ENDPOINTS, then 127.0.0.1:2379.
func TestEndpointPrecedence(t *testing.T) {
	resolve := func(env map[string]string, args ...string) []string {
		a := &app{io: &IO{Getenv: func(k string) string { return env[k] }}}
		root := newRootCommand(a)
		if err := root.PersistentFlags().Parse(args); err != nil {
			t.Fatal(err)
		}
		return a.resolvedEndpoints()
	}
	both := map[string]string{"BATON_ENDPOINTS": "b1, b2", "ETCDCTL_ENDPOINTS": "e1"}
	for _, tc := range []struct {
		got, want []string
	}{
		{resolve(both, "--endpoints", "f1,f2"), []string{"f1", "f2"}},
		{resolve(both), []string{"b1", "b2"}},
		{resolve(map[string]string{"ETCDCTL_ENDPOINTS": "e1,e2"}), []string{"e1", "e2"}},
		{resolve(nil), []string{defaultEndpoint}},
	} {
		if strings.Join(tc.got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("endpoints %q, want %q", tc.got, tc.want)
		}
	}
}

// TestExitCodeTable checks how errors map to exit codes.
func TestExitCodeTable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
	}{
		{nil, exitOK},
		{errors.New("boom"), exitError},
		{fmt.Errorf("lock x: %w", rpctypes.ErrPermissionDenied), exitDenied},
		{fmt.Errorf("login: %w", rpctypes.ErrAuthFailed), exitDenied},
		{fmt.Errorf("%w at 127.0.0.1:1", errUnreachable), exitUnavailable},
		{fmt.Errorf("x: %w", concurrency.ErrLockLost), exitLost},
		{concurrency.ErrLeadershipLost, exitLost},
		{withCode(3, nil), 3},
		{fmt.Errorf("wrapped: %w", withCode(exitHeld, errors.New("held"))), exitHeld},
	} {
		if got := exitCode(tc.err); got != tc.code {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.code)
		}
	}
}

func TestHuman(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:                    "0s",
		1234 * time.Millisecond:         "1s",
		850 * time.Millisecond:          "850ms",
		3*time.Minute + 40*time.Second:  "3m40s",
		3 * time.Minute:                 "3m",
		2*time.Hour + 5*time.Minute + 1: "2h5m",
	} {
		if got := human(d); got != want {
			t.Errorf("human(%v) = %q, want %q", d, got, want)
		}
	}
}

// syncBuffer is a bytes.Buffer that a running command writes while the
// test reads, with a way to wait for text.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{}
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{changed: make(chan struct{})} }

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.changed)
	s.changed = make(chan struct{})
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitCount waits until sub occurs at least n times.
func (s *syncBuffer) waitCount(t *testing.T, sub string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		got, ch := strings.Count(s.b.String(), sub), s.changed
		s.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%q seen %d times within %v, want %d; output:\n%q", sub, got, timeout, n, s.String())
		}
	}
}

// inProcessRun runs Main in a goroutine with signals the test sends.
type inProcessRun struct {
	out, err *syncBuffer
	sigs     chan os.Signal
	code     chan int
}

func startInProcess(env map[string]string, terminal bool, args ...string) *inProcessRun {
	r := &inProcessRun{out: newSyncBuffer(), err: newSyncBuffer(), sigs: make(chan os.Signal, 1), code: make(chan int, 1)}
	stdio := &IO{
		In: strings.NewReader(""), Out: r.out, Err: r.err, ErrIsTerminal: terminal,
		Getenv: func(k string) string { return env[k] },
		Notify: func(c chan<- os.Signal) func() {
			done := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				select {
				case s := <-r.sigs:
					c <- s
				case <-done:
				}
			}()
			return func() { close(done); wg.Wait() }
		},
	}
	go func() { r.code <- Main(args, stdio) }()
	return r
}

// TestLiveProgress runs lock in-process with stderr as a terminal: the
// waiting line is redrawn in place (carriage return, erase line) as time
// passes, and cleared once the lock comes.
func TestLiveProgress(t *testing.T) {
	srv := testutil.Server(t)
	env := map[string]string{"BATON_ENDPOINTS": strings.Join(srv.Endpoints(), ",")}
	holder := startInProcess(env, false, "lock", "--note", "demo", "live")
	holder.out.waitCount(t, "BATON_FENCING_TOKEN=", 1, 30*time.Second)
	waiter := startInProcess(env, true, "lock", "live")
	// Two draws at least a second apart: the line is live.
	waiter.err.waitCount(t, "\r\x1b[Kbaton: waiting for lock live: held by ", 2, 30*time.Second)
	if s := waiter.err.String(); !strings.Contains(s, fmt.Sprintf("pid %d (demo)", os.Getpid())) || strings.Contains(s, "\n\r") {
		t.Errorf("live progress %q: want the holder's pid and note, redrawn without new lines", s)
	}
	holder.sigs <- syscall.SIGINT
	if code := <-holder.code; code != 0 {
		t.Fatalf("holder exit %d: %s", code, holder.err.String())
	}
	waiter.out.waitCount(t, "BATON_FENCING_TOKEN=", 1, 30*time.Second)
	if s := waiter.err.String(); !strings.Contains(s, "\r\x1b[Kbaton: got lock live after waiting") {
		t.Errorf("the live line was not cleared before \"got lock\": %q", s)
	}
	waiter.sigs <- syscall.SIGTERM
	if code := <-waiter.code; code != 0 {
		t.Fatalf("waiter exit %d: %s", code, waiter.err.String())
	}
}

// TestBench runs the quick benchmark of one suite through the binary and
// reads its JSON.
func TestBench(t *testing.T) {
	code, stdout, stderr := runBaton(t, testEnv(), 3*time.Minute, "bench", "--quick", "--only", "core", "--json")
	if code != 0 {
		t.Fatalf("bench: exit %d\n%s", code, stderr)
	}
	var rows []bench.Row
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil {
		t.Fatalf("bench --json: %v\n%s", err, stdout)
	}
	peers := 0
	for _, r := range rows {
		if r.Suite != "core" || r.Baton <= 0 {
			t.Errorf("row %+v: want suite core and a measured figure", r)
		}
		if r.Peer > 0 {
			peers++
		}
	}
	if len(rows) == 0 || peers == 0 {
		t.Errorf("%d rows, %d with a peer: want rows compared with a peer", len(rows), peers)
	}
}
