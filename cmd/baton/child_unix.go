//go:build unix

package main

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
)

// prepareChild puts CMD in a process group of its own, so that a signal
// reaches everything CMD started ("sh -c 'a; b'" and its children), not
// only its first process. The price: CMD is not in the terminal's
// foreground group, so it must not read from the terminal.
func prepareChild(c *exec.Cmd) {
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// signalGroup sends sig to CMD's process group. A group that is already
// gone is not an error.
func signalGroup(p *os.Process, sig syscall.Signal) error {
	err := syscall.Kill(-p.Pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// exitStatus is CMD's exit code as a shell reports it: its own code, or
// 128+N when signal N killed it.
func exitStatus(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return exitSignalBase + int(ws.Signal())
	}
	return ps.ExitCode()
}
