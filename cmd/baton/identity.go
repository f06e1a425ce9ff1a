package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// identity is who holds (or waits for) a lock or an election: the value
// baton writes into its key, as JSON, so that "baton status" and waiting
// processes can say who is in the way. etcd's own Mutex and etcdctl ignore
// the value of lock keys, so they still exclude baton's holders and are
// excluded by them.
type identity struct {
	// Baton marks the value as baton's; it is the format's version, 1.
	Baton int    `json:"baton"`
	Kind  string `json:"kind"` // kindLock or kindElection
	Host  string `json:"host"`
	PID   int    `json:"pid"`
	Note  string `json:"note,omitempty"`
	// Queued is when this process joined the queue.
	Queued time.Time `json:"queued"`
	// Acquired is when it got the lock (or leadership); zero while it
	// waits. It is written by a guarded put on the holder's own key,
	// which keeps the key's create revision, so the fencing token and the
	// queue order are unchanged.
	Acquired time.Time `json:"acquired,omitzero"`
}

// Kinds of coordination entries that status shows.
const (
	kindLock      = "lock"
	kindElection  = "election"
	kindSemaphore = "semaphore"
)

func newIdentity(kind, note string) identity {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown-host"
	}
	return identity{Baton: 1, Kind: kind, Host: host, PID: os.Getpid(), Note: note, Queued: time.Now().UTC()}
}

func (id identity) encode() string {
	b, err := json.Marshal(id)
	if err != nil {
		panic(fmt.Sprintf("baton: encode identity: %v", err)) // plain struct: cannot fail
	}
	return string(b)
}

// parseIdentity reads a value written by baton; ok is false for any other
// value (etcd's Mutex writes "", elections hold their proposal).
func parseIdentity(v []byte) (id identity, ok bool) {
	if len(v) == 0 || v[0] != '{' {
		return identity{}, false
	}
	if err := json.Unmarshal(v, &id); err != nil || id.Baton != 1 {
		return identity{}, false
	}
	return id, true
}

// who describes the process: "web1 pid 4242 (nightly backup)".
func (id identity) who() string {
	s := id.Host + " pid " + strconv.Itoa(id.PID)
	if id.Note != "" {
		s += " (" + id.Note + ")"
	}
	return s
}

// holderOf describes the holder of kv for humans.
func holderOf(kv *mvccpb.KeyValue) string {
	if id, ok := parseIdentity(kv.Value); ok {
		return id.who()
	}
	if len(kv.Value) > 0 {
		return strconv.Quote(string(kv.Value))
	}
	return fmt.Sprintf("lease %x", kv.Lease)
}

// heldSince is when the holder of kv got it, if its value says so.
func heldSince(kv *mvccpb.KeyValue) (time.Time, bool) {
	id, ok := parseIdentity(kv.Value)
	if !ok || id.Acquired.IsZero() {
		return time.Time{}, false
	}
	return id.Acquired, true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// human prints a duration rounded for reading: 850ms, 12s, 3m4s, 2h5m.
func human(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d < time.Hour:
		s := d.Round(time.Second).String()
		if strings.HasSuffix(s, "m0s") {
			s = s[:len(s)-2]
		}
		return s
	default:
		return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	}
}
