package bench

import (
	"bytes"
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/batonhq/baton/internal/testutil"
)

func TestMain(m *testing.M) { testutil.VerifyMain(m) }

func TestRatioReadsTheRightWay(t *testing.T) {
	if r := (Row{Baton: 200, Peer: 20, HigherIsBetter: true}).Ratio(); r != 10 {
		t.Fatalf("throughput ratio %v", r)
	}
	if r := (Row{Baton: 0.5, Peer: 50}).Ratio(); r != 100 {
		t.Fatalf("latency ratio %v", r)
	}
	if r := (Row{Baton: 1}).Ratio(); !math.IsNaN(r) {
		t.Fatalf("floor row ratio %v", r)
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	if p := Percentile(ds, 50); p != 50 {
		t.Fatalf("p50 %v", p)
	}
	if p := Percentile(ds, 99); p != 99 {
		t.Fatalf("p99 %v", p)
	}
}

func TestFloorRowsAndTable(t *testing.T) {
	e, err := startEtcd()
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := floorRows(ctx, e, 20)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].Baton <= 0 || rows[1].Baton <= 0 {
		t.Fatalf("floor rows %+v", rows)
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, rows); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "floor: raw Put") {
		t.Fatalf("table:\n%s", buf.String())
	}
	buf.Reset()
	if err := WriteJSON(&buf, rows); err != nil || !strings.Contains(buf.String(), `"workload"`) {
		t.Fatalf("json %v:\n%s", err, buf.String())
	}
}

// The contended workload checks mutual exclusion itself; a short run of
// both implementations must complete without a double holder.
func TestContendedLockBothImplementations(t *testing.T) {
	e, err := startEtcd()
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, im := range []impl{batonImpl, etcdImpl} {
		rate, err := contendedLock(ctx, e, im, 3, 300*time.Millisecond)
		if err != nil {
			t.Fatalf("%s: %v", im.name, err)
		}
		if rate <= 0 {
			t.Fatalf("%s: rate %v", im.name, rate)
		}
	}
}
