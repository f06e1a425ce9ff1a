package concurrency_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/concurrency"
)

// A controller that reconciles only while it leads. Every write goes
// through Leadership.Guard, which etcd applies only while this term's key
// still exists: a leader that lost its term without noticing yet cannot
// overwrite its successor's work. ReleaseOnCancel hands leadership over
// once the loop has returned.
func ExampleLeaderElector() {
	srv, cli := exampleServer()
	defer srv.Close()
	defer cli.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var last *concurrency.Leadership
	le, err := concurrency.NewLeaderElector(concurrency.LeaderElectionConfig{
		Client:          cli,
		Prefix:          "/controllers/scheduler",
		Identity:        "scheduler-1",
		TTL:             10 * time.Second,
		ReleaseOnCancel: true,
		Callbacks: concurrency.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context, l *concurrency.Leadership) {
				last = l
				fmt.Println("started leading")
				for i := 1; i <= 3; i++ {
					state := fmt.Sprintf("reconciled %d (token %d)", i, l.Rev())
					if _, err := l.Guard(ctx, clientv3.OpPut("/scheduler/state", state)); err != nil {
						fmt.Println("write refused:", err)
						return
					}
				}
				cancel() // the demo is over: step down
			},
			OnStoppedLeading: func() { fmt.Println("stopped leading") },
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := le.Run(ctx); !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
	r, err := cli.Get(context.Background(), "/scheduler/state")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("state: %s\n", r.Kvs[0].Value)

	// A write of the ended term is refused.
	_, err = last.Guard(context.Background(), clientv3.OpPut("/scheduler/state", "stale"))
	fmt.Println("after the term:", err)
	// Output:
	// started leading
	// stopped leading
	// state: reconciled 3 (token 2)
	// after the term: election: leadership lost
}

// A liveness endpoint for a leader: it fails when the elector leads but its
// keep-alives have gone unanswered for longer than the TTL plus the
// tolerance, or when OnStartedLeading goes on running long after the term
// ended. A standby is always healthy.
func ExampleLeaderElector_HealthzHandler() {
	srv, cli := exampleServer()
	defer srv.Close()
	defer cli.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	leading := make(chan struct{})
	le, err := concurrency.NewLeaderElector(concurrency.LeaderElectionConfig{
		Client: cli,
		Prefix: "/controllers/web",
		Callbacks: concurrency.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context, _ *concurrency.Leadership) {
				close(leading)
				<-ctx.Done()
			},
		},
		ReleaseOnCancel: true,
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/healthz", le.HealthzHandler(20*time.Second))
	web := httptest.NewServer(mux)
	defer web.Close()

	done := make(chan error, 1)
	go func() { done <- le.Run(ctx) }()
	<-leading
	resp, err := http.Get(web.URL + "/healthz")
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("leader: %d %s", resp.StatusCode, body)

	cancel()
	<-done
	// Output:
	// leader: 200 ok
}
