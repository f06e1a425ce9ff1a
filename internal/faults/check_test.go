//go:build linux

package faults

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

func wop(w int, id int64, start, end int64, status, val, prev string, tok int64) *Op {
	in := Record{F: "write", Val: val, Prev: prev, Tok: tok}
	return &Op{Worker: w, ID: id, F: "write", Start: start, End: end, Status: status, In: in, Out: in}
}

func rop(w int, id int64, start, end int64, val string, tok int64) *Op {
	return &Op{Worker: w, ID: id, F: "read", Start: start, End: end, Status: recOK, Out: Record{Val: val, Tok: tok}}
}

// The fenced-register model accepts a history of holders taking turns, and
// an unknown write either way.
func TestRegisterModelAccepts(t *testing.T) {
	h := []*Op{
		rop(0, 1, 0, 10, "", 0),
		wop(0, 2, 20, 30, recOK, "a", "", 5),
		rop(1, 1, 40, 50, "a", 5),
		wop(1, 2, 60, 70, recUnknown, "b", "a", 8), // may or may not apply
		rop(0, 3, 80, 90, "a", 5),                  // ... not yet
		rop(1, 3, 100, 110, "b", 8),                // ... now it has
	}
	res := checkLinearizable(registerOps(h, &regOut{Val: "b", Tok: 8}, 200), filepath.Join(t.TempDir(), "ok.html"), time.Minute)
	if res.Result != porcupine.Ok {
		t.Fatalf("result %v, want Ok", res.Result)
	}
}

// A paused holder's late write (lower token, stale read) is illegal.
func TestRegisterModelRejectsStaleWrite(t *testing.T) {
	h := []*Op{
		rop(0, 1, 0, 10, "", 0),
		wop(1, 1, 20, 30, recOK, "b", "", 8),
		wop(0, 2, 40, 50, recOK, "a", "", 5), // paused holder wakes up
	}
	res := checkLinearizable(registerOps(h, &regOut{Val: "a", Tok: 5}, 100), filepath.Join(t.TempDir(), "bad.html"), time.Minute)
	if res.Result != porcupine.Illegal {
		t.Fatalf("result %v, want Illegal", res.Result)
	}
	an := checkRegisterLog(h, []logEntry{{1, "b", 8, ""}, {2, "a", 5, ""}})
	kinds := map[string]bool{}
	for _, a := range an {
		kinds[a.Kind] = true
	}
	if !kinds["lost-update"] || !kinds["stale-token"] {
		t.Fatalf("anomalies %v, want lost-update and stale-token", an)
	}
}

func TestRegisterLogLostAck(t *testing.T) {
	h := []*Op{wop(0, 1, 0, 10, recOK, "a", "", 1), wop(0, 2, 20, 30, recFail, "b", "a", 1)}
	an := checkRegisterLog(h, []logEntry{{1, "b", 1, "a"}})
	kinds := map[string]bool{}
	for _, a := range an {
		kinds[a.Kind] = true
	}
	if !kinds["lost-ack"] || !kinds["failed-applied"] || !kinds["lost-update"] {
		t.Fatalf("anomalies %v", an)
	}
}

func TestCheckBank(t *testing.T) {
	tr := func(id string, status string, from, to int, amt int64) *Op {
		in := Record{F: "transfer", TxID: id, From: from, To: to, Amt: amt}
		return &Op{F: "transfer", Status: status, In: in, Out: in, Start: 1}
	}
	h := []*Op{tr("x", recOK, 0, 1, 5), tr("y", recUnknown, 1, 0, 2), tr("z", recOK, 0, 1, 1)}
	// z is acknowledged but missing; y applied.
	an, ua, un := checkBank(h, bankFinal{Bal: []int64{97, 103}, Applied: map[string]bool{"x": true, "y": true}}, 2, 100)
	if ua != 1 || un != 0 || len(an) != 1 || an[0].Kind != "lost-ack" {
		t.Fatalf("anomalies %v, unknown applied %d not %d", an, ua, un)
	}
	an, _, _ = checkBank(h[:2], bankFinal{Bal: []int64{90, 110}, Applied: map[string]bool{"x": true}}, 2, 100)
	if len(an) != 1 || an[0].Kind != "balances" {
		t.Fatalf("anomalies %v, want balances", an)
	}
}

func TestCheckQueue(t *testing.T) {
	enq := func(v, st string) *Op { return &Op{F: "enqueue", Status: st, In: Record{Val: v}, Start: 1} }
	deq := func(v, st string) *Op { return &Op{F: "dequeue", Status: st, Out: Record{Val: v}, Start: 2} }
	an, _ := checkQueue([]*Op{enq("a", recOK), enq("b", recOK), deq("a", recOK), deq("", recUnknown)}, nil)
	if len(an) != 0 {
		t.Fatalf("one unknown dequeue explains one missing item: %v", an)
	}
	an, _ = checkQueue([]*Op{enq("a", recOK), enq("b", recOK), deq("a", recOK)}, []string{"a"})
	kinds := map[string]bool{}
	for _, a := range an {
		kinds[a.Kind] = true
	}
	if !kinds["duplicate"] || !kinds["lost"] {
		t.Fatalf("anomalies %v, want duplicate and lost", an)
	}
}

