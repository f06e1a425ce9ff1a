package layout

import (
	"strings"
	"testing"
)

func TestParseSemaphoreValue(t *testing.T) {
	for _, c := range []struct {
		v        string
		n, limit int64
		ok       bool
	}{
		{"2/5", 2, 5, true},
		{"1/1", 1, 1, true},
		{"", 0, 0, false},
		{"2", 0, 0, false},
		{"0/5", 0, 0, false},
		{"2/0", 0, 0, false},
		{"-1/5", 0, 0, false},
		{"a/b", 0, 0, false},
		{`{"kind":"lock"}`, 0, 0, false},
	} {
		n, limit, ok := ParseSemaphoreValue([]byte(c.v))
		if n != c.n || limit != c.limit || ok != c.ok {
			t.Errorf("ParseSemaphoreValue(%q) = %d, %d, %v; want %d, %d, %v", c.v, n, limit, ok, c.n, c.limit, c.ok)
		}
	}
	if v := SemaphoreValue(2, 7); v != "2/7" {
		t.Errorf("SemaphoreValue(2, 7) = %q", v)
	}
}

func TestGranted(t *testing.T) {
	id := func(n int64) int64 { return n }
	for _, c := range []struct {
		permits []int64
		limit   int64
		want    int
	}{
		{nil, 3, 0},
		{[]int64{2, 1, 1}, 3, 2},
		{[]int64{3}, 3, 1},
		{[]int64{2, 2, 1}, 3, 1}, // first come, first served: 1 waits behind 2
	} {
		if got := SemaphoreGranted(c.permits, id, c.limit); got != c.want {
			t.Errorf("SemaphoreGranted(%v, %d) = %d, want %d", c.permits, c.limit, got, c.want)
		}
	}
	isW := func(b bool) bool { return b }
	for _, c := range []struct {
		writers []bool
		want    int
	}{
		{nil, 0},
		{[]bool{true, false, false}, 1},
		{[]bool{false, false, true, false}, 2},
		{[]bool{false, false}, 2},
	} {
		if got := RWGranted(c.writers, isW); got != c.want {
			t.Errorf("RWGranted(%v) = %d, want %d", c.writers, got, c.want)
		}
	}
}

// TestParseRoundTrip: every key the builders make is parsed back to its
// primitive's name and role.
func TestParseRoundTrip(t *testing.T) {
	const lease = 0x694d7a8f8b2c1e05
	const short = 0x1f // a lease with few hex digits: lease16 pads it
	for _, c := range []struct {
		key   string
		lease int64
		value string
		name  string
		role  Role
	}{
		{Own(Dir("jobs/deploy"), lease), lease, "", "jobs/deploy", RoleParticipant},
		{Claim(Own(Dir("deploy"), lease), 2), lease, "", "deploy", RoleParticipant},
		{Own(Dir("pool"), short), short, SemaphoreValue(1, 3), "pool", RoleParticipant},
		{Own(Dir("rw")+RWRead, lease), lease, "", "rw", RoleReader},
		{Claim(Own(Dir("rw")+RWWrite, lease), 1), lease, "", "rw", RoleWriter},
		{Own(Dir("db")+DBWaiters, lease), lease, "", "db", RoleDBParticipant},
		{Dir("db") + DBReady, 0, "", "db", RoleDBReady},
		{Dir("db") + DBWithdrawn, 0, "", "db", RoleDBWithdrawn},
		{"gate", 0, "", "gate", RoleBarrier},
		{"ops/gate", 0, "", "ops/gate", RoleBarrier},
		{QueueItem(Dir("q"), 7), 0, "job", "q", RoleQueueItem},
		{QueueItem(Dir("q"), 8), 0, "", "q", RoleQueueItem},
		{PriorityItem(Dir("pq"), 3, 7), 0, "job", "pq", RoleQueueItem},
		{ArrivalKey(Dir("pq"), 7), 0, "", "pq", RoleQueueArrival},
		{Dir("q") + QueueSeq, 0, "12", "q", RoleQueueCounter},
		{QueueWaiter(Dir("q"), short, 1), short, "", "q", RoleQueueWaiter},
		{QueueWaiter(Dir("q"), lease, 3), lease, "", "q", RoleQueueWaiter},
		{QueueClaimRecord(Dir("q"), short, 0), short, "42", "q", RoleQueueClaim},
		// Not primitives' keys.
		{"data/x", 0, "v", "", RoleNone},
		{Own(Dir("x"), lease), short, "", "", RoleNone}, // on another lease
		{"x/1f-x", short, "", "", RoleNone},
		{"x/1f-01", short, "", "", RoleNone},
		{"/1f", short, "", "", RoleNone},
		{Dir("q") + QueueSeq, 0, "abc", "", RoleNone},
	} {
		got := Parse(c.key, c.lease, []byte(c.value))
		if got.Name != c.name || got.Role != c.role {
			t.Errorf("Parse(%q, %x, %q) = %q %v, want %q %v", c.key, c.lease, c.value, got.Name, got.Role, c.name, c.role)
		}
	}
	if k := PriorityItem(Dir("pq"), 3, 7); k != "pq/00003/00000000000000000007" {
		t.Errorf("PriorityItem = %q", k)
	}
	if k := QueueWaiter(Dir("q"), short, 1); !strings.HasPrefix(k, "q/w/000000000000001f-") {
		t.Errorf("QueueWaiter = %q", k)
	}
}
