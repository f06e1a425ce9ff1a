package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/batonhq/baton/internal/bench"
)

// benchOptions are the flags of "baton bench".
type benchOptions struct {
	*app
	quick    bool
	json     bool
	only     []string
	recovery bool
}

func newBenchCommand(a *app) *cobra.Command {
	o := &benchOptions{app: a}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Run the side-by-side benchmark: baton against etcd's own package",
		Long: `bench starts an embedded etcd for the run and measures every workload
with baton and with a peer (etcd's concurrency package and others) against
the same server, then prints one table: baton's figure, the peer's, and how
many times better baton is (the ratio; above 1 baton wins).

--quick finishes in under a minute, for smoke checks; the full run takes a
few minutes. Progress goes to stderr, the table to stdout. --endpoints and
the other connection flags are not used: bench brings its own server.`,
		Example: `  baton bench --quick
  baton bench --only core --json > core.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.quick, "quick", false, "short run (under a minute)")
	f.BoolVar(&o.json, "json", false, "print JSON instead of a table")
	f.BoolVar(&o.recovery, "recovery", false, "run the recovery scenarios instead: a 3-member cluster of member processes, faults (kill -9, SIGSTOP of the leader member and of a holder, a rolling restart), baton and etcd's package side by side (about 2 minutes; 1 minute with --quick)")
	f.StringSliceVar(&o.only, "only", nil, "run only these suites, comma-separated (one of: "+strings.Join(suiteNames(), ", ")+")")
	return cmd
}

func suiteNames() []string {
	var names []string
	for _, s := range bench.Suites() {
		names = append(names, s.Name)
	}
	return names
}

func (o *benchOptions) run(ctx context.Context) error {
	names := suiteNames()
	for _, n := range o.only {
		if !slices.Contains(names, n) {
			return usageErrorf("--only: no suite %q (suites: %s)", n, strings.Join(names, ", "))
		}
	}
	sigs, stopSignals := o.signals()
	defer stopSignals()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	if o.recovery {
		if len(o.only) > 0 {
			return usageErrorf("--recovery and --only do not go together")
		}
		if err := runRecovery(ctx, o.quick, o.json, o.io.Out, o.io.Err); err != nil {
			if ctx.Err() != nil {
				return withCode(exitSignalBase+2, fmt.Errorf("bench interrupted"))
			}
			return err
		}
		return nil
	}
	rows, err := bench.Run(ctx, bench.Options{Quick: o.quick, Only: o.only, Log: o.io.Err})
	if err != nil {
		if ctx.Err() != nil {
			return withCode(exitSignalBase+2, fmt.Errorf("bench interrupted"))
		}
		return err
	}
	if o.json {
		return bench.WriteJSON(o.io.Out, rows)
	}
	return bench.WriteTable(o.io.Out, rows)
}
