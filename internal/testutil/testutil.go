// Package testutil holds what baton's tests share: embedded etcd servers
// bound to a test's lifetime, clients, and goleak settings.
package testutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/batonhq/baton/embedded"
)

// LeakOptions are the goleak options for packages whose tests run embedded
// etcd servers. etcd's raft transport keeps HTTP/1 keep-alive connections
// between members that its Close does not wait for; they end by themselves
// moments later. baton's library packages start no HTTP connections of
// their own (LeaderElector.HealthzHandler is served by the caller's server,
// whose tests close it), so ignoring those goroutines hides nothing of ours.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
	}
}

// VerifyMain runs the tests of a package and fails them if goroutines leak.
func VerifyMain(m *testing.M) {
	goleak.VerifyTestMain(m, LeakOptions()...)
}

// LogOutputs returns the embedded.Config.LogOutputs for a server that tb
// starts: a file of its own under os.TempDir(), so that etcd's logs (JSON
// lines with stack traces, hundreds of them when requests are cancelled)
// stay out of the test's output. When the test fails, the file's path is
// logged and the file kept; when it passes, the file is removed. Register
// it before the server's own cleanup, so that the server has stopped
// writing when this one runs (cleanups run last first): Server and
// Cluster do.
//
// It is not t.TempDir(), which is deleted when the test ends, failed or
// not.
func LogOutputs(tb testing.TB) []string {
	tb.Helper()
	name := strings.NewReplacer("/", "_", " ", "_", string(filepath.Separator), "_").Replace(tb.Name())
	f, err := os.CreateTemp("", "baton-etcd-"+name+"-*.log")
	if err != nil {
		tb.Fatal(err)
	}
	path := f.Name()
	f.Close()
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("etcd server log: %s", path)
			return
		}
		os.Remove(path)
	})
	return []string{path}
}

// Server starts a single-node embedded etcd (fsync on) that lives as long as
// the test. Its logs go to a file (LogOutputs).
func Server(tb testing.TB) *embedded.Server {
	tb.Helper()
	return ServerWith(tb, embedded.Config{})
}

// ServerWith is Server with settings of the test's own; LogOutputs, when
// empty, is set as in Server.
func ServerWith(tb testing.TB, cfg embedded.Config) *embedded.Server {
	tb.Helper()
	if len(cfg.LogOutputs) == 0 {
		cfg.LogOutputs = LogOutputs(tb)
	}
	s, err := embedded.Start(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// Cluster starts a 3-member embedded cluster that lives as long as the test.
// Its members log to one file between them (LogOutputs).
func Cluster(tb testing.TB) *embedded.Cluster {
	tb.Helper()
	c, err := embedded.StartCluster(3, embedded.Config{LogOutputs: LogOutputs(tb)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// Client dials eps and closes the client when the test ends.
func Client(tb testing.TB, eps []string) *clientv3.Client {
	tb.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   eps,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// RequireBinary returns the path of a server binary on PATH. When it is
// missing the test fails if the CI environment variable is set and skips
// otherwise, saying how to install it.
func RequireBinary(tb testing.TB, name, debPackage string) string {
	tb.Helper()
	p, err := lookPath(name)
	if err == nil {
		return p
	}
	msg := name + " not found on PATH; install it with: apt-get install -y " + debPackage
	if os.Getenv("CI") != "" {
		tb.Fatal(msg + " (CI is set, so a missing server is a failure)")
	}
	tb.Skip(msg)
	return ""
}
