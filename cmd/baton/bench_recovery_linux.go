//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/batonhq/baton/internal/faults"
)

// runFaultsChild runs the role of a member or holder process that
// "baton bench --recovery" started (it re-executes baton).
func runFaultsChild() (int, bool) { return faults.RunChild() }

// runRecovery runs the recovery scenarios and writes their table (or
// JSON) to out.
func runRecovery(ctx context.Context, quick, asJSON bool, out, log io.Writer) error {
	rounds := 3
	if quick {
		rounds = 1
	}
	dir, err := os.MkdirTemp("", "baton-bench-recovery-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	res, err := faults.RunRecovery(ctx, faults.RecoveryOptions{Dir: dir, Rounds: rounds, Logf: func(format string, args ...any) {
		fmt.Fprintf(log, format+"\n", args...)
	}})
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(res.Rows)
	}
	res.WriteTable(out)
	return nil
}
