package memlocktest

import (
	"context"
	"net"
	"sync/atomic"
)

// RequestCounter counts the requests a client sends. Give its Dial to the
// client: gomemcache's Client.DialContext, go-redis's Options.Dialer. Both
// clients write each request (or pipeline) at once from a buffer and wait
// for the reply, so each write is one request and one round trip.
type RequestCounter struct {
	n atomic.Int64
}

// Dial dials TCP and counts the writes on the connection.
func (c *RequestCounter) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return countingConn{conn, &c.n}, nil
}

// Count is the number of requests sent so far.
func (c *RequestCounter) Count() int64 { return c.n.Load() }

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}
