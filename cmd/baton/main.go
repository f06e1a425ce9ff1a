// Command baton runs commands under a distributed lock or while leader,
// shows who holds what, serves an embedded etcd, and runs baton's
// benchmark. See the README's "The baton command" for every command and the
// exit-code table.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if code, ok := runFaultsChild(); ok {
		os.Exit(code)
	}
	if len(os.Args) > 1 && os.Args[1] == superviseArg {
		os.Exit(runSupervisor(os.Args[2:]))
	}
	stdio := &IO{
		In:            os.Stdin,
		Out:           os.Stdout,
		Err:           os.Stderr,
		ErrIsTerminal: isTerminal(os.Stderr),
		Getenv:        os.Getenv,
		Notify: func(c chan<- os.Signal) func() {
			signal.Notify(c, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
			return func() { signal.Stop(c) }
		},
	}
	os.Exit(Main(os.Args[1:], stdio))
}

// isTerminal reports whether f is a character device, which is what a
// terminal is. /dev/null is one too; writing live progress there is
// harmless.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
