package metrics_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/batonhq/baton/memlock"
	"github.com/batonhq/baton/metrics"
)

// One lock per job would make one series per job ID. WithNameLabel folds
// them into one series for the family of locks.
func ExampleWithNameLabel() {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.WithNameLabel(func(name string) string {
		if strings.HasPrefix(name, "job-") {
			return "job-*"
		}
		return name
	}))
	locker, err := memlock.New(memlock.NewMemory(), memlock.WithMetrics(m))
	if err != nil {
		panic(err)
	}
	for _, key := range []string{"job-17", "job-18", "job-19", "report"} {
		if err := locker.TryWithLock(context.Background(), key, "worker-1", func(context.Context) error { return nil }); err != nil {
			panic(err)
		}
	}

	printAcquisitions(reg)
	// Output:
	// name="job-*" 3
	// name="report" 1
}

// A nil name function is the default: the name as given.
func ExampleNew() {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.WithNameLabel(nil))
	locker, err := memlock.New(memlock.NewMemory(), memlock.WithMetrics(m))
	if err != nil {
		panic(err)
	}
	if err := locker.TryWithLock(context.Background(), "job-17", "worker-1", func(context.Context) error { return nil }); err != nil {
		panic(err)
	}
	printAcquisitions(reg)
	// Output:
	// name="job-17" 1
}

// printAcquisitions prints each series of baton_memlock_acquisitions_total
// in reg by its name label.
func printAcquisitions(reg *prometheus.Registry) {
	families, err := reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, f := range families {
		if f.GetName() != "baton_memlock_acquisitions_total" {
			continue
		}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "name" {
					fmt.Printf("name=%q %v\n", l.GetValue(), s.GetCounter().GetValue())
				}
			}
		}
	}
}
