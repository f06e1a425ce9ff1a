package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/batonhq/baton/embedded"
)

// serveOptions are the flags of "baton serve", named as etcd's own.
type serveOptions struct {
	*app
	name                string
	dataDir             string
	listenClientURLs    []string
	advertiseClientURLs []string
	listenPeerURLs      []string
	advertisePeerURLs   []string
	initialCluster      string
	initialClusterState string
	initialClusterToken string
	clientTLS, peerTLS  embedded.TLS
}

// Defaults of serve.
const (
	defaultDataDir   = "./baton.data"
	defaultClientURL = "http://127.0.0.1:2379"
	defaultPeerURL   = "http://127.0.0.1:2380"
	startTimeout     = 7 * 24 * time.Hour
)

func newServeCommand(a *app) *cobra.Command {
	o := &serveOptions{app: a}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run an embedded etcd server (one member of a cluster with --initial-cluster)",
		Long: `serve runs a real etcd server in this process, with fsync on: a working
coordination server with nothing else installed. Its data stays in
--data-dir across restarts. SIGINT or SIGTERM stops it cleanly.

The flags are etcd's own, so three serve processes given the same
--initial-cluster form a 3-member cluster. For anything bigger, run an etcd
cluster and point the other commands at it with --endpoints.

--log-level, a global flag, is also etcd's own log level (default error);
etcd writes its log as zap's JSON, whatever --log-format says, and none of
its start-up log unless --log-level is debug: a member that fails to start
is one line.`,
		Example: `  baton serve
  baton serve --name a --data-dir a.data \
    --listen-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
    --initial-cluster a=http://127.0.0.1:2380,b=http://127.0.0.1:2382,c=http://127.0.0.1:2384`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.name, "name", "default", "human-readable name of this member")
	f.StringVar(&o.dataDir, "data-dir", defaultDataDir, "directory of the member's data, kept across restarts")
	f.StringSliceVar(&o.listenClientURLs, "listen-client-urls", []string{defaultClientURL}, "URLs to serve clients on")
	f.StringSliceVar(&o.advertiseClientURLs, "advertise-client-urls", nil, "client URLs to tell the cluster (default: --listen-client-urls)")
	f.StringSliceVar(&o.listenPeerURLs, "listen-peer-urls", []string{defaultPeerURL}, "URLs to serve the other members on")
	f.StringSliceVar(&o.advertisePeerURLs, "initial-advertise-peer-urls", nil, "peer URLs to tell the cluster (default: --listen-peer-urls)")
	f.StringVar(&o.initialCluster, "initial-cluster", "", "name=peerURL,... of every member (default: this member alone)")
	f.StringVar(&o.initialClusterState, "initial-cluster-state", "new", `"new" for a new cluster, "existing" to join one`)
	f.StringVar(&o.initialClusterToken, "initial-cluster-token", "baton-cluster", "token that keeps clusters apart")
	f.StringVar(&o.clientTLS.CertFile, "cert-file", "", "certificate for clients (serve https:// client URLs)")
	f.StringVar(&o.clientTLS.KeyFile, "key-file", "", "key of --cert-file")
	f.StringVar(&o.clientTLS.TrustedCAFile, "trusted-ca-file", "", "CA that signs client certificates")
	f.BoolVar(&o.clientTLS.ClientCertAuth, "client-cert-auth", false, "require client certificates signed by --trusted-ca-file")
	f.StringVar(&o.peerTLS.CertFile, "peer-cert-file", "", "certificate for peers (https:// peer URLs)")
	f.StringVar(&o.peerTLS.KeyFile, "peer-key-file", "", "key of --peer-cert-file")
	f.StringVar(&o.peerTLS.TrustedCAFile, "peer-trusted-ca-file", "", "CA that signs peer certificates")
	f.BoolVar(&o.peerTLS.ClientCertAuth, "peer-client-cert-auth", false, "require peer certificates signed by --peer-trusted-ca-file")
	return cmd
}

