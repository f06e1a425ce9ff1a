//go:build linux

package faults

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batonhq/baton/internal/testutil"
)

var (
	flagDuration = flag.Duration("faults.duration", 0, "run TestFaultsLong with faults for this long")
	flagSeed     = flag.Uint64("faults.seed", 0, "seed of the run (0: random, printed)")
	flagDir      = flag.String("faults.dir", "", "folder for the run's report and logs (default: a new one under the temp dir)")
)

// TestMain runs the member and worker roles of the suite's child processes
// (this binary, re-executed), and the tests otherwise.
func TestMain(m *testing.M) {
	if code, ok := RunChild(); ok {
		os.Exit(code)
	}
	testutil.VerifyMain(m)
}

func seed(t *testing.T) uint64 {
	s := *flagSeed
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -args -faults.seed=%d)", s, s)
	return s
}

func runSuite(t *testing.T, d time.Duration) {
	opt := Options{Dir: *flagDir, Seed: seed(t), Duration: d, Logf: t.Logf}
	// The memlock workloads need memcached and redis-server: missing ones
	// fail the run under CI and leave those workloads out otherwise.
	t.Run("memlock-servers", func(t *testing.T) {
		testutil.RequireBinary(t, "memcached", "memcached")
		testutil.RequireBinary(t, "redis-server", "redis-server")
		opt.Memlock = true
	})
	if t.Failed() {
		t.FailNow()
	}
	if !opt.Memlock {
		t.Log("memlock workloads left out: memcached or redis-server missing")
	}
	if opt.Dir == "" {
		dir, err := os.MkdirTemp("", "baton-faults-")
		if err != nil {
			t.Fatal(err)
		}
		opt.Dir = dir
	}
	t.Logf("run folder: %s", opt.Dir)
	res, err := Run(context.Background(), opt)
	if err != nil {
		t.Fatalf("%v\nrun folder: %s", err, opt.Dir)
	}
	t.Logf("report: %s (%v)\n%s", opt.Dir+"/report.txt", res.Elapsed.Round(time.Second), res.Table)
	if fs := res.Failures(); len(fs) > 0 {
		t.Errorf("fault suite failed (report %s/report.txt):\n%s", opt.Dir, strings.Join(fs, "\n"))
		return
	}
	// The members' data (about 200 MB of preallocated WAL) is kept only
	// when the run failed; the report, histories and logs stay.
	os.RemoveAll(filepath.Join(opt.Dir, "data"))
}

// TestFaultsShort runs one round of every fault against every workload.
func TestFaultsShort(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	runSuite(t, 0)
}

// TestFaultsLong runs faults for -faults.duration (make faults).
func TestFaultsLong(t *testing.T) {
	if *flagDuration == 0 {
		t.Skip("needs -faults.duration")
	}
	runSuite(t, *flagDuration)
}
