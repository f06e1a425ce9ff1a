package concurrency_test

import (
	"context"
	"fmt"
	"log"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/embedded"
)

// exampleServer starts an embedded etcd for an example; real programs
// dial their etcd cluster instead.
func exampleServer() (*embedded.Server, *clientv3.Client) {
	srv, err := embedded.Start(embedded.Config{})
	if err != nil {
		log.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		log.Fatal(err)
	}
	return srv, cli
}

// Two sessions compete for one lock: the second waits until the first
// unlocks, and gets a higher fencing token.
func ExampleMutex_Lock() {
	srv, cli := exampleServer()
	defer srv.Close()
	defer cli.Close()
	ctx := context.Background()

	s1, err := concurrency.NewSession(cli)
	if err != nil {
		log.Fatal(err)
	}
	defer s1.Close()
	m1 := concurrency.NewMutex(s1, "/my-lock")

	s2, err := concurrency.NewSession(cli)
	if err != nil {
		log.Fatal(err)
	}
	defer s2.Close()
	m2 := concurrency.NewMutex(s2, "/my-lock")

	if err := m1.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("acquired lock for s1")
	token1 := m1.Rev()

	locked := make(chan struct{})
	go func() {
		defer close(locked)
		if err := m2.Lock(ctx); err != nil {
			log.Fatal(err)
		}
	}()

	if err := m1.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("released lock for s1")

	<-locked
	fmt.Println("acquired lock for s2")
	fmt.Println("s2's token is higher:", m2.Rev() > token1)
	if err := m2.Unlock(ctx); err != nil {
		log.Fatal(err)
	}

	// Output:
	// acquired lock for s1
	// released lock for s1
	// acquired lock for s2
	// s2's token is higher: true
}

// TryLock fails at once with ErrLocked while someone else holds the lock.
func ExampleMutex_TryLock() {
	srv, cli := exampleServer()
	defer srv.Close()
	defer cli.Close()
	ctx := context.Background()

	s1, _ := concurrency.NewSession(cli)
	defer s1.Close()
	s2, _ := concurrency.NewSession(cli)
	defer s2.Close()
	m1 := concurrency.NewMutex(s1, "/try-lock")
	m2 := concurrency.NewMutex(s2, "/try-lock")

	if err := m1.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("s1 holds the lock")
	if err := m2.TryLock(ctx); err == concurrency.ErrLocked {
		fmt.Println("s2 cannot take it:", err)
	}
	if err := m1.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	if err := m2.TryLock(ctx); err == nil {
		fmt.Println("s2 takes it once s1 is done")
	}
	m2.Unlock(ctx)

	// Output:
	// s1 holds the lock
	// s2 cannot take it: mutex: Locked by another session
	// s2 takes it once s1 is done
}

// Two sessions campaign; the second becomes leader when the first resigns.
func ExampleElection_Campaign() {
	srv, cli := exampleServer()
	defer srv.Close()
	defer cli.Close()
	ctx := context.Background()

	s1, _ := concurrency.NewSession(cli)
	defer s1.Close()
	e1 := concurrency.NewElection(s1, "/my-election")
	s2, _ := concurrency.NewSession(cli)
	defer s2.Close()
	e2 := concurrency.NewElection(s2, "/my-election")

	if err := e1.Campaign(ctx, "e1"); err != nil {
		log.Fatal(err)
	}
	elected := make(chan struct{})
	go func() {
		defer close(elected)
		if err := e2.Campaign(ctx, "e2"); err != nil {
			log.Fatal(err)
		}
	}()

	leader, err := e1.Leader(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("leader:", string(leader.Kvs[0].Value))

	if err := e1.Resign(ctx); err != nil {
		log.Fatal(err)
	}
	<-elected
	leader, err = e2.Leader(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("leader:", string(leader.Kvs[0].Value))
	if err := e2.Resign(ctx); err != nil {
		log.Fatal(err)
	}

	// Output:
	// leader: e1
	// leader: e2
}

// WithLock runs a function under the lock; its context ends if the lock
// is lost, and the fencing token goes with every write to the resource.
func ExampleWithLock() {
	srv, cli := exampleServer()
	defer srv.Close()
	defer cli.Close()
	ctx := context.Background()

	s, _ := concurrency.NewSession(cli)
	defer s.Close()
	m := concurrency.NewMutex(s, "/jobs/nightly")
	err := concurrency.WithLock(ctx, m, func(ctx context.Context) error {
		// Write only while still holding the lock, in one transaction.
		_, err := m.Guard(ctx, clientv3.OpPut("/jobs/nightly-result", "done"))
		return err
	})
	fmt.Println("err:", err)
	r, _ := cli.Get(ctx, "/jobs/nightly-result")
	fmt.Println("result:", string(r.Kvs[0].Value))

	// Output:
	// err: <nil>
	// result: done
}

// Goroutines that share one session are one participant by default, as in
// etcd's package: a second Mutex on the session holds the lock as soon as
// the first does. WithExclusive gives each Mutex a key of its own, so that
// they exclude each other.
func ExampleWithExclusive() {
	srv, cli := exampleServer()
	defer srv.Close()
	defer cli.Close()
	ctx := context.Background()

	s, err := concurrency.NewSession(cli)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	shared1, shared2 := concurrency.NewMutex(s, "/shared"), concurrency.NewMutex(s, "/shared")
	if err := shared1.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("second default Mutex on the session:", shared2.TryLock(ctx))

	own1 := concurrency.NewMutex(s, "/own", concurrency.WithExclusive())
	own2 := concurrency.NewMutex(s, "/own", concurrency.WithExclusive())
	if err := own1.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("second exclusive Mutex on the session:", own2.TryLock(ctx))
	// Output:
	// second default Mutex on the session: <nil>
	// second exclusive Mutex on the session: mutex: Locked by another session
}
