package concurrency

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/internal/obs"
)

// Errors of Election. The first two have the same text as etcd's package.
var (
	// ErrElectionNotLeader is returned by Proclaim and Guard when this
	// Election does not lead.
	ErrElectionNotLeader = errors.New("election: not leader")
	// ErrElectionNoLeader is returned by Leader when nobody leads.
	ErrElectionNoLeader = errors.New("election: no leader")
	// ErrLeadershipLost is Election's "lost" error, as ErrLockLost is
	// Mutex's: the cause of the context WithLeadership and HoldContext
	// give when leadership ends under them, the error of Resign when the
	// leadership had already ended, and matched (beside
	// ErrElectionNotLeader) by the error of Guard and Proclaim then.
	ErrLeadershipLost = errors.New("election: leadership lost")
)

// errLeaderLost is the error of Guard and Proclaim when the leadership
// ended under them: etcd's ErrElectionNotLeader, and ErrLeadershipLost.
var errLeaderLost = fmt.Errorf("%w: %w", ErrElectionNotLeader, ErrLeadershipLost)

// Election is a leader election: candidates queue under pfx + "/" by create
// revision and the oldest leads, as with etcd's Election and etcdctl elect,
// which it interoperates with. The leader's key holds its proclaimed value.
//
// The candidate is the session, as in etcd's package: every Election on one
// Session and prefix uses the key pfx/hex(lease). Campaign on a second
// Election of a session that leads proclaims its value and leads at once;
// on a session that waits, it sets the value and waits in the same place.
// Resign on any of them ends the leadership of all of them (their
// WithLeadership and HoldContext see the loss). WithExclusive gives an
// Election a key of its own instead, which competes with the session's
// other Elections; default and WithExclusive Elections on one session and
// prefix are refused with ErrWaitsOnItself.
//
// An Election is safe for use by several goroutines.
type Election struct {
	holder    // key, token, header and release of this leadership
	exclusive bool
	slot      *slot // the key of this leadership; nil when resumed; guarded by mu
}

// NewElection makes an Election on prefix pfx. A nil session, an empty
// prefix or an option that is not for elections (WithMutexValue) is
// reported by the first call. The only option is WithExclusive.
func NewElection(s *Session, pfx string, opts ...HandleOption) *Election {
	var o handleOptions
	for _, opt := range opts {
		opt(&o)
	}
	e := &Election{holder: newHolder(s, pfx, ErrElectionNotLeader, ErrLeadershipLost, errLeaderLost), exclusive: o.exclusive}
	if e.err == nil && o.val != nil {
		e.err = errors.New("election: WithMutexValue is an option of NewMutex; Campaign takes the value")
	}
	return e
}

// observer is an Election that only follows the election on pfx (observe
// needs a client, and the metrics and logger of o, not a lease).
func observer(c *clientv3.Client, pfx string, o sessionOptions) *Election {
	return &Election{holder: newHolder(&Session{client: c, opts: o}, pfx, ErrElectionNotLeader, ErrLeadershipLost, errLeaderLost)}
}

// ResumeElection makes an Election that already leads with leaderKey,
// created at leaderRev, for example after a restart with WithLease. It uses
// the same prefix as NewElection (etcd's used pfx without the "/", #13469).
func ResumeElection(s *Session, pfx string, leaderKey string, leaderRev int64) *Election {
	e := NewElection(s, pfx)
	e.key, e.rev = leaderKey, leaderRev
	return e
}

