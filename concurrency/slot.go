package concurrency

import (
	"context"
	"sync/atomic"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// slot is the key a Mutex or Election handle queues with. By default every
// handle of one session on one prefix shares the key dir + hex(lease), so
// that they are one participant, as in etcd's package: a second handle
// finds the key the first one made, holds when it holds and waits where it
// waits. A handle made WithExclusive has a key of its own instead.
type slot struct {
	s         *Session
	dir, key  string
	exclusive bool
	p         *participant // the shared key's bookkeeping; nil when exclusive
	over      atomic.Bool  // the acquisition was ended (giveUp or done)
}

// takeSlot claims the key for one acquisition. Every successful takeSlot
// is ended by exactly one giveUp (the acquisition failed) or done (it was
// released or found lost).
func takeSlot(s *Session, dir string, exclusive bool) (*slot, error) {
	if exclusive {
		key, err := s.claimExclusive(dir)
		if err != nil {
			return nil, err
		}
		return &slot{s: s, dir: dir, key: key, exclusive: true}, nil
	}
	key, err := s.useShared(dir)
	if err != nil {
		return nil, err
	}
	s.namesMu.Lock()
	p := s.shared[dir]
	s.namesMu.Unlock()
	return &slot{s: s, dir: dir, key: key, p: p}, nil
}

// serialize runs f with the shared key's operations serialized: a join, the
// delete of a failed acquisition and a release never overlap among the
// handles of one session, so that a join never adopts a key that another
// handle's cleanup is deleting.
func (sl *slot) serialize(f func() error) error {
	if sl.p == nil {
		return f()
	}
	sl.p.op.Lock()
	defer sl.p.op.Unlock()
	return f()
}

// giveUp ends a failed acquisition: it deletes the key, unless another
// handle of the session still waits for or holds the shared key. rev is
// the key's create revision, 0 when a join's outcome is unknown, and -1
// when nothing was written.
func (sl *slot) giveUp(ctx context.Context, rev int64) error {
	if sl.over.Swap(true) {
		return nil
	}
	var err error
	sl.serialize(func() error {
		if (sl.exclusive || sl.s.doneShared(sl.dir, 0, false)) && rev >= 0 {
			if rev > 0 {
				err = leave(ctx, sl.s.Client(), sl.key, rev)
			} else {
				err = abandon(ctx, sl.s.Client(), sl.s.Lease(), sl.key)
			}
		}
		return nil
	})
	if sl.exclusive {
		sl.s.releaseExclusive(sl.dir, sl.key)
	}
	return err
}

// release deletes the key if it is still the one created at rev, and ends
// the acquisition when the request got an answer. It reports whether the
// key was there to delete. A shared key that another handle of the session
// released already counts as there: the session released it on purpose.
func (sl *slot) release(ctx context.Context, rev int64) (present bool, hdr *pb.ResponseHeader, err error) {
	err = sl.serialize(func() error {
		released, h, err := releaseKey(ctx, sl.s.Client(), sl.key, rev)
		if err != nil {
			return err
		}
		hdr, present = h, released || !sl.exclusive && sl.s.releasedShared(sl.dir, rev)
		sl.done(rev, released)
		return nil
	})
	return present, hdr, err
}

// done ends an acquisition that needs no request: released reports whether
// it was released on purpose (rather than found lost).
func (sl *slot) done(rev int64, released bool) {
	if sl.over.Swap(true) {
		return
	}
	if sl.exclusive {
		sl.s.releaseExclusive(sl.dir, sl.key)
		return
	}
	sl.s.doneShared(sl.dir, rev, released)
}
