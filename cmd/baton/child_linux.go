package main

import (
	"os/exec"
	"runtime"
	"syscall"
)

// prepareChild puts CMD in a process group of its own, so that a signal
// reaches everything CMD started ("sh -c 'a; b'" and its children), not
// only its first process. The price: CMD is not in the terminal's
// foreground group, so it must not read from the terminal.
//
// CMD also gets SIGKILL if baton dies (kill -9, a crash): baton's lease
// then expires after the TTL and someone else may take the lock, so CMD
// must not outlive baton. The kernel sends that signal when the thread
// that started CMD exits, so the caller keeps its goroutine on one thread
// (lockThread) for as long as CMD runs.
func prepareChild(c *exec.Cmd) {
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// lockThread pins the calling goroutine to its thread until unlock.
func lockThread() (unlock func()) {
	runtime.LockOSThread()
	return runtime.UnlockOSThread
}
