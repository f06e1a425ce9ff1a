package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// jsonRecords parses the lines of stderr that are JSON log records.
func jsonRecords(t *testing.T, stderr string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(stderr, "\n") {
		if !strings.HasPrefix(l, "{") {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("a log line is not JSON: %q: %v", l, err)
		}
		out = append(out, rec)
	}
	return out
}

// lockRevoked runs lock NAME with extra global flags, revokes its lease
// while CMD runs, and returns baton's stderr once it exited 71.
func lockRevoked(t *testing.T, name string, flags ...string) (stderr, key string) {
	env, c := serverEnv(t)
	args := append(flags, "lock", name, "--", "sh", "-c", `echo "running $BATON_LOCK_KEY"; exec sleep 100`)
	p := start(t, env, args...)
	line, _ := p.stdout.waitFor(t, p.name, 0, "running ", 30*time.Second)
	key = strings.TrimPrefix(line, "running ")
	if _, err := c.Revoke(ctxT(t, 10*time.Second), leaseOf(t, c, key)); err != nil {
		t.Fatal(err)
	}
	p.waitCode(exitLost, 30*time.Second)
	return p.stderr.text(), key
}

// TestLogLockLostJSON: with --log-format json, a lock lost by a revoked
// lease is a structured "mutex lost" record with cause=session, its key
// and token, from the library's logger; baton's own lines are unchanged.
func TestLogLockLostJSON(t *testing.T) {
	stderr, key := lockRevoked(t, "logged", "--log-format", "json", "--log-level", "warn")
	var found bool
	for _, rec := range jsonRecords(t, stderr) {
		if rec["msg"] != "mutex lost" {
			continue
		}
		found = true
		if rec["level"] != "WARN" || rec["cause"] != "session" || rec["key"] != key || rec["name"] != "logged" || rec["token"] == nil || rec["lease"] == nil {
			t.Errorf("mutex lost record %v: want level WARN, cause session, key %s, name logged, a token and a lease", rec, key)
		}
	}
	if !found {
		t.Errorf("no \"mutex lost\" record on stderr:\n%s", stderr)
	}
	if !strings.Contains(stderr, "baton: lock logged lost (session expired or key deleted): sh was stopped (killed by SIGTERM)") {
		t.Errorf("baton's own line about the loss is missing:\n%s", stderr)
	}
}

// TestLogDefaultQuiet: by default (--log-level error) the same loss prints
// baton's two lines, as before it had logs, and no record.
func TestLogDefaultQuiet(t *testing.T) {
	stderr, _ := lockRevoked(t, "quiet")
	lines := strings.Split(stderr, "\n")
	want := []string{
		"baton: lock quiet lost (session expired or key deleted): stopping sh (SIGTERM, SIGKILL after 5s)",
		"baton: lock quiet lost (session expired or key deleted): sh was stopped (killed by SIGTERM)",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("stderr:\n%s\nwant exactly:\n%s", stderr, strings.Join(want, "\n"))
	}
}

// TestLogElectorJSON: elect passes the logger to the leader elector,
// whose records name the election.
func TestLogElectorJSON(t *testing.T) {
	env, _ := serverEnv(t)
	code, _, stderr := runBaton(t, env, 30*time.Second, "--log-format", "json", "--log-level", "info", "elect", "el", "--", "true")
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr)
	}
	var leading, started bool
	for _, rec := range jsonRecords(t, stderr) {
		switch rec["msg"] {
		case "leading":
			leading = rec["election"] == "el" && rec["rev"] != nil
		case "CMD started":
			started = rec["cmd"] == "true"
		}
	}
	if !leading || !started {
		t.Errorf("want the elector's \"leading\" record for el and baton's \"CMD started\"; stderr:\n%s", stderr)
	}
}
