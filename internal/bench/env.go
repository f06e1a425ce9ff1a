package bench

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/batonhq/baton/embedded"
)

// etcdEnv is one embedded etcd (fsync on) shared by baton and the peer.
type etcdEnv struct {
	srv     *embedded.Server
	clients []*clientv3.Client
}

func startEtcd() (*etcdEnv, error) {
	s, err := embedded.Start(embedded.Config{})
	if err != nil {
		return nil, err
	}
	return &etcdEnv{srv: s}, nil
}

// client dials a new client connection; each simulated process gets its
// own, as separate processes would.
func (e *etcdEnv) client() (*clientv3.Client, error) {
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   e.srv.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("bench: dial: %w", err)
	}
	e.clients = append(e.clients, c)
	return c, nil
}

func (e *etcdEnv) close() {
	for _, c := range e.clients {
		c.Close()
	}
	e.srv.Close()
}

// floorRows measures the floors every etcd workload is bounded by: the p50
// of a raw Put, and of a Put by one client until a watch on another client
// sees it.
func floorRows(ctx context.Context, e *etcdEnv, n int) ([]Row, error) {
	a, err := e.client()
	if err != nil {
		return nil, err
	}
	b, err := e.client()
	if err != nil {
		return nil, err
	}
	var puts []time.Duration
	for i := range n {
		t0 := time.Now()
		if _, err := a.Put(ctx, "bench/floor/put", fmt.Sprint(i)); err != nil {
			return nil, err
		}
		puts = append(puts, time.Since(t0))
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := b.Watch(wctx, "bench/floor/watch", clientv3.WithCreatedNotify())
	if r := <-wch; r.Err() != nil {
		return nil, r.Err()
	}
	var events []time.Duration
	for i := range n {
		t0 := time.Now()
		if _, err := a.Put(ctx, "bench/floor/watch", fmt.Sprint(i)); err != nil {
			return nil, err
		}
		r, ok := <-wch
		if !ok || r.Err() != nil {
			return nil, fmt.Errorf("bench: floor watch ended: %v", r.Err())
		}
		events = append(events, time.Since(t0))
	}
	return []Row{
		{Workload: "floor: raw Put", Unit: "ms p50", Baton: Percentile(puts, 50), Note: "no peer: the cost of one durable write"},
		{Workload: "floor: Put -> watch event on another client", Unit: "ms p50", Baton: Percentile(events, 50)},
	}, nil
}
