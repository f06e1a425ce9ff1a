//go:build !unix

package main

import (
	"os"
	"os/exec"
	"syscall"
)

// On systems without process groups CMD alone gets the signals.
func prepareChild(*exec.Cmd) {}

func lockThread() (unlock func()) { return func() {} }

func signalGroup(p *os.Process, sig syscall.Signal) error {
	if sig == syscall.SIGKILL {
		return p.Kill()
	}
	return p.Signal(sig)
}

func exitStatus(ps *os.ProcessState) int { return ps.ExitCode() }
