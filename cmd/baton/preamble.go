package main

import (
	"context"
	"math"
	"os"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// preamble is what lock and elect have set up before they lock or
// campaign (begin).
type preamble struct {
	ttl  int // --ttl in whole seconds, as the command's check left it
	c    *clientv3.Client
	sigs <-chan os.Signal
	// closeClient closes c once; a command that must end promptly calls
	// it early, and later calls return the first one's error.
	closeClient func() error
}

// begin is the one preamble of lock and elect: it checks the flags they
// share and then the command's own (check gets the TTL in whole seconds
// and returns the one to use), listens for SIGINT, SIGTERM and SIGHUP,
// connects, and warns when name nests with another live name. end closes
// the client and stops the signals.
func (a *app) begin(ctx context.Context, name string, ttl, timeout, killGrace time.Duration, check func(ttlSeconds int) (int, error)) (p *preamble, end func(), err error) {
	ttlSeconds, err := validateHold(name, ttl, timeout, killGrace)
	if err != nil {
		return nil, nil, err
	}
	if ttlSeconds, err = check(ttlSeconds); err != nil {
		return nil, nil, err
	}
	sigs, stopSignals := a.signals()
	c, err := a.connect(ctx)
	if err != nil {
		stopSignals()
		return nil, nil, err
	}
	p = &preamble{ttl: ttlSeconds, c: c, sigs: sigs, closeClient: sync.OnceValue(c.Close)}
	a.warnNested(c, name)
	return p, func() {
		p.closeClient()
		stopSignals()
	}, nil
}

// validateHold checks what lock and elect share.
func validateHold(name string, ttl, timeout, killGrace time.Duration) (ttlSeconds int, err error) {
	switch {
	case name == "":
		return 0, usageErrorf("NAME must not be empty")
	case ttl < time.Second:
		return 0, usageErrorf("--ttl must be at least 1s, got %v", ttl)
	case timeout < 0:
		return 0, usageErrorf("--timeout must be >= 0, got %v", timeout)
	case killGrace < 0:
		return 0, usageErrorf("--kill-grace must be >= 0, got %v", killGrace)
	}
	return int(math.Ceil(ttl.Seconds())), nil
}
