//go:build !linux

package main

import (
	"context"
	"errors"
	"io"
)

func runFaultsChild() (int, bool) { return 0, false }

func runRecovery(context.Context, bool, bool, io.Writer, io.Writer) error {
	return errors.New("bench --recovery needs Linux (it stops member processes with SIGSTOP)")
}
