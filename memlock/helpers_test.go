package memlock_test

import (
	"context"
	"testing"
	"time"

	"github.com/batonhq/baton/memlock"
)

// waitLimit bounds every wait in these tests on an event that must come;
// it is generous, so that only a real hang trips it.
const waitLimit = 20 * time.Second

// holder runs TryWithLock in a goroutine with an f that holds the lock until
// its context ends.
type holder struct {
	held  chan context.Context // f's context, sent when f starts
	ended chan ended           // when and why f's context ended
	ret   chan error           // TryWithLock's result
}

type ended struct {
	at    time.Time
	cause error
}

func startHolder(ctx context.Context, l *memlock.Locker, key, clientID string) *holder {
	h := &holder{held: make(chan context.Context, 1), ended: make(chan ended, 1), ret: make(chan error, 1)}
	go func() {
		h.ret <- l.TryWithLock(ctx, key, clientID, func(ctx context.Context) error {
			h.held <- ctx
			<-ctx.Done()
			h.ended <- ended{time.Now(), context.Cause(ctx)}
			return context.Cause(ctx)
		})
	}()
	return h
}

// waitHeld waits until f runs and returns its context; it fails the test if
// TryWithLock returned instead.
func (h *holder) waitHeld(t *testing.T) context.Context {
	t.Helper()
	select {
	case ctx := <-h.held:
		return ctx
	case err := <-h.ret:
		t.Fatalf("TryWithLock returned %v before f ran", err)
	case <-time.After(waitLimit):
		t.Fatal("f did not start")
	}
	return nil
}

// waitEnded waits until f's context ends.
func (h *holder) waitEnded(t *testing.T) ended {
	t.Helper()
	select {
	case e := <-h.ended:
		return e
	case <-time.After(waitLimit):
		t.Fatal("f's context did not end")
	}
	return ended{}
}

// waitReturn waits until TryWithLock returns.
func (h *holder) waitReturn(t *testing.T) error {
	t.Helper()
	select {
	case err := <-h.ret:
		return err
	case <-time.After(waitLimit):
		t.Fatal("TryWithLock did not return")
	}
	return nil
}

// lostWithin waits for f's context to end with ErrLockLost no later than
// limit after since, then for TryWithLock to return f's error.
func (h *holder) lostWithin(t *testing.T, since time.Time, limit time.Duration) {
	t.Helper()
	e := h.waitEnded(t)
	if e.cause != memlock.ErrLockLost {
		t.Fatalf("f's context ended with cause %v, want ErrLockLost", e.cause)
	}
	if d := e.at.Sub(since); d > limit {
		t.Errorf("loss seen %v after the fault, want within %v", d, limit)
	} else {
		t.Logf("loss seen %v after the fault", d)
	}
	if err := h.waitReturn(t); err != memlock.ErrLockLost {
		t.Errorf("TryWithLock returned %v, want f's error ErrLockLost", err)
	}
}

// mustNotRun is an f for calls that must fail to take the lock.
func mustNotRun(t *testing.T) func(context.Context) error {
	return func(context.Context) error {
		t.Error("f ran although the lock was not taken")
		return nil
	}
}
