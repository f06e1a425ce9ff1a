package main

// CMD runs under a supervisor: baton itself, re-executed with
// superviseArg. The tree is
//
//	baton ── supervisor (process group G, child subreaper) ── CMD (in G) ── ...
//
// Why a supervisor: baton's lease outlives baton by up to the TTL, and
// once it expires someone else may take the lock, so nothing CMD started
// may run on when baton dies, whatever the way (kill -9 included). A
// parent-death signal (Pdeathsig) reaches only the direct child, not what
// it started ("sh -c 'a & b'" leaves a), and a signal to CMD's process
// group misses processes that left the group (setsid, a shell with job
// control). The supervisor closes both gaps:
//
//  1. It is a child subreaper (PR_SET_CHILD_SUBREAPER): every orphaned
//     descendant of CMD is re-parented to it, not to init, so it can find
//     all of them among its children.
//  2. It reads a pipe whose only write end baton holds. End of file means
//     baton has gone (the kernel closes the pipe of a killed process) or
//     that baton wants CMD killed (runChild's SIGKILL). Either way it
//     sends SIGKILL to every process of group G and to every child it has,
//     and again after each child it reaps (their orphans have just become
//     its children), until it has no child left.
//  3. When CMD itself exits, whatever CMD left behind is killed the same
//     way: the lock is released only once nothing CMD started still runs.
//     Then the supervisor exits as CMD did (same code, or killed by the
//     same signal), which is what baton reports.
//
// baton sends SIGINT, SIGTERM and SIGHUP to group G, so CMD gets them
// directly; the supervisor catches and ignores them.
//
// What it cannot cover: the supervisor killed with SIGKILL itself (by
// hand, by the OOM killer, or a kill -9 of the whole group G), after
// which processes outside G survive; and processes it may not signal (a
// setuid program that changed its user).

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// superviseArg is the hidden first argument that makes baton a
// supervisor: baton __baton_supervise PATH ARGV0 ARGS..., with the pipe on
// fd 3.
const superviseArg = "__baton_supervise"

// startChild starts c (Path resolved, Args as the user gave them) under
// a supervisor in a process group of its own.
func startChild(c *exec.Cmd) (*child, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	c.Args = append([]string{"baton", superviseArg, c.Path}, c.Args...)
	c.Path = "/proc/self/exe" // works even if baton's file was replaced since
	c.ExtraFiles = []*os.File{r}
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = c.Start()
	r.Close()
	if err != nil {
		w.Close()
		return nil, err
	}
	var once sync.Once
	return &child{
		cmd:    c,
		signal: func(s syscall.Signal) { signalGroup(c.Process, s) },
		kill:   func() { once.Do(func() { w.Close() }) },
	}, nil
}

// runSupervisor is main for superviseArg; args are PATH ARGV0 ARGS....
func runSupervisor(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "baton: "+superviseArg+" is baton's own, not a command")
		return exitUsage
	}
	const prSetChildSubreaper = 0x24
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		fmt.Fprintf(os.Stderr, "baton: supervisor: PR_SET_CHILD_SUBREAPER: %v\n", errno)
		return exitError
	}
	syscall.CloseOnExec(3)
	pipe := os.NewFile(3, "baton")
	// Caught, not ignored: an ignored signal would stay ignored in CMD.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)

	path, argv := args[0], args[1:]
	pid, err := syscall.ForkExec(path, argv, &syscall.ProcAttr{Env: os.Environ(), Files: []uintptr{0, 1, 2}})
	if err != nil {
		fmt.Fprintf(os.Stderr, "baton: run %s: %v\n", argv[0], err)
		return exitCannotRun
	}

	gone := make(chan struct{})
	go func() {
		var b [1]byte
		for {
			if _, err := pipe.Read(b[:]); err != nil {
				close(gone)
				return
			}
		}
	}()
	type reaped struct {
		pid int
		ws  syscall.WaitStatus
	}
	reapc := make(chan reaped)
	none := make(chan struct{})
	go func() {
		for {
			var ws syscall.WaitStatus
			p, err := syscall.Wait4(-1, &ws, 0, nil)
			if err == syscall.EINTR {
				continue
			}
			if err != nil { // ECHILD: no descendant is left at all
				close(none)
				return
			}
			reapc <- reaped{p, ws}
		}
	}()

	var (
		status   *syscall.WaitStatus
		cleaning bool
		again    <-chan time.Time // a fallback sweep while cleaning
	)
	sweep := func() {
		cleaning = true
		killDescendants()
		again = time.After(100 * time.Millisecond)
	}
	for {
		select {
		case <-sigs: // group G got it too, CMD included
		case <-gone:
			gone = nil
			sweep()
		case r := <-reapc:
			if r.pid == pid {
				ws := r.ws
				status = &ws
				sweep()
			} else if cleaning {
				sweep()
			}
		case <-again:
			sweep()
		case <-none:
			return exitAs(status)
		}
	}
}

// killDescendants sends SIGKILL to every other process of our group and
// to each of our children.
func killDescendants() {
	self := os.Getpid()
	for _, p := range childPIDs(self) {
		syscall.Kill(p, syscall.SIGKILL)
	}
	pg := syscall.Getpgrp()
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		p, err := strconv.Atoi(d.Name())
		if err != nil || p == self {
			continue
		}
		if g, ok := procGroup(p); ok && g == pg {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
}

// childPIDs lists pid's children, from each of its threads' list.
func childPIDs(pid int) []int {
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(s); err == nil {
				out = append(out, p)
			}
		}
	}
	return out
}

// procGroup reads the process group of pid from /proc/PID/stat.
func procGroup(pid int) (int, bool) {
	f, ok := procStat(pid)
	if !ok || len(f) < 3 {
		return 0, false
	}
	g, err := strconv.Atoi(f[2])
	return g, err == nil
}

// procStat returns the fields of /proc/PID/stat after the command name:
// state, ppid, pgrp, ....
func procStat(pid int) ([]string, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, false
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil, false
	}
	return strings.Fields(string(b[i+1:])), true
}

// exitAs ends the supervisor as CMD ended: with its code, or by the
// signal that killed it. nil (CMD's end not seen: baton is gone) exits
// as killed.
func exitAs(ws *syscall.WaitStatus) int {
	if ws == nil {
		return exitSignalBase + int(syscall.SIGKILL)
	}
	if !ws.Signaled() {
		return ws.ExitStatus()
	}
	sig := ws.Signal()
	switch sig {
	case syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGKILL:
		// Die of it, so that baton sees "killed by SIGTERM" as with CMD
		// itself. Go's runtime dies of these once no one is notified.
		signal.Reset(sig)
		syscall.Kill(os.Getpid(), sig)
		time.Sleep(time.Second) // the signal is on its way; not reached
	}
	return exitSignalBase + int(sig)
}
