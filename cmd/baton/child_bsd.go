//go:build unix && !linux

package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// startChild puts CMD in a process group of its own, so that a signal
// reaches everything CMD started, not only its first process. CMD must not
// read from the terminal. Unlike on Linux (see child_linux.go), there is
// no supervisor: if baton dies (kill -9), CMD and what it started run on,
// and processes that leave CMD's group are not signalled.
func startChild(c *exec.Cmd) (*child, error) {
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		return nil, err
	}
	return &child{
		cmd:    c,
		signal: func(s syscall.Signal) { signalGroup(c.Process, s) },
		kill:   func() { signalGroup(c.Process, syscall.SIGKILL) },
	}, nil
}

const superviseArg = "__baton_supervise"

func runSupervisor([]string) int {
	fmt.Fprintln(os.Stderr, "baton: "+superviseArg+" is Linux only")
	return exitUsage
}
