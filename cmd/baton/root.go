package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
	"go.uber.org/zap"

	"github.com/batonhq/baton/concurrency"
)

// IO is what a command reads, writes and listens to. main passes the
// process's own; tests pass buffers, an environment map and a channel of
// signals, and run commands in-process.
type IO struct {
	In  io.Reader
	Out io.Writer
	Err io.Writer
	// ErrIsTerminal makes the "waiting for ..." line live (redrawn in
	// place every second) instead of one line per change of holder.
	ErrIsTerminal bool
	// Getenv reads the environment: BATON_ENDPOINTS, ETCDCTL_ENDPOINTS,
	// BATON_USER, BATON_PASSWORD. nil reads nothing.
	Getenv func(string) string
	// Notify arranges for SIGINT, SIGTERM and SIGHUP to be delivered on c
	// until the returned function is called. nil means signals never
	// arrive.
	Notify func(c chan<- os.Signal) (stop func())
}

func (o *IO) getenv(k string) string {
	if o.Getenv == nil {
		return ""
	}
	return o.Getenv(k)
}

// Defaults of the global flags.
const (
	defaultEndpoint    = "127.0.0.1:2379"
	defaultDialTimeout = 5 * time.Second
)

// app is the state every command shares: IO and the global flags.
type app struct {
	io *IO

	endpoints   []string
	dialTimeout time.Duration
	cacert      string
	cert        string
	key         string
	user        string
	password    string
	prefix      string
	logFormat   string
	logLevel    string

	// log is where commands and the library log, on stderr, at
	// --log-level in --log-format; set before a command runs.
	log  *slog.Logger
	root *cobra.Command
	// ran is set once a command's own code starts: an error before that
	// came from cobra's parsing and is a usage error.
	ran bool
}

