package testutil

import (
	"strings"
	"testing"

	"go.etcd.io/etcd/pkg/v3/proxy"

	"github.com/batonhq/baton/internal/loopproxy"
)

// Proxy puts etcd's TCP proxy in front of the loopback endpoint to
// ("http://127.0.0.1:port" or "127.0.0.1:port") and returns it with the
// endpoint that reaches to through it, in the form to was given. Its
// Blackhole, Delay and Pause methods then fault the path. It is closed when
// the test ends.
func Proxy(tb testing.TB, to string) (proxy.Server, string) {
	tb.Helper()
	scheme, hostport, ok := strings.Cut(to, "://")
	if !ok {
		scheme, hostport = "", to
	}
	p, addr, err := loopproxy.New(hostport)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	if scheme != "" {
		addr = scheme + "://" + addr
	}
	return p, addr
}
