//go:build linux

package faults

import "os"

// RunChild runs this process's role when it is one of the suite's child
// processes (a member, a worker, a holder: the suite re-executes its own
// binary, with the role in the environment), and reports whether it was.
// A binary that runs the suite (its tests, baton bench --recovery) calls it
// first thing.
func RunChild() (code int, ok bool) {
	switch os.Getenv(roleEnv) {
	case "member":
		return runMember(), true
	case "worker":
		return runWorker(), true
	case "holder":
		return runHolder(), true
	}
	return 0, false
}
