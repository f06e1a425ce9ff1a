//go:build unix && !linux

package main

import (
	"os/exec"
	"syscall"
)

// prepareChild puts CMD in a process group of its own, so that a signal
// reaches everything CMD started, not only its first process. CMD must not
// read from the terminal. Unlike on Linux, CMD is not killed if baton
// dies: nothing in these systems' exec says so.
func prepareChild(c *exec.Cmd) {
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

func lockThread() (unlock func()) { return func() {} }
