package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/concurrency"
)

// Exit codes. This is the one table of them; the README's "Exit codes"
// section shows the same table, and Main is the only place that turns an
// error into one.
//
// baton's own codes sit in 64-79, away from the small codes that scripts
// use (so that CMD's code can be passed on unchanged) and from 126-255,
// which shells use for "cannot run" and "killed by a signal". Where a code
// exists in sysexits.h (64, 69, 70, 75, 77, 78) its meaning is the same.
const (
	// exitOK: success; with CMD, CMD exited 0.
	exitOK = 0
	// exitUsage: bad flags or arguments; nothing was done.
	exitUsage = 64
	// exitUnavailable: no endpoint answered within --dial-timeout.
	exitUnavailable = 69
	// exitError: any other failure of baton itself (a request failed, the
	// server stopped, ...).
	exitError = 70
	// exitLost: the lock or the leadership was lost while held (the
	// session expired or the key was deleted); CMD, if any, was stopped.
	exitLost = 71
	// exitTimeout: --timeout passed before the lock or leadership came.
	exitTimeout = 72
	// exitHeld: --try found the lock held by someone else.
	exitHeld = 75
	// exitDenied: etcd refused the user: permission denied, or
	// authentication failed.
	exitDenied = 77
	// exitConfig: a TLS file could not be read or used.
	exitConfig = 78
	// exitCannotRun: CMD was found but could not be executed.
	exitCannotRun = 126
	// exitNotFound: CMD was not found.
	exitNotFound = 127
	// exitSignalBase: CMD was killed by signal N, or baton was interrupted
	// by signal N while waiting: 128+N (130 for SIGINT, 143 for SIGTERM).
	exitSignalBase = 128
)

// codeError carries an exit code to Main. A nil err means "exit with code
// and print nothing": CMD's own code is passed on that way.
type codeError struct {
	code int
	err  error
}

func (e *codeError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *codeError) Unwrap() error { return e.err }

// withCode makes err exit with code.
func withCode(code int, err error) error { return &codeError{code: code, err: err} }

// usageErrorf is a usage error: exit 64.
func usageErrorf(format string, args ...any) error {
	return withCode(exitUsage, fmt.Errorf(format, args...))
}

// exitCodeOf is the code of a process ended by sig, as shells report it.
func exitCodeOf(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return exitSignalBase + int(s)
	}
	return exitSignalBase + int(syscall.SIGINT)
}

// errUnreachable is the error (and exit 69) when no endpoint answers.
var errUnreachable = errors.New("cannot reach etcd")

// exitCode maps an error to the process's exit code. Errors that carry no
// code of their own are classified by what etcd said.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ce *codeError
	if errors.As(err, &ce) {
		return ce.code
	}
	switch {
	case errors.Is(err, errUnreachable):
		return exitUnavailable
	case isDenied(err):
		return exitDenied
	case errors.Is(err, concurrency.ErrLockLost), errors.Is(err, concurrency.ErrLeadershipLost):
		return exitLost
	}
	return exitError
}

// isDenied reports whether etcd refused the request for lack of rights or
// credentials.
func isDenied(err error) bool {
	switch {
	case errors.Is(err, rpctypes.ErrPermissionDenied),
		errors.Is(err, rpctypes.ErrAuthFailed),
		errors.Is(err, rpctypes.ErrUserEmpty),
		errors.Is(err, rpctypes.ErrInvalidAuthToken),
		errors.Is(err, rpctypes.ErrAuthOldRevision):
		return true
	}
	return status.Code(errors.Unwrap(err)) == codes.PermissionDenied || status.Code(err) == codes.PermissionDenied
}

// errorLine is the one line Main prints for err: no stack, no newlines.
func errorLine(err error) string {
	return "baton: " + strings.ReplaceAll(err.Error(), "\n", " ")
}
