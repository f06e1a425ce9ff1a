package concurrency_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/metrics"
)

// Metrics and logs are wired once, on the session: every primitive made on
// it reports into the same registry and logger. Here a lock is lost (its
// key deleted by someone else), which shows in baton_losses_total and in
// one log record.
func ExampleWithMetrics() {
	srv, cli := exampleServer()
	defer srv.Close()
	defer cli.Close()
	ctx := context.Background()

	reg := prometheus.NewRegistry() // or prometheus.DefaultRegisterer
	m := metrics.New(reg)
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		// Keep the example's output stable: no time, lease, key or token.
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			switch a.Key {
			case slog.TimeKey, "lease", "key", "token":
				return slog.Attr{}
			}
			return a
		},
	}))
	s, err := concurrency.NewSession(cli, concurrency.WithMetrics(m), concurrency.WithLogger(logger))
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	mu := concurrency.NewMutex(s, "/jobs/nightly")
	err = concurrency.WithLock(ctx, mu, func(ctx context.Context) error {
		cli.Delete(ctx, mu.Key()) // someone else deletes the holder's key
		<-ctx.Done()
		return nil
	})
	fmt.Println("WithLock:", err)
	// What a scrape of reg shows for the losses:
	mfs, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "baton_losses_total" {
			continue
		}
		for _, series := range mf.GetMetric() {
			var labels []string
			for _, l := range series.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			fmt.Printf("%s{%s} %v\n", mf.GetName(), strings.Join(labels, ","), series.GetCounter().GetValue())
		}
	}
	// Output:
	// level=WARN msg="mutex lost" name=/jobs/nightly cause=deleted why="mutex: lock lost"
	// WithLock: mutex: lock lost
	// baton_losses_total{cause="deleted",name="/jobs/nightly",primitive="mutex"} 1
}