// Campaign puts this candidate in the election with value val and waits
// until it leads, ctx ends, or the session's lease ends. On an orphaned
// session it goes on waiting until the lease expires on the server, as
// etcd's does.
//
// It reports leadership only after reading its own key at the head of the
// queue (etcd could report it after the lease expired, #11007, #22387). On
// every error the candidate's key is deleted before Campaign returns
// (etcd #21128 left it on non-cancel errors), unless another Election of
// the same session still uses it; the delete ends at once if the client
// closes.
func (e *Election) Campaign(ctx context.Context, val string) error {
	if e.err != nil {
		return e.err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	if e.key != "" {
		// Already leading (or resumed): like etcd, campaigning again only
		// updates the value.
		e.mu.Unlock()
		return e.Proclaim(ctx, val)
	}
	e.mu.Unlock()
	start := time.Now()
	c := e.s.Client()
	sl, err := takeSlot(e.s, e.dir, e.exclusive)
	if err != nil {
		return err
	}
	key := sl.key
	var j *joined
	var queue []*mvccpb.KeyValue
	t := &turn{s: e.s, dir: e.dir, key: key}
	t.blocker = t.older
	err = sl.serialize(func() (err error) {
		j, err = join(ctx, c, joinReq{key: key, val: val, lease: e.s.Lease(), reads: []clientv3.Op{keysUnder(e.dir)}, repeat: true})
		if err == nil && ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return err
		}
		t.rev, queue = j.rev, j.kvs(0)
		if !j.existed || string(j.value) == val {
			return nil
		}
		// Our key was there from before (another Election of this
		// session, or a resumed lease): proclaim val, as etcd does.
		r, err := guard(ctx, c, key, j.rev, ErrSessionExpired, []clientv3.Op{clientv3.OpPut(key, val, clientv3.WithIgnoreLease())})
		if err != nil {
			return err
		}
		var at int64
		if queue, at, err = t.read(ctx, r.Header.Revision); err == nil {
			j.hdr = headerAt(j.hdr, at)
		}
		return err
	})
	if err != nil {
		rev := int64(0)
		if j != nil {
			rev = j.rev
		}
		sl.giveUp(ctx, rev)
		return ctxErr(ctx, err)
	}
	_, at, err := waitTurn(ctx, t, queue, j.hdr.Revision)
	if err != nil {
		sl.giveUp(ctx, j.rev)
		return ctxErr(ctx, err)
	}
	hdr := headerAt(j.hdr, at)
	e.mu.Lock()
	prev := e.slot
	e.key, e.rev, e.slot, e.hdr = key, j.rev, sl, hdr
	if e.tally == nil || e.tally.rev != j.rev {
		e.tally.released()
		e.tally = acquired(e.s, obs.Election, e.name(), key, j.rev, time.Since(start))
	}
	e.mu.Unlock()
	if prev != nil {
		// Two Campaigns of this Election at once: one leadership.
		prev.done(0, false)
	}
	return nil
}

// Proclaim sets the leader's value without another election. It returns
// ErrElectionNotLeader, and forgets the leadership, when this candidate no
// longer leads; when the leadership ended under it, the error matches
// ErrLeadershipLost too.
func (e *Election) Proclaim(ctx context.Context, val string) error {
	if e.err != nil {
		return e.err
	}
	key, rev, _ := e.current()
	if key == "" {
		return ErrElectionNotLeader
	}
	resp, err := guard(ctx, e.s.Client(), key, rev, errLeaderLost,
		[]clientv3.Op{clientv3.OpPut(key, val, clientv3.WithIgnoreLease())})
	if errors.Is(err, ErrElectionNotLeader) {
		e.forget(key, rev, false)
		return err
	}
	if err != nil {
		return ctxErr(ctx, err)
	}
	e.mu.Lock()
	e.hdr = resp.Header
	e.mu.Unlock()
	return nil
}

