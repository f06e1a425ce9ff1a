//go:build linux

package faults

import (
	"context"
	"flag"
	"strings"
	"testing"
	"time"
)

var flagRecovery = flag.Bool("faults.recovery", false, "run TestRecoveryLong: every recovery scenario, 5 rounds, with a 12 s pause")

func TestRecovery(t *testing.T) {
	rounds, long := 2, false
	if *flagRecovery {
		rounds, long = 5, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := RunRecovery(ctx, RecoveryOptions{Dir: t.TempDir(), Rounds: rounds, Long: long, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	res.WriteTable(&b)
	t.Logf("recovery:\n%s", b.String())
	// The property, with a margin for a busy machine: on NewClient, a
	// paused leader member stalls locks and elections for less than the
	// pause (etcd's package stalls for all of it).
	for _, sc := range []string{recPause, recCampaign} {
		if row := res.Row(sc, contBaton); row == nil || row.Max() >= 4*time.Second {
			t.Errorf("%s: baton's recovery %v is not shorter than the 4 s pause", sc, row.Samples)
		}
	}
}
