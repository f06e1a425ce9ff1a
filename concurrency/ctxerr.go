package concurrency

import (
	"context"
	"errors"
	"time"
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
