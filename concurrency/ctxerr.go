package concurrency

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ctxEnded is the error a blocking call returns for err: ctx's own error
// when ctx ended and err is the failure of a request the ending cut short
// (etcd returns such a request's failure as a gRPC status, "rpc error:
// code = DeadlineExceeded", or as the server's "request timed out"), and err
// otherwise. nil stays nil: a request that succeeded as ctx ended did its
// work. Errors matching one of keep (the call's documented sentinels) are
// returned as they are.
//
// Unlike ctxErr, it does not trust ctx.Err() alone: gRPC fails a request on
// a timer of its own set to ctx's deadline, which on a busy machine can fire
// before the context's, so the request's error can arrive while ctx.Err() is
// still nil. A deadline that has passed means the context ends at any
// moment: wait for it.
func ctxEnded(ctx context.Context, err error, keep ...error) error {
	if err == nil {
		return nil
	}
	cerr := ctx.Err()
	if cerr == nil {
		dl, ok := ctx.Deadline()
		if !ok || time.Now().Before(dl) {
			return err
		}
		<-ctx.Done()
		cerr = ctx.Err()
	}
	if errors.Is(err, cerr) {
		return err
	}
	for _, k := range keep {
		if errors.Is(err, k) {
			return err
		}
	}
	return cerr
}

// joinContext is the context for a request that puts a key of the
// caller's (a waiter's key, a grant): derived from ctx's values but not
// ended by it, bounded by cleanupTimeout and by the client's life.
//
// A deadline that cuts such a request short after it was sent leaves its
// outcome unknown, and the delete that cleans up after it (abandon) can
// reach etcd before the request itself: the key then appears after the
// call returned and stays until the lease ends, holding up everyone behind
// it. Waiting for the answer instead makes the outcome known; the caller
// checks ctx right after and deletes the key through the ordinary path.
// It costs a cut-short call at most one request's time.
//
// It is the context of a cleanup (cleanupCtx), for the same reasons: the
// request must finish whatever the caller's context does, within bounds.
func joinContext(ctx context.Context, c *clientv3.Client) (context.Context, context.CancelFunc) {
	return cleanupCtx(ctx, c)
}

// leftErr is the error of a wait that failed with err and then deleted its
// waiter key, the delete failing with lerr (nil: it did not): err, saying
// that the key stays until the session ends unless the session is what
// ended.
func leftErr(err error, key string, lerr error) error {
	if lerr == nil || errors.Is(err, ErrSessionExpired) {
		return err
	}
	return fmt.Errorf("%w (and deleting the waiter key %q failed: %v; it goes with the session)", err, key, lerr)
}

// errKind is a sentinel with a text of its own that is a kind of a broader
// one: errors.Is(e, e.of) holds.
type errKind struct {
	text string
	of   error
}

func (e *errKind) Error() string        { return e.text }
func (e *errKind) Is(target error) bool { return target == e.of }

// ctxErr is ctxEnded for the waiting calls of Mutex and Election, whose
// sentinel is ErrSessionExpired.
func ctxErr(ctx context.Context, err error) error {
	return ctxEnded(ctx, err, ErrSessionExpired)
}
