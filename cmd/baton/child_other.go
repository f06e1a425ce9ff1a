//go:build !unix

package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// On systems without process groups CMD alone gets the signals, and it
// runs on if baton dies.
func startChild(c *exec.Cmd) (*child, error) {
	if err := c.Start(); err != nil {
		return nil, err
	}
	return &child{
		cmd: c,
		signal: func(s syscall.Signal) {
			if s == syscall.SIGKILL {
				c.Process.Kill()
				return
			}
			c.Process.Signal(s)
		},
		kill: func() { c.Process.Kill() },
	}, nil
}

const superviseArg = "__baton_supervise"

func runSupervisor([]string) int {
	fmt.Fprintln(os.Stderr, "baton: "+superviseArg+" is Linux only")
	return exitUsage
}

func exitStatus(ps *os.ProcessState) int { return ps.ExitCode() }
