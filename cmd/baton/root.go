package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
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

// signals delivers SIGINT, SIGTERM and SIGHUP until stop is called.
func (a *app) signals() (<-chan os.Signal, func()) {
	c := make(chan os.Signal, 4)
	if a.io.Notify == nil {
		return c, func() {}
	}
	return c, a.io.Notify(c)
}