// Resign gives up leadership, deleting the leader key only if it is still
// this leadership's (etcd #22082). When the request fails, the Election
// keeps leading and Resign can be retried (etcd forgot the key, #22123).
// Resigning when not leading is a no-op. It ends the leadership of every
// Election of the session that shares it, as etcd's does.
//
// It returns ErrLeadershipLost when the leadership had already ended (the
// session expired or someone deleted the leader key), as Unlock returns
// ErrLockLost, but nil when another Election of the same session resigned
// it; either way the Election no longer leads. A retry after a request
// whose outcome was unknown (its ctx ended in flight) may find the key
// already deleted by that request, and report ErrLeadershipLost.
func (e *Election) Resign(ctx context.Context) error {
	if e.err != nil {
		return e.err
	}
	e.releaseMu.Lock()
	defer e.releaseMu.Unlock()
	e.mu.Lock()
	key, rev, sl := e.key, e.rev, e.slot
	e.mu.Unlock()
	if key == "" {
		return nil
	}
	release := func(ctx context.Context, rev int64) (bool, *pb.ResponseHeader, error) {
		return releaseKey(ctx, e.s.Client(), key, rev)
	}
	if sl != nil {
		release = sl.release
	}
	present, hdr, err := release(ctx, rev)
	if err != nil {
		return ctxErr(ctx, err)
	}
	e.mu.Lock()
	e.hdr = hdr
	t := e.tally
	e.mu.Unlock()
	e.forget(key, rev, true)
	if !present {
		if t != nil {
			t.lost(lossCause(e.s), ErrLeadershipLost)
		}
		return ErrLeadershipLost
	}
	t.released()
	return nil
}

// forget drops the leadership of key created at rev, if it is still the
// current one. released tells that the slot was already ended by a
// release request.
func (e *Election) forget(key string, rev int64, released bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.key != key || e.rev != rev || key == "" {
		return
	}
	if e.slot != nil && !released {
		e.slot.done(rev, false)
	}
	if !released && e.tally != nil {
		// Found lost (Proclaim): the cause is asked outside e.mu (the
		// arguments of a go statement are evaluated here, so in the
		// closure).
		go func(t *tally) { t.lost(lossCause(e.s), ErrLeadershipLost) }(e.tally)
	}
	e.key, e.rev, e.slot, e.tally = "", -1, nil, nil
}