// Main runs baton with args (without the program name) and returns the
// exit code. It is main without os.Exit, for tests.
func Main(args []string, stdio *IO) int {
	a := &app{io: stdio, log: slog.New(slog.DiscardHandler)}
	root := newRootCommand(a)
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err == nil {
		return exitOK
	}
	if !a.ran {
		err = withCode(exitUsage, err)
	}
	code := exitCode(err)
	var ce *codeError
	if !errors.As(err, &ce) || ce.err != nil {
		line := errorLine(err)
		if errors.Is(err, rpctypes.ErrUserEmpty) {
			line += " (this etcd has authentication on: give --user NAME:PASSWORD, or set BATON_USER and BATON_PASSWORD)"
		}
		if errors.Is(err, rpctypes.ErrPermissionDenied) {
			if user, _, _ := a.credentials(); user != "" {
				line += fmt.Sprintf(" (user %q has no role that allows this on the key; an etcd admin grants one with etcdctl role grant-permission)", user)
			}
		}
		fmt.Fprintln(stdio.Err, line)
	}
	if code == exitUsage {
		fmt.Fprintf(stdio.Err, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}

func newRootCommand(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "baton",
		Short: "Run commands under a distributed lock or while leader, on etcd",
		Long: `baton runs commands under a distributed lock or while leader, shows who
holds what, serves an embedded etcd, and runs baton's benchmark.

Every command but serve and bench talks to etcd at --endpoints.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			a.ran = true
			return a.setLogger()
		},
	}
	a.root = root
	root.SetIn(a.io.In)
	root.SetOut(a.io.Out)
	root.SetErr(a.io.Err)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		// Only an unknown flag may be CMD's, given before the --.
		if unknown := strings.Contains(err.Error(), "unknown flag") || strings.Contains(err.Error(), "unknown shorthand"); unknown && (c.Name() == "lock" || c.Name() == "elect") {
			err = fmt.Errorf("%w (CMD's own flags go after --: baton %s NAME -- CMD ARGS...)", err, c.Name())
		}
		return withCode(exitUsage, err)
	})
	root.CompletionOptions.DisableDefaultCmd = true

	f := root.PersistentFlags()
	f.StringSliceVar(&a.endpoints, "endpoints", nil,
		"etcd endpoints, comma-separated (default: $BATON_ENDPOINTS, else $ETCDCTL_ENDPOINTS, else "+defaultEndpoint+")")
	durationFlag(f, &a.dialTimeout, "dial-timeout", defaultDialTimeout, "give up reaching etcd after this long")
	f.StringVar(&a.cacert, "cacert", "", "verify the server's certificate with this CA bundle (PEM)")
	f.StringVar(&a.cert, "cert", "", "client certificate for TLS (PEM)")
	f.StringVar(&a.key, "key", "", "client key for TLS (PEM)")
	f.StringVar(&a.user, "user", "", "etcd user, as name or name:password (default: $BATON_USER)")
	f.StringVar(&a.password, "password", "", "etcd password (default: $BATON_PASSWORD)")
	f.StringVar(&a.prefix, "prefix", "", "namespace every key under this prefix")
	f.StringVar(&a.logFormat, "log-format", defaultLogFormat, "format of the log records on stderr: text or json")
	f.StringVar(&a.logLevel, "log-level", defaultLogLevel, "least level of the log records on stderr: debug, info, warn or error (serve: etcd's log level too)")

	root.AddCommand(
		newServeCommand(a),
		newLockCommand(a),
		newElectCommand(a),
		newStatusCommand(a),
		newBenchCommand(a),
		newWebCommand(a),
	)
	return root
}

// Defaults of --log-format and --log-level. At error, the default, nothing
// is logged that baton did not print before it had logs: every record of
// the library is a warning or less, and baton says on its own lines what
// a user must know (a lock lost, a server unreachable).
const (
	defaultLogFormat = "text"
	defaultLogLevel  = "error"
)

// setLogger checks --log-format and --log-level and makes a.log.
func (a *app) setLogger() error {
	var level slog.Level
	switch a.logLevel {
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		return usageErrorf("--log-level must be debug, info, warn or error, got %q", a.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch a.logFormat {
	case "text":
		a.log = slog.New(slog.NewTextHandler(a.io.Err, opts))
	case "json":
		a.log = slog.New(slog.NewJSONHandler(a.io.Err, opts))
	default:
		return usageErrorf("--log-format must be text or json, got %q", a.logFormat)
	}
	return nil
}

// resolvedEndpoints applies the precedence --endpoints, $BATON_ENDPOINTS,
// $ETCDCTL_ENDPOINTS, 127.0.0.1:2379.
func (a *app) resolvedEndpoints() []string {
	eps, _ := a.endpointsAndSource()
	return eps
}

// endpointsAndSource is resolvedEndpoints and where they came from, for
// errors: "--endpoints", "$BATON_ENDPOINTS", ....
func (a *app) endpointsAndSource() ([]string, string) {
	if f := a.root.PersistentFlags().Lookup("endpoints"); f != nil && f.Changed {
		return a.endpoints, "--endpoints"
	}
	for _, env := range []string{"BATON_ENDPOINTS", "ETCDCTL_ENDPOINTS"} {
		if v := a.io.getenv(env); v != "" {
			var eps []string
			for _, e := range strings.Split(v, ",") {
				if e = strings.TrimSpace(e); e != "" {
					eps = append(eps, e)
				}
			}
			if len(eps) > 0 {
				return eps, "$" + env
			}
		}
	}
	return []string{defaultEndpoint}, "the default endpoint"
}

// credentials applies --user (name or name:password), --password,
// $BATON_USER and $BATON_PASSWORD.
func (a *app) credentials() (user, password string, err error) {
	user, password = a.user, a.password
	if user == "" {
		user = a.io.getenv("BATON_USER")
	}
	if name, pw, ok := strings.Cut(user, ":"); ok {
		user = name
		if password == "" {
			password = pw
		}
	}
	if password == "" {
		password = a.io.getenv("BATON_PASSWORD")
	}
	switch {
	case user == "" && password != "":
		return "", "", usageErrorf("a password is given but no user: set --user or BATON_USER")
	case user != "" && password == "":
		return "", "", usageErrorf("user %q has no password: set --password, BATON_PASSWORD or --user %s:PASSWORD", user, user)
	}
	return user, password, nil
}

// tlsConfig builds the client's TLS settings from --cacert, --cert and
// --key; nil when none is given.
func (a *app) tlsConfig() (*tls.Config, error) {
	if a.cacert == "" && a.cert == "" && a.key == "" {
		return nil, nil
	}
	if (a.cert == "") != (a.key == "") {
		return nil, usageErrorf("--cert and --key go together")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if a.cacert != "" {
		pem, err := os.ReadFile(a.cacert)
		if err != nil {
			return nil, withCode(exitConfig, fmt.Errorf("--cacert: %w", err))
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, withCode(exitConfig, fmt.Errorf("--cacert %s: no PEM certificate in it", a.cacert))
		}
		cfg.RootCAs = pool
	}
	if a.cert != "" {
		pair, err := tls.LoadX509KeyPair(a.cert, a.key)
		if err != nil {
			return nil, withCode(exitConfig, fmt.Errorf("--cert/--key: %w", err))
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

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

// signals delivers SIGINT, SIGTERM and SIGHUP until stop is called.
func (a *app) signals() (<-chan os.Signal, func()) {
	c := make(chan os.Signal, 4)
	if a.io.Notify == nil {
		return c, func() {}
	}
	return c, a.io.Notify(c)
}
