package main

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestChildTreeDiesWithBaton: when baton is killed (kill -9), everything
// its CMD started dies within a second (Linux): the processes of CMD's
// process group, and one that left the group with setsid. Issue 14: a
// parent-death signal reached sh alone, and its background sleeps ran on
// after the lock had passed to another holder.
func TestChildTreeDiesWithBaton(t *testing.T) {
	env, _ := serverEnv(t)
	const script = `setsid sleep 600 & echo "escaped $!"; echo "group $$"; sleep 600 & sleep 600 & wait`
	for _, args := range [][]string{
		{"lock", "ltree", "--", "sh", "-c", script},
		{"elect", "etree", "--", "sh", "-c", script},
	} {
		t.Run(args[0], func(t *testing.T) {
			p := start(t, env, args...)
			line, next := p.stdout.waitFor(t, p.name, 0, "escaped ", 30*time.Second)
			escaped, err := strconv.Atoi(strings.TrimPrefix(line, "escaped "))
			if err != nil {
				t.Fatal(err)
			}
			line, _ = p.stdout.waitFor(t, p.name, next, "group ", 30*time.Second)
			sh, err := strconv.Atoi(strings.TrimPrefix(line, "group "))
			if err != nil {
				t.Fatal(err)
			}
			pgid, ok := procGroup(sh)
			if !ok {
				t.Fatalf("no /proc entry for CMD's sh (pid %d)", sh)
			}
			t.Cleanup(func() { // if the test fails, leave nothing behind
				syscall.Kill(-pgid, syscall.SIGKILL)
				syscall.Kill(escaped, syscall.SIGKILL)
			})
			// The supervisor, sh and its two sleeps; then the kill.
			waitProcs(t, "CMD's group to reach 4 processes", 30*time.Second, func() bool { return len(groupMembers(pgid)) >= 4 })
			// setsid runs in CMD's group until its setsid(2) call: wait for
			// it to leave.
			waitProcs(t, "the setsid sleep to run outside CMD's group", 30*time.Second, func() bool {
				g, ok := procGroup(escaped)
				return ok && g != pgid && alive(escaped)
			})
			p.cmd.Process.Kill()
			p.wait(30 * time.Second)
			killed := time.Now()
			waitProcs(t, "CMD's processes to die after kill -9 of baton", time.Second, func() bool {
				return len(groupMembers(pgid)) == 0 && !alive(escaped)
			})
			t.Logf("CMD's tree gone %v after baton died", time.Since(killed).Round(time.Millisecond))
		})
	}
}

// waitProcs polls cond, which reads /proc: nothing signals the end of a
// process that is not our child.
func waitProcs(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// alive reports whether pid runs; a zombie waiting to be reaped is dead.
func alive(pid int) bool {
	f, ok := procStat(pid)
	return ok && len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// groupMembers lists the live processes of process group pgid.
func groupMembers(pgid int) []int {
	dirs, _ := os.ReadDir("/proc")
	var out []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if g, ok := procGroup(pid); ok && g == pgid && alive(pid) {
			out = append(out, pid)
		}
	}
	return out
}