func (o *serveOptions) run(context.Context) error {
	switch o.initialClusterState {
	case "new", "existing":
	default:
		return usageErrorf(`--initial-cluster-state must be "new" or "existing", got %q`, o.initialClusterState)
	}
	if o.name == "" || o.dataDir == "" {
		return usageErrorf("--name and --data-dir must not be empty")
	}
	if fi, err := os.Stat(o.dataDir); err == nil && !fi.IsDir() {
		return usageErrorf("--data-dir %s is a file, not a directory: give another --data-dir", o.dataDir)
	}
	sigs, stopSignals := o.signals()
	defer stopSignals()

	dir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return err
	}
	fmt.Fprintf(o.io.Err, "baton serve: starting etcd member %q, data in %s\n", o.name, dir)
	type started struct {
		srv *embedded.Server
		err error
	}
	startc := make(chan started, 1)
	sctx, cancelStart := context.WithCancel(context.Background())
	defer cancelStart()
	go func() {
		srv, err := embedded.StartContext(sctx, embedded.Config{
			Name:                o.name,
			Dir:                 dir,
			ListenClientURLs:    o.listenClientURLs,
			AdvertiseClientURLs: o.advertiseClientURLs,
			ListenPeerURLs:      o.listenPeerURLs,
			AdvertisePeerURLs:   o.advertisePeerURLs,
			InitialCluster:      o.initialCluster,
			InitialClusterState: o.initialClusterState,
			InitialClusterToken: o.initialClusterToken,
			LogLevel:            o.logLevel,
			ClientTLS:           o.clientTLS,
			PeerTLS:             o.peerTLS,
			// A member of a new cluster is ready only once a majority
			// has started, which may take a person a while: wait for as
			// long as it takes, or until interrupted.
			StartTimeout: startTimeout,
			// One line says what failed (serveError), not etcd's log.
			QuietStart: o.logLevel != "debug",
		})
		startc <- started{srv, err}
	}()
	var srv *embedded.Server
	notice := time.NewTimer(5 * time.Second)
	defer notice.Stop()
	for srv == nil {
		select {
		case r := <-startc:
			if r.err != nil {
				return o.serveError(r.err)
			}
			srv = r.srv
		case <-notice.C:
			fmt.Fprintf(o.io.Err, "baton serve: not ready yet: waiting for a majority of --initial-cluster (%s) to start\n", o.initialCluster)
		case sig := <-sigs:
			// Stop the member that is starting, bounded: etcd's data
			// survives an exit under it as it survives a crash.
			cancelStart()
			select {
			case r := <-startc:
				if r.srv != nil {
					r.srv.Close()
				}
			case <-time.After(releaseTimeout):
			}
			return withCode(exitCodeOf(sig), fmt.Errorf("serve: interrupted (%v) while starting", sig))
		}
	}
	defer srv.Close()
	fmt.Fprintf(o.io.Out, "baton serve: etcd member %q is ready\n", o.name)
	fmt.Fprintf(o.io.Out, "  clients: %s\n", strings.Join(srv.Endpoints(), ","))
	fmt.Fprintf(o.io.Out, "  peers:   %s\n", strings.Join(srv.PeerURLs(), ","))
	fmt.Fprintf(o.io.Out, "  data:    %s\n", dir)
	fmt.Fprintf(o.io.Out, "Stop with Ctrl-C. In another terminal: baton lock demo -- echo hello\n")

	select {
	case sig := <-sigs:
		fmt.Fprintf(o.io.Err, "baton serve: %v: stopping\n", sig)
	case err := <-srv.Err():
		return fmt.Errorf("serve: etcd stopped: %w", err)
	}
	if err := srv.Close(); err != nil {
		return fmt.Errorf("serve: stop: %w", err)
	}
	fmt.Fprintf(o.io.Err, "baton serve: stopped; data kept in %s\n", dir)
	return nil
}

// serveError is the one line for a member that did not start, naming the
// flag that fixes it when the cause is known.
func (o *serveOptions) serveError(err error) error {
	var oe *net.OpError
	if errors.Is(err, syscall.EADDRINUSE) && errors.As(err, &oe) && oe.Addr != nil {
		addr := oe.Addr.String()
		flag := "--listen-client-urls"
		for _, u := range o.listenPeerURLs {
			if strings.Contains(u, addr) || strings.HasSuffix(addr, ":"+urlPort(u)) {
				flag = "--listen-peer-urls"
			}
		}
		return withCode(exitUsage, fmt.Errorf("serve: %s is already in use (another etcd or baton serve?): give another port with %s", addr, flag))
	}
	return fmt.Errorf("serve: %w", err)
}

// urlPort is the port of a URL flag value, or "".
func urlPort(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return u.Port()
}