func TestCheckSemaphore(t *testing.T) {
	ok := &Op{F: "enter", Status: recOK, In: Record{Tok: 7}, Out: Record{Bal: []int64{9, 7, 3}}}
	bad := &Op{F: "enter", Status: recOK, In: Record{Tok: 9}, Out: Record{Bal: []int64{9, 7, 3}}}
	if an := checkSemaphore([]*Op{ok}, 2); len(an) != 0 {
		t.Fatal(an)
	}
	if an := checkSemaphore([]*Op{bad}, 2); len(an) != 1 || an[0].Kind != "over-limit" {
		t.Fatal(an)
	}
}

// A member whose port is taken fails with the cause and its log paths.
func TestMemberPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := t.TempDir()
	m := &member{cfg: memberConfig{
		Name: "m0", Dir: filepath.Join(dir, "m0"),
		ListenClient: l.Addr().String(), AdvertiseClient: l.Addr().String(),
		ListenPeer: "127.0.0.1:1", AdvertisePeer: "127.0.0.1:1",
		InitialCluster: "m0=http://127.0.0.1:1",
		LogPath:        filepath.Join(dir, "m0.log"),
	}, stderrPath: filepath.Join(dir, "m0.stderr")}
	err = m.start(time.Minute)
	if err == nil {
		m.stop(10 * time.Second)
		t.Fatal("member started on a port in use")
	}
	err = withStderr(err, []*member{m})
	for _, want := range []string{"exited before it was ready", m.stderrPath, m.cfg.LogPath} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	t.Log(err)
}

// A member that cannot reach a quorum is reported, with its log paths,
// once the bound passes.
// A run folder that holds an earlier run is refused before anything
// starts: its histories would be appended to, and the checkers would judge
// both runs' operations as one history (which once reported thousands of
// lost and duplicated operations that no run had).
func TestRunFolderMustBeEmpty(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "histories"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Run(context.Background(), Options{Dir: dir, Duration: time.Second, Seed: 1})
	if err == nil || !strings.Contains(err.Error(), "not empty") || !strings.Contains(err.Error(), "FAULTS_DIR") {
		t.Fatalf("Run on a used folder: %v, want a not-empty error naming FAULTS_DIR", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("Run wrote into the refused folder: %v", ents)
	}
}

func TestMemberNeverReady(t *testing.T) {
	ports, err := freePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	m := &member{cfg: memberConfig{
		Name: "m0", Dir: filepath.Join(dir, "m0"),
		ListenClient: ports[0], AdvertiseClient: ports[0],
		ListenPeer: ports[1], AdvertisePeer: ports[1],
		InitialCluster: "m0=http://" + ports[1] + ",m1=http://" + ports[2],
		LogPath:        filepath.Join(dir, "m0.log"),
	}, stderrPath: filepath.Join(dir, "m0.stderr")}
	err = m.start(3 * time.Second)
	m.stop(10 * time.Second)
	if err == nil || !strings.Contains(err.Error(), "not ready after 3s") || !strings.Contains(err.Error(), m.cfg.LogPath) {
		t.Fatalf("error %v, want not ready with the log path", err)
	}
}

func TestCheckMemlock(t *testing.T) {
	sec := int64(time.Second)
	hold := func(w int, start, end int64) *Op {
		return &Op{Worker: w, F: "hold", Start: start * sec, End: end * sec, Status: recOK}
	}
	// w1 enters at 10 s while w0 (entered at 9 s) runs on to 10.5 s.
	h := []*Op{hold(0, 9, 10), hold(1, 10, 11)}
	h[0].End = 10*sec + sec/2
	an, _ := checkMemlock(wlRedis, h, nil, nil)
	if len(an) != 1 || an[0].Kind != "unexplained-overlap" {
		t.Fatalf("no fault: %v", an)
	}
	restart := Fault{Kind: fCacheRestart, Scope: wlRedis, Start: 9*sec + sec/2, End: 9*sec + sec/2}
	an, note := checkMemlock(wlRedis, h, []Fault{restart}, nil)
	if len(an) != 0 || !strings.Contains(note, "restart") {
		t.Fatalf("restart explains it: %v %s", an, note)
	}
	// A holder that runs on 5 s after the restart let another in was not
	// cancelled in time.
	h[0].End = 15 * sec
	an, _ = checkMemlock(wlRedis, h, []Fault{restart}, nil)
	if len(an) != 1 || an[0].Kind != "late-cancel" {
		t.Fatalf("late cancel: %v", an)
	}
	// A holder that logged a failed refresh during its hold (starved, or
	// cut off from the cache) explains it; one of another worker does not.
	h[0].End = 10*sec + sec/2
	failing := []Record{{Type: recEvent, Worker: 0, F: evRefreshFailing, Time: 9*sec + sec/2}}
	if an, note = checkMemlock(wlRedis, h, nil, failing); len(an) != 0 || !strings.Contains(note, "refreshes failed") {
		t.Fatalf("refreshes failed explain it: %v %s", an, note)
	}
	failing[0].Worker = 1
	if an, _ = checkMemlock(wlRedis, h, nil, failing); len(an) != 1 || an[0].Kind != "unexplained-overlap" {
		t.Fatalf("another worker's failed refresh: %v", an)
	}
	h[0].End = 15 * sec
	// A fault of another workload explains nothing.
	restart.Scope = wlMemcached
	if an, _ = checkMemlock(wlRedis, h, []Fault{restart}, nil); len(an) != 1 || an[0].Kind != "unexplained-overlap" {
		t.Fatalf("other scope: %v", an)
	}
}