// Leader returns the current leader's key and value, or
// ErrElectionNoLeader.
func (e *Election) Leader(ctx context.Context) (*clientv3.GetResponse, error) {
	if e.err != nil {
		return nil, e.err
	}
	resp, err := e.s.Client().Get(ctx, e.dir, clientv3.WithFirstCreate()...)
	if err != nil {
		return nil, ctxErr(ctx, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, ErrElectionNoLeader
	}
	return resp, nil
}

// WithLeadership campaigns with val, runs f while leading, and resigns. The
// context f gets is cancelled as soon as leadership ends under it, with
// context.Cause(ctx) == ErrLeadershipLost, seen through a watch on the
// leader key, or when the session's trust window lapses (WithLeaseTrust;
// the cause then matches ErrLeaseUnconfirmed too). It returns the error of
// Campaign, else f's error, else ErrLeadershipLost when leadership was lost
// while f ran, else the error of Resign, which runs even when ctx is over,
// with its own timeout.
func WithLeadership(ctx context.Context, e *Election, val string, f func(ctx context.Context) error) error {
	campaign := func(ctx context.Context) error { return e.Campaign(ctx, val) }
	return e.with(ctx, campaign, e.Resign, f)
}

// LeaderEvent is a change of leadership seen by Events.
type LeaderEvent struct {
	// Leader is the leader's key and value, or nil when nobody leads.
	Leader *mvccpb.KeyValue
	// Rev is the revision at which this became the state of the election.
	Rev int64
}

// Observe returns a channel that receives the leader each time it changes,
// and each time the leader proclaims a new value, starting with the current
// leader if there is one. It is etcd's Observe; Events also reports when
// nobody leads.
//
// The channel is unbuffered. It closes only when ctx ends or the client
// closes. Watch failures (a compacted revision after a reconnect, a member
// without a leader) are repaired by reading the election again, not by
// closing the channel.
func (e *Election) Observe(ctx context.Context) <-chan *clientv3.GetResponse {
	return observeChan(ctx, e, func(ev LeaderEvent) (*clientv3.GetResponse, bool) {
		if ev.Leader == nil {
			return nil, false
		}
		return &clientv3.GetResponse{Header: &pb.ResponseHeader{Revision: ev.Rev}, Kvs: []*mvccpb.KeyValue{ev.Leader}, Count: 1}, true
	})
}

// Events returns a channel that receives the state of the election each
// time it changes: a new leader, a new value proclaimed, or nobody leading
// (Leader == nil), starting with the current state. It closes only when
// ctx ends or the client closes.
func (e *Election) Events(ctx context.Context) <-chan LeaderEvent {
	return observeChan(ctx, e, func(ev LeaderEvent) (LeaderEvent, bool) { return ev, true })
}

// observeChan runs observe into a new unbuffered channel, sending what conv
// makes of each event it keeps, and closes the channel when observe ends.
func observeChan[T any](ctx context.Context, e *Election, conv func(LeaderEvent) (T, bool)) <-chan T {
	ch := make(chan T)
	if e.err != nil {
		close(ch)
		return ch
	}
	go func() {
		defer close(ch)
		e.observe(ctx, func(ev LeaderEvent) bool {
			v, ok := conv(ev)
			if !ok {
				return true
			}
			select {
			case ch <- v:
				return true
			case <-ctx.Done():
				return false
			}
		})
	}()
	return ch
}

// observe follows the election and calls emit with each change of the
// leader (key and mod revision) until ctx ends, the client closes, or emit
// returns false.
//
// It watches the whole prefix from now, then reads the prefix at the
// revision the watch starts after, and applies every event batch to that
// copy. The leader is recomputed from the copy after each batch, so a batch
// with several candidates, or a candidate that comes and goes within one
// batch, still yields the true leader (etcd #18163 took the first PUT).
func (e *Election) observe(ctx context.Context, emit func(LeaderEvent) bool) {
	c := e.s.Client()
	var last *mvccpb.KeyValue
	first := true
	report := func(kvs map[string]*mvccpb.KeyValue, rev int64) bool {
		lead := leaderOf(kvs)
		same := (lead == nil && last == nil) ||
			(lead != nil && last != nil && string(lead.Key) == string(last.Key) && lead.ModRevision == last.ModRevision)
		if same && !first {
			return true
		}
		changed := (lead == nil) != (last == nil) || (lead != nil && last != nil && string(lead.Key) != string(last.Key))
		if changed && !first {
			e.leaderChanged(lead)
		}
		first, last = false, lead
		return emit(LeaderEvent{Leader: lead, Rev: rev})
	}
	stop := errors.New("observer done")
	for ctx.Err() == nil && c.Ctx().Err() == nil {
		err := mirror(ctx, c, e.dir, 0, nil, func(kvs map[string]*mvccpb.KeyValue, rev int64) (bool, error) {
			if !report(kvs, rev) {
				return true, stop
			}
			return false, nil
		})
		if errors.Is(err, stop) {
			return
		}
		pause(ctx)
	}
}

// leaderChanged records a change of leader that observe saw.
func (e *Election) leaderChanged(lead *mvccpb.KeyValue) {
	if !e.s.observed() {
		return
	}
	e.s.opts.rec.LeaderChanged(e.name())
	if lead == nil {
		e.s.logInfo("leader changed: nobody leads", slog.String("name", e.name()))
		return
	}
	e.s.logInfo("leader changed", slog.String("name", e.name()), slog.String("key", string(lead.Key)), slog.Int64("token", lead.CreateRevision))
}

// leaderOf returns the key with the lowest create revision, the leader.
// Keys written by one transaction share a revision; among those the lowest
// key wins, which is the order etcd's Leader reads them in.
func leaderOf(kvs map[string]*mvccpb.KeyValue) *mvccpb.KeyValue {
	var lead *mvccpb.KeyValue
	for _, kv := range kvs {
		if lead == nil || kv.CreateRevision < lead.CreateRevision ||
			(kv.CreateRevision == lead.CreateRevision && string(kv.Key) < string(lead.Key)) {
			lead = kv
		}
	}
	return lead
}
