package concurrency

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/internal/obs"
	"github.com/batonhq/baton/metrics"
)

// STM is software transactional memory over etcd: the view of the keyspace
// that NewSTM hands to its apply function. Reads come from etcd (or from
// what the transaction already read or wrote), writes are buffered and sent
// in one Txn when apply returns nil.
//
// An STM is not safe for use by several goroutines, and must not be used
// after apply returns.
type STM interface {
	// Get returns the value of the first key, or "" when it does not exist.
	// A key the transaction wrote reads as written ("" after Del). Every
	// key given is read, in one round trip for those not read before, and
	// joins the read set: Get(a, b, c) is a batched prefetch of b and c.
	//
	// If the read fails (or a key is empty), Get aborts the transaction: it
	// does not return, apply is unwound, and NewSTM returns the error.
	Get(key ...string) string
	// Put buffers a write of val to key; it is sent with the commit. opts
	// are those of clientv3.OpPut (WithLease, WithPrevKV, ...). An empty
	// key or an option that does not apply to a Put aborts the transaction
	// as Get does.
	Put(key, val string, opts ...clientv3.OpOption)
	// Rev returns the mod revision of key as read by the transaction (0
	// when it does not exist), reading it if needed. It ignores the
	// transaction's own buffered writes.
	Rev(key string) int64
	// Del buffers a delete of key.
	Del(key string)
}

// RangeSTM is an STM with range reads. The STM that NewSTM passes to apply
// always implements it:
//
//	r := stm.(concurrency.RangeSTM)
//	for _, kv := range r.GetPrefix("accounts/") { ... }
//
// What a commit checks of a range read (the range as a whole, only the keys
// it returned, or nothing) is the isolation level's: see Isolation.
//
// Range size is bounded. etcd caps the compares of one Txn at --max-txn-ops
// (default 128). Validating a range takes one compare per key it holds
// (deletions leave no trace in a compare over a range, which only sees live
// keys) plus one for the range (no key in it modified or created after the
// snapshot; RepeatableReads skips this one). Every other key read takes
// one compare, and so does every key written but not read under
// SerializableSnapshot: with the default limit, a SerializableSnapshot
// transaction that reads one range and writes one key outside it can read
// at most 126 keys. A read or write that would make the commit need more
// compares (or writes) than WithMaxTxnOps allows aborts the transaction
// with ErrSTMTooManyOps at once, with nothing written; it never commits
// with a weaker check. ReadCommitted validates nothing, so its range reads
// have no such bound.
type RangeSTM interface {
	STM
	// GetPrefix returns the key-values whose keys start with prefix, sorted
	// by key, with the transaction's own buffered writes applied (a key it
	// put shows the new value and the revisions of the stored version, or
	// zero revisions if it is new; a key it deleted is absent). The
	// returned slice and its elements are the caller's. GetPrefix("")
	// reads the whole keyspace.
	GetPrefix(prefix string) []*mvccpb.KeyValue
	// GetRange is GetPrefix for the keys in [key, end). end "\x00" means
	// every key >= key, as in etcd.
	GetRange(key, end string) []*mvccpb.KeyValue
}

// Isolation is the isolation level of a transaction: where its reads come
// from and what its commit checks. The levels are etcd's, with the same
// values; baton adds range reads (RangeSTM), so each level also says what
// it does with them.
//
// Under every level but ReadCommitted, a commit that fails its checks
// writes nothing; apply is run again on fresh data, after a backoff once
// conflicts repeat (see WithRetryBackoff).
type Isolation int

const (
	// SerializableSnapshot is the default and the strongest level.
	//
	// Reads: all from one snapshot at revision R. The first read of an
	// attempt is linearizable and fixes R; later reads are served at R by
	// any member (one that has not applied R yet is asked again with a
	// linearizable read at R, so reads never fail with "required revision
	// is a future revision", etcd #11963). After a failed commit the next
	// attempt starts from the values that commit returned, at its own
	// revision; after a backoff pause it reads them again in one
	// serializable round trip, a possibly stale snapshot that the commit
	// checks like any other. If R is compacted away mid-attempt, the
	// attempt is void and runs again.
	//
	// Commit compares: every key read still has the mod revision it had at
	// R (a key read as absent is still absent); every range read has no
	// key modified or created after R and none of its keys deleted; every
	// key written and not read was not written after R.
	//
	// Anomalies: none. Committed transactions are serializable, and strict
	// serializable: each takes effect at its commit, inside its call. A
	// read-only transaction sends no commit: its snapshot was current when
	// it was read, so it costs its reads only (one round trip for one Get
	// or with WithPrefetch). The exception is a read-only attempt after a
	// backoff pause, whose serializable snapshot is checked with a
	// compare-only Txn (which writes nothing).
	SerializableSnapshot Isolation = iota
	// Serializable is SerializableSnapshot without the check on keys
	// written but not read: two transactions that write the same key
	// without reading it both commit, the later value winning, which is
	// still a serial order.
	//
	// Reads and range checks are those of SerializableSnapshot, and so is
	// the read-only case. Anomalies: none among committed transactions.
	Serializable
	// RepeatableReads reads each key once, at the latest revision the
	// member serving the read has (a serializable read, possibly stale),
	// and returns that value for the rest of the attempt.
	//
	// Commit compares: every key read, including every key a range read
	// returned, still has the mod revision it was read at. Keys inserted
	// into a range after it was read are not checked.
	//
	// Anomalies: inside an attempt apply can see values from different
	// revisions (read skew), but such an attempt fails its commit. Write
	// skew over individual keys is rejected as in etcd. Phantoms are
	// possible: two transactions that each check a range is empty and
	// insert into it can both commit (write skew through phantoms). A
	// read-only transaction is validated by a compare-only Txn, which
	// writes nothing.
	RepeatableReads
	// ReadCommitted reads each key once at the latest revision of the
	// serving member, and its commit compares nothing: it always commits,
	// on the first attempt.
	//
	// Anomalies: lost updates (two read-modify-write transactions on one
	// key both commit, and one increment is lost), read skew, write skew,
	// phantoms. A read-only transaction sends no commit.
	ReadCommitted
)

// String names the level as its constant does.
func (iso Isolation) String() string {
	switch iso {
	case SerializableSnapshot:
		return "SerializableSnapshot"
	case Serializable:
		return "Serializable"
	case RepeatableReads:
		return "RepeatableReads"
	case ReadCommitted:
		return "ReadCommitted"
	}
	return fmt.Sprintf("Isolation(%d)", int(iso))
}

// snapshot reports whether every read of an attempt is at one revision.
func (iso Isolation) snapshot() bool { return iso == SerializableSnapshot || iso == Serializable }

// Errors of NewSTM. A nil client is reported with ErrNilClient.
var (
	// ErrSTMNilApply is returned by NewSTM when apply is nil.
	ErrSTMNilApply = errors.New("concurrency: stm: nil apply function")
	// ErrSTMInvalidOption is returned by NewSTM for an option with a value
	// out of its range (an unknown Isolation, a negative attempt count, a
	// nil context, ...) and when a Put gets an option that does not apply
	// to a Put. Nothing is read or written.
	ErrSTMInvalidOption = errors.New("concurrency: stm: invalid option")
	// ErrSTMEmptyKey is returned when a transaction reads or writes the
	// empty key, which etcd does not allow. Nothing is written.
	ErrSTMEmptyKey = errors.New("concurrency: stm: empty key")
	// ErrSTMTooManyOps is returned when the commit would need more
	// compares or writes than one Txn may hold (WithMaxTxnOps, which must
	// not exceed the server's --max-txn-ops, default 128), typically
	// because a range read holds too many keys. It is raised as soon as a
	// read or write makes the transaction too large, and nothing is
	// written.
	ErrSTMTooManyOps = errors.New("concurrency: stm: transaction exceeds the Txn operation limit (--max-txn-ops)")
	// ErrSTMTooManyAttempts is matched (errors.Is) by the *STMAttemptsError
	// that NewSTM returns when every attempt allowed by WithMaxAttempts
	// conflicted. Nothing was written.
	ErrSTMTooManyAttempts = errors.New("concurrency: stm: transaction conflicted on every attempt")
	// ErrSTMIndeterminate wraps the error of a commit whose outcome is
	// unknown: the request may have reached etcd and been applied before
	// the connection failed, the context ended or the server timed out.
	// NewSTM never retries such a commit, since a retry could apply the
	// transaction twice (etcd #14890, #18424); the caller must read the
	// keys to learn whether it took effect. The cause stays visible:
	// errors.Is(err, context.Canceled) holds for a commit cut short by the
	// abort context.
	ErrSTMIndeterminate = errors.New("concurrency: stm: commit outcome unknown")
)

// STMAttemptsError is the error of a transaction that conflicted on every
// one of the attempts WithMaxAttempts allowed (an attempt whose snapshot
// was compacted away mid-apply counts as a conflict). It matches
// ErrSTMTooManyAttempts.
type STMAttemptsError struct {
	// Attempts is how many times apply ran, each ending in a conflict.
	Attempts int
}

// Error says how many attempts were made.
func (e *STMAttemptsError) Error() string {
	return fmt.Sprintf("concurrency: stm: transaction conflicted on all %d attempts", e.Attempts)
}

// Is makes errors.Is(err, ErrSTMTooManyAttempts) hold.
func (e *STMAttemptsError) Is(target error) bool { return target == ErrSTMTooManyAttempts }

// Defaults of the STM options.
const (
	// DefaultSTMMaxTxnOps is etcd's default --max-txn-ops.
	DefaultSTMMaxTxnOps = 128
	// DefaultSTMBackoffBase and DefaultSTMBackoffMax bound the pause
	// before a retry; see WithRetryBackoff. They are about one commit's
	// latency on a local server: enough to move colliding transactions
	// into different raft batches. Longer pauses cut attempts further but
	// stretch the slowest transactions: with 2 ms and 10 ms, a bank
	// workload of 8 workers on 8 accounts had a p99 of about 40 ms against
	// 25 ms with these, at the same throughput. Across a network, scale
	// both with the commit latency.
	DefaultSTMBackoffBase = 500 * time.Microsecond
	DefaultSTMBackoffMax  = 2 * time.Millisecond
)

type stmOptions struct {
	iso         Isolation
	ctx         context.Context
	ctxSet      bool
	prefetch    []string
	maxAttempts int
	backoffBase time.Duration
	backoffMax  time.Duration
	maxTxnOps   int
	// sleep waits d or until ctx ends; tests replace it.
	sleep func(ctx context.Context, d time.Duration) error
	// rec, log and name: WithSTMMetrics and WithSTMLogger.
	rec  *obs.Recorder
	log  *slog.Logger
	name string
}

// STMOption configures NewSTM. Values out of range make NewSTM fail with
// ErrSTMInvalidOption.
type STMOption func(*stmOptions)

// WithSTMMetrics makes the transaction record into m under the label
// name (say, what the transaction does: "transfer"): a commit, the number
// of attempts, an indeterminate commit, or an abort and its reason. Default
// (and a nil m): nothing is recorded.
func WithSTMMetrics(m *metrics.Metrics, name string) STMOption {
	return func(o *stmOptions) { o.rec, o.name = m.Recorder(), name }
}

// WithSTMLogger makes the transaction log an indeterminate commit
// (ErrSTMIndeterminate) to l, the one outcome a caller must look into.
// Default (and a nil l): no logs.
func WithSTMLogger(l *slog.Logger) STMOption {
	return func(o *stmOptions) { o.log = l }
}

// WithIsolation sets the isolation level. Default SerializableSnapshot.
func WithIsolation(lvl Isolation) STMOption {
	return func(so *stmOptions) { so.iso = lvl }
}

// WithAbortContext sets the context that aborts the transaction: once it
// ends, reads fail, no commit is sent and NewSTM returns its error, with
// nothing written. If it ends while a commit is in flight, the commit may
// have been applied and NewSTM returns ErrSTMIndeterminate. Default: the
// client's context, which ends when the client is closed.
func WithAbortContext(ctx context.Context) STMOption {
	return func(so *stmOptions) { so.ctx, so.ctxSet = ctx, true }
}

// WithPrefetch reads keys at the start of every attempt, in one round trip,
// before apply runs. A transaction that always reads a known set of keys
// saves a round trip per key. Empty keys make NewSTM fail with
// ErrSTMEmptyKey.
func WithPrefetch(keys ...string) STMOption {
	return func(so *stmOptions) { so.prefetch = append(so.prefetch, keys...) }
}

// WithMaxAttempts caps how many times apply runs. When every attempt
// conflicts, NewSTM returns an *STMAttemptsError naming the count. n must
// be >= 0; 0, the default, means no limit, as in etcd.
func WithMaxAttempts(n int) STMOption {
	return func(so *stmOptions) { so.maxAttempts = n }
}

// WithRetryBackoff sets the pause between attempts after conflicts. The
// first retry after a conflict is immediate: the failed commit returned
// fresh values of everything the attempt read, so the retry costs one
// round trip, its commit. From the second conflict in a row on, the
// transaction sleeps a random time (full jitter) in
// [0, min(maxDelay, base << (conflicts-2))] and then reads the previous
// attempt's keys again in one round trip, so that transactions that keep
// colliding spread out instead of colliding again in lock step. A pause
// ends early when the abort context ends, with nothing written. Defaults
// DefaultSTMBackoffBase and DefaultSTMBackoffMax; base and maxDelay both 0
// disable the pause (every retry is immediate, as in etcd). Otherwise base
// must be > 0 and maxDelay >= base.
func WithRetryBackoff(base, maxDelay time.Duration) STMOption {
	return func(so *stmOptions) { so.backoffBase, so.backoffMax = base, maxDelay }
}

// WithMaxTxnOps sets how many compares or writes the transaction's commit
// may hold: set it to the server's --max-txn-ops. Default
// DefaultSTMMaxTxnOps (etcd's default, 128); must be >= 1.
func WithMaxTxnOps(n int) STMOption {
	return func(so *stmOptions) { so.maxTxnOps = n }
}

// NewSTM runs apply in a transaction and commits what it wrote. apply runs
// in the calling goroutine, once per attempt: when the commit conflicts
// (another writer changed what apply read), apply runs again on fresh data.
// apply must therefore have no effects outside the STM that a retry would
// repeat.
//
// It returns the commit's response on success. A transaction with nothing
// to check and nothing to write (a read-only one under SerializableSnapshot,
// Serializable or ReadCommitted) sends no commit; its response then has
// Succeeded set, no Responses, and the header of its first read.
//
// Errors, with nothing written unless said otherwise:
//   - apply's own error, returned as is, on the first attempt that returns
//     one;
//   - the error of a failed read, which unwinds apply (see STM.Get);
//   - the abort context's error (WithAbortContext);
//   - *STMAttemptsError when WithMaxAttempts ran out;
//   - ErrSTMTooManyOps, ErrSTMEmptyKey, ErrSTMInvalidOption, ErrNilClient,
//     ErrSTMNilApply for bad input;
//   - ErrSTMIndeterminate when the commit was sent and its outcome is
//     unknown: it may have been written.
//
// A panic in apply is not recovered: it propagates to the caller of NewSTM,
// in the caller's goroutine, with nothing written, and can be recovered
// there. (etcd's NewSTM runs apply in a goroutine of its own, where such a
// panic kills the process.)
func NewSTM(c *clientv3.Client, apply func(STM) error, opts ...STMOption) (*clientv3.TxnResponse, error) {
	o := stmOptions{
		backoffBase: DefaultSTMBackoffBase,
		backoffMax:  DefaultSTMBackoffMax,
		maxTxnOps:   DefaultSTMMaxTxnOps,
		sleep:       stmSleep,
	}
	for _, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("%w: nil STMOption", ErrSTMInvalidOption)
		}
		opt(&o)
	}
	if c == nil {
		return nil, fmt.Errorf("%w: NewSTM", ErrNilClient)
	}
	if apply == nil {
		return nil, ErrSTMNilApply
	}
	if err := o.check(); err != nil {
		return nil, err
	}
	if !o.ctxSet {
		o.ctx = c.Ctx()
	}
	t := &stmTxn{client: c, o: o}
	defer func() { t.done = true }()
	if o.rec == nil && o.log == nil {
		return t.run(apply)
	}
	reason := "apply" // kept if apply panics
	defer func() {
		o.rec.STMDone(o.name, t.attempts, reason)
		if reason == "indeterminate" && o.log != nil {
			o.log.Warn("stm commit outcome unknown", slog.String("name", o.name), slog.Int("attempts", t.attempts))
		}
	}()
	resp, err := t.run(apply)
	switch {
	case err == nil:
		reason = ""
	case errors.Is(err, ErrSTMIndeterminate):
		reason = "indeterminate"
	case errors.Is(err, ErrSTMTooManyAttempts):
		reason = "attempts"
	case o.ctx.Err() != nil:
		reason = "ctx"
	case t.applyFailed:
		reason = "apply"
	default:
		reason = "error"
	}
	return resp, err
}

func (o *stmOptions) check() error {
	switch {
	case o.iso < SerializableSnapshot || o.iso > ReadCommitted:
		return fmt.Errorf("%w: unknown isolation level %d", ErrSTMInvalidOption, int(o.iso))
	case o.ctxSet && o.ctx == nil:
		return fmt.Errorf("%w: nil abort context", ErrSTMInvalidOption)
	case o.maxAttempts < 0:
		return fmt.Errorf("%w: max attempts %d, want >= 0", ErrSTMInvalidOption, o.maxAttempts)
	case o.maxTxnOps < 1:
		return fmt.Errorf("%w: max txn ops %d, want >= 1", ErrSTMInvalidOption, o.maxTxnOps)
	case o.backoffBase == 0 && o.backoffMax == 0:
	case o.backoffBase <= 0 || o.backoffMax < o.backoffBase:
		return fmt.Errorf("%w: retry backoff base %v max %v, want 0 < base <= max", ErrSTMInvalidOption, o.backoffBase, o.backoffMax)
	}
	for _, k := range o.prefetch {
		if k == "" {
			return fmt.Errorf("%w: in WithPrefetch", ErrSTMEmptyKey)
		}
	}
	return nil
}

// NewSTMRepeatable runs apply under RepeatableReads, aborted by ctx.
//
// Deprecated: Use NewSTM(c, apply, WithAbortContext(ctx),
// WithIsolation(RepeatableReads)), as in etcd.
func NewSTMRepeatable(ctx context.Context, c *clientv3.Client, apply func(STM) error) (*clientv3.TxnResponse, error) {
	return NewSTM(c, apply, WithAbortContext(ctx), WithIsolation(RepeatableReads))
}

// NewSTMSerializable runs apply under Serializable, aborted by ctx.
//
// Deprecated: Use NewSTM(c, apply, WithAbortContext(ctx),
// WithIsolation(Serializable)), as in etcd.
func NewSTMSerializable(ctx context.Context, c *clientv3.Client, apply func(STM) error) (*clientv3.TxnResponse, error) {
	return NewSTM(c, apply, WithAbortContext(ctx), WithIsolation(Serializable))
}

// NewSTMReadCommitted runs apply under ReadCommitted, aborted by ctx.
//
// Deprecated: Use NewSTM(c, apply, WithAbortContext(ctx),
// WithIsolation(ReadCommitted)), as in etcd.
func NewSTMReadCommitted(ctx context.Context, c *clientv3.Client, apply func(STM) error) (*clientv3.TxnResponse, error) {
	return NewSTM(c, apply, WithAbortContext(ctx), WithIsolation(ReadCommitted))
}

// stmRange is a range read: [key, end) and the key-values it held, sorted
// by key.
type stmRange struct {
	key, end string
	kvs      []*mvccpb.KeyValue
}

func (r *stmRange) covers(k string) bool {
	return k >= r.key && (r.end == "\x00" || k < r.end)
}

// find returns the key-value of k in the range, nil if absent.
func (r *stmRange) find(k string) *mvccpb.KeyValue {
	i := sort.Search(len(r.kvs), func(i int) bool { return string(r.kvs[i].Key) >= k })
	if i < len(r.kvs) && string(r.kvs[i].Key) == k {
		return r.kvs[i]
	}
	return nil
}

// stmWrite is a buffered Put or Del.
type stmWrite struct {
	key, val string
	del      bool
	op       clientv3.Op
}

// stmAbort unwinds apply when the transaction cannot go on. It is the only
// panic value NewSTM recovers.
type stmAbort struct {
	t     *stmTxn
	err   error
	retry bool // the attempt is void but the transaction can run again
}

// stmTxn is the STM handed to apply. The read state is per attempt; the
// refresh state carries the failed commit's fresh reads to the next one.
type stmTxn struct {
	client *clientv3.Client
	o      stmOptions

	applyFailed bool // the last attempt's apply ended the transaction with an error

	// Per attempt.
	snap   stmSnap                     // where the attempt's reads come from
	reads  map[string]*mvccpb.KeyValue // keys read with Get/Rev, nil when absent
	rkeys  []string                    // keys of reads in read order (for the refresh reads)
	ranges []*stmRange                 // range reads in read order
	seen   map[string]int64            // mod revision each key was observed at; the commit compares these
	writes map[string]int              // key -> index in wops
	wops   []stmWrite                  // buffered writes in first-write order
	doomed bool                        // two reads of one key disagreed: the commit cannot succeed
	abort  *stmAbort                   // set when apply was unwound

	// From the last failed commit's failure branch, consumed by the next
	// attempt (whose snap is then stmFromCommit or stmAged).
	fresh       map[string]*mvccpb.KeyValue
	freshRanges []*stmRange

	attempts  int
	conflicts int // consecutive failed attempts
	done      bool
}

// stmSnap is an attempt's snapshot: the header of what it read first, and
// where that came from, which decides its first read and whether a
// read-only commit must be validated (see the Isolation constants).
type stmSnap struct {
	hdr  *pb.ResponseHeader // nil before the attempt's first read
	from stmSource
}

type stmSource uint8

const (
	// stmRead: the attempt reads its own snapshot. Under the snapshot
	// levels its first read is linearizable, so the snapshot is current.
	stmRead stmSource = iota
	// stmFromCommit: the attempt starts from the values the failed commit
	// returned, at hdr: as current as a linearizable read.
	stmFromCommit
	// stmAged: those values aged during a backoff pause; the first read
	// of the attempt reads them again serializably (refresh), a snapshot
	// that may be stale and that the commit checks.
	stmAged
)

// current reports whether the snapshot was current when it was read.
func (s stmSnap) current() bool { return s.from != stmAged }

// rev is the snapshot revision R under the snapshot levels; 0 before the
// first read, and under the other levels.
func (t *stmTxn) rev() int64 {
	if t.snap.hdr == nil || !t.o.iso.snapshot() {
		return 0
	}
	return t.snap.hdr.Revision
}

// reset starts an attempt on t.snap, which the previous one left.
func (t *stmTxn) reset() {
	t.reads = map[string]*mvccpb.KeyValue{}
	t.rkeys = t.rkeys[:0]
	t.ranges = nil
	t.seen = map[string]int64{}
	t.writes = map[string]int{}
	t.wops = nil
	t.doomed = false
	t.abort = nil
}

// run is the retry loop of NewSTM.
func (t *stmTxn) run(apply func(STM) error) (*clientv3.TxnResponse, error) {
	for {
		if err := t.o.ctx.Err(); err != nil {
			return nil, err
		}
		t.attempts++
		t.reset()
		retry, err := t.apply(apply)
		t.fresh, t.freshRanges = nil, nil
		if err != nil && !retry {
			t.applyFailed = true
			return nil, err
		}
		if retry {
			t.snap = stmSnap{}
		} else {
			var resp *clientv3.TxnResponse
			resp, retry, err = t.commit()
			if err != nil {
				return nil, err
			}
			if !retry {
				return resp, nil
			}
		}
		t.conflicts++
		if t.o.maxAttempts > 0 && t.attempts >= t.o.maxAttempts {
			return nil, &STMAttemptsError{Attempts: t.attempts}
		}
		if d := stmBackoff(t.o.backoffBase, t.o.backoffMax, t.conflicts); d > 0 {
			if err := t.o.sleep(t.o.ctx, d); err != nil {
				return nil, err
			}
			// The values the failed commit returned have aged by d: the
			// next attempt reads them again, all in one round trip.
			if t.snap.from == stmFromCommit {
				t.snap = stmSnap{from: stmAged}
			}
		}
	}
}

// apply runs one attempt of apply. Only the transaction's own aborts are
// recovered; any other panic goes on up the caller's stack, unchanged.
func (t *stmTxn) apply(apply func(STM) error) (retry bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			a, ok := r.(*stmAbort)
			if !ok || a.t != t {
				panic(r)
			}
			retry, err = a.retry, a.err
		}
	}()
	if t.snap.from == stmAged {
		t.refresh()
	}
	if len(t.o.prefetch) > 0 {
		t.readKeys(t.o.prefetch)
	}
	aerr := apply(t)
	if t.abort != nil {
		// apply recovered an abort and went on: the abort stands.
		return t.abort.retry, t.abort.err
	}
	return false, aerr
}

// fail aborts the attempt by unwinding apply.
func (t *stmTxn) fail(err error, retry bool) {
	t.abort = &stmAbort{t: t, err: err, retry: retry}
	panic(t.abort)
}

// enter is called first by every STM method.
func (t *stmTxn) enter() {
	if t.done {
		panic("concurrency: stm: STM used after NewSTM returned")
	}
	if t.abort != nil {
		panic(t.abort)
	}
}

func (t *stmTxn) Get(keys ...string) string {
	t.enter()
	if len(keys) == 0 {
		return ""
	}
	for _, k := range keys {
		if k == "" {
			t.fail(fmt.Errorf("%w: Get", ErrSTMEmptyKey), false)
		}
	}
	// Keys the transaction wrote read as written: no need to fetch.
	toRead := keys
	if len(t.writes) > 0 {
		toRead = slices.DeleteFunc(slices.Clone(keys), func(k string) bool { _, ok := t.writes[k]; return ok })
	}
	t.readKeys(toRead)
	if i, ok := t.writes[keys[0]]; ok {
		return t.wops[i].val
	}
	if kv := t.reads[keys[0]]; kv != nil {
		return string(kv.Value)
	}
	return ""
}

func (t *stmTxn) Rev(key string) int64 {
	t.enter()
	if key == "" {
		t.fail(fmt.Errorf("%w: Rev", ErrSTMEmptyKey), false)
	}
	t.readKeys([]string{key})
	if kv := t.reads[key]; kv != nil {
		return kv.ModRevision
	}
	return 0
}

func (t *stmTxn) Put(key, val string, opts ...clientv3.OpOption) {
	t.enter()
	if key == "" {
		t.fail(fmt.Errorf("%w: Put", ErrSTMEmptyKey), false)
	}
	op, err := stmOpPut(key, val, opts)
	if err != nil {
		t.fail(err, false)
	}
	t.write(stmWrite{key: key, val: val, op: op})
}

func (t *stmTxn) Del(key string) {
	t.enter()
	if key == "" {
		t.fail(fmt.Errorf("%w: Del", ErrSTMEmptyKey), false)
	}
	t.write(stmWrite{key: key, del: true, op: clientv3.OpDelete(key)})
}

// stmOpPut builds a Put, turning clientv3.OpPut's panic on options that do
// not apply to a Put (a range, a revision, ...) into an error.
func stmOpPut(key, val string, opts []clientv3.OpOption) (op clientv3.Op, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: Put %q: %v", ErrSTMInvalidOption, key, r)
		}
	}()
	return clientv3.OpPut(key, val, opts...), nil
}

func (t *stmTxn) write(w stmWrite) {
	if i, ok := t.writes[w.key]; ok {
		t.wops[i] = w
		return
	}
	t.writes[w.key] = len(t.wops)
	t.wops = append(t.wops, w)
	t.checkSize("a write to %q", w.key)
}

func (t *stmTxn) GetPrefix(prefix string) []*mvccpb.KeyValue {
	t.enter()
	if prefix == "" {
		return t.GetRange("\x00", "\x00")
	}
	return t.GetRange(prefix, clientv3.GetPrefixRangeEnd(prefix))
}

func (t *stmTxn) GetRange(key, end string) []*mvccpb.KeyValue {
	t.enter()
	if key == "" || end == "" {
		t.fail(fmt.Errorf("%w: GetRange(%q, %q): use \"\\x00\" for the whole keyspace", ErrSTMEmptyKey, key, end), false)
	}
	r := t.readRange(key, end)
	out := make([]*mvccpb.KeyValue, 0, len(r.kvs))
	for _, kv := range r.kvs {
		if i, ok := t.writes[string(kv.Key)]; ok {
			if w := t.wops[i]; !w.del {
				c := stmCloneKV(kv)
				c.Value = []byte(w.val)
				out = append(out, c)
			}
			continue
		}
		out = append(out, stmCloneKV(kv))
	}
	added := false
	for _, w := range t.wops {
		if !w.del && r.covers(w.key) && r.find(w.key) == nil {
			out = append(out, &mvccpb.KeyValue{Key: []byte(w.key), Value: []byte(w.val)})
			added = true
		}
	}
	if added {
		sort.Slice(out, func(i, j int) bool { return string(out[i].Key) < string(out[j].Key) })
	}
	return out
}

func stmCloneKV(kv *mvccpb.KeyValue) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{
		Key:            append([]byte(nil), kv.Key...),
		Value:          append([]byte(nil), kv.Value...),
		CreateRevision: kv.CreateRevision,
		ModRevision:    kv.ModRevision,
		Version:        kv.Version,
		Lease:          kv.Lease,
	}
}

// observe records that k was seen at mod revision rev (0: absent). Two
// observations that differ mean the attempt read two versions of k, so at
// least one is not current and the commit would fail: it is doomed.
func (t *stmTxn) observe(k string, rev int64) {
	if old, ok := t.seen[k]; ok {
		if old != rev {
			t.doomed = true
		}
		return
	}
	t.seen[k] = rev
}

// readKeys makes sure every key is in t.reads, fetching the missing ones in
// one round trip.
func (t *stmTxn) readKeys(keys []string) {
	var missing []string
	for _, k := range keys {
		if _, ok := t.reads[k]; ok {
			continue
		}
		if kv, ok := t.local(k); ok {
			t.addRead(k, kv)
			continue
		}
		if !slices.Contains(missing, k) {
			missing = append(missing, k)
		}
	}
	if len(missing) == 0 {
		return
	}
	for len(missing) > 0 {
		n := min(len(missing), t.o.maxTxnOps)
		gets := make([]stmGet, n)
		for i, k := range missing[:n] {
			gets[i] = stmGet{key: k}
		}
		resps := t.fetch(gets)
		for i, k := range missing[:n] {
			kv := stmFirst(resps[i])
			t.addRead(k, kv)
			t.observe(k, stmModRev(kv))
		}
		missing = missing[n:]
	}
	t.checkSize("reading %q", keys)
}

// refresh reads again, in one round trip, what the failed commit
// returned: the previous attempt's reads, which the next attempt most
// likely repeats. Under the snapshot levels this first read fixes the
// snapshot. The values wait in fresh* until apply asks for them, so keys
// apply no longer reads do not join the read set.
func (t *stmTxn) refresh() {
	keys := make([]string, 0, len(t.fresh))
	for k := range t.fresh {
		keys = append(keys, k)
	}
	gets := t.rereads(keys, t.freshRanges)
	t.fresh, t.freshRanges = nil, nil
	if len(gets) == 0 || len(gets) > t.o.maxTxnOps {
		t.snap = stmSnap{} // the attempt reads its own, current snapshot
		return
	}
	// A serializable read (t.snap is stmAged): it does not wait for a raft
	// round as a linearizable one does, and what it returns is checked at
	// commit.
	t.carry(keys, gets, t.fetch(gets))
}

// rereads are the reads of keys and then of ranges again; a range read
// fetches at most one key more than a commit could validate.
func (t *stmTxn) rereads(keys []string, ranges []*stmRange) []stmGet {
	gets := make([]stmGet, 0, len(keys)+len(ranges))
	for _, k := range keys {
		gets = append(gets, stmGet{key: k})
	}
	for _, r := range ranges {
		g := stmGet{key: r.key, end: r.end}
		if t.o.iso != ReadCommitted {
			g.limit = int64(t.o.maxTxnOps) + 1
		}
		gets = append(gets, g)
	}
	return gets
}

// carry keeps what rereads of keys (gets) returned for the next attempt:
// t.fresh and t.freshRanges. A range grown too large is left out:
// readRange reads it again and fails.
func (t *stmTxn) carry(keys []string, gets []stmGet, resps []*pb.RangeResponse) {
	t.fresh = make(map[string]*mvccpb.KeyValue, len(keys))
	for i, k := range keys {
		t.fresh[k] = stmFirst(resps[i])
	}
	for i, g := range gets[len(keys):] {
		if rr := resps[len(keys)+i]; !stmTruncated(rr, g.limit) {
			t.freshRanges = append(t.freshRanges, &stmRange{key: g.key, end: g.end, kvs: rr.Kvs})
		}
	}
}

// local returns k's key-value from what the attempt already holds: a range
// read covering k, or the failed commit's fresh values.
func (t *stmTxn) local(k string) (*mvccpb.KeyValue, bool) {
	for _, r := range t.ranges {
		if r.covers(k) {
			return r.find(k), true
		}
	}
	if kv, ok := t.fresh[k]; ok {
		delete(t.fresh, k)
		t.observe(k, stmModRev(kv))
		return kv, true
	}
	return nil, false
}

func (t *stmTxn) addRead(k string, kv *mvccpb.KeyValue) {
	t.reads[k] = kv
	t.rkeys = append(t.rkeys, k)
}

func (t *stmTxn) readRange(key, end string) *stmRange {
	for _, r := range t.ranges {
		if r.key == key && r.end == end {
			return r
		}
	}
	var r *stmRange
	for i, f := range t.freshRanges {
		if f.key == key && f.end == end {
			r = f
			t.freshRanges = append(t.freshRanges[:i], t.freshRanges[i+1:]...)
			break
		}
	}
	if r == nil {
		// Fetch at most one key more than a commit could validate: enough
		// to tell the range is too large without loading all of it.
		g := stmGet{key: key, end: end}
		if t.o.iso != ReadCommitted {
			g.limit = int64(t.o.maxTxnOps) + 1
		}
		resp := t.fetch([]stmGet{g})[0]
		if stmTruncated(resp, g.limit) {
			t.fail(fmt.Errorf("%w: range [%q, %q) holds %d keys; validating it needs a compare per key and one for the range, and a Txn holds at most %d",
				ErrSTMTooManyOps, key, end, resp.Count, t.o.maxTxnOps), false)
		}
		r = &stmRange{key: key, end: end, kvs: resp.Kvs}
	}
	t.ranges = append(t.ranges, r)
	for _, kv := range r.kvs {
		t.observe(string(kv.Key), kv.ModRevision)
	}
	t.checkSize("range [%q, %q) of %d keys", key, end, len(r.kvs))
	return r
}

// cmpCount is how many compares the commit needs.
func (t *stmTxn) cmpCount() int {
	switch t.o.iso {
	case ReadCommitted:
		return 0
	case RepeatableReads:
		return len(t.seen)
	}
	n := len(t.seen) + len(t.ranges)
	if t.o.iso == SerializableSnapshot && t.rev() > 0 {
		for _, w := range t.wops {
			if _, ok := t.seen[w.key]; !ok {
				n++
			}
		}
	}
	return n
}

// checkSize aborts the transaction as soon as its commit could not fit in
// one Txn.
func (t *stmTxn) checkSize(format string, args ...any) {
	if n := t.cmpCount(); n > t.o.maxTxnOps {
		t.fail(fmt.Errorf("%w: after %s the commit needs %d compares, limit %d", ErrSTMTooManyOps, fmt.Sprintf(format, args...), n, t.o.maxTxnOps), false)
	}
	if n := len(t.wops); n > t.o.maxTxnOps {
		t.fail(fmt.Errorf("%w: after %s the commit holds %d writes, limit %d", ErrSTMTooManyOps, fmt.Sprintf(format, args...), n, t.o.maxTxnOps), false)
	}
}

// stmGet is one read: a key, or the range [key, end) when end is set.
type stmGet struct {
	key, end string
	limit    int64
}

func (g stmGet) op(opts []clientv3.OpOption) clientv3.Op {
	if g.end != "" {
		opts = append(opts, clientv3.WithRange(g.end))
	}
	if g.limit > 0 {
		opts = append(opts, clientv3.WithLimit(g.limit))
	}
	return clientv3.OpGet(g.key, opts...)
}

// fetch reads gets in one round trip and returns their responses in
// order. Under the snapshot levels the first read of an attempt is
// linearizable and fixes the snapshot; later ones are served at that
// revision by whichever member the client reaches.
func (t *stmTxn) fetch(gets []stmGet) []*pb.RangeResponse {
	var opts []clientv3.OpOption
	rev := t.rev()
	switch {
	case rev > 0:
		opts = []clientv3.OpOption{clientv3.WithRev(rev), clientv3.WithSerializable()}
	case t.o.iso.snapshot() && t.snap.from == stmRead:
		// The snapshot is read linearizably: a read-only transaction
		// then needs no commit.
	default:
		opts = []clientv3.OpOption{clientv3.WithSerializable()}
	}
	hdr, resps, err := t.send(gets, opts)
	if err != nil && errors.Is(err, rpctypes.ErrFutureRev) && rev > 0 {
		// The member serving the read has not applied the snapshot
		// revision yet (etcd #11963). A linearizable read at that revision
		// waits until the member has caught up with the leader, which
		// has applied it, so it cannot fail this way.
		hdr, resps, err = t.send(gets, []clientv3.OpOption{clientv3.WithRev(rev)})
	}
	if err != nil {
		// A compacted snapshot is gone: the attempt is void, but a new one
		// reads a fresh snapshot. A read cut short by the abort context
		// fails with the context's error, not etcd's gRPC status.
		retry := errors.Is(err, rpctypes.ErrCompacted) && rev > 0
		t.fail(ctxEnded(t.o.ctx, err, rpctypes.ErrCompacted), retry)
	}
	if t.snap.hdr == nil {
		t.snap.hdr = hdr // under the snapshot levels, this fixes R
	}
	return resps
}

func (t *stmTxn) send(gets []stmGet, opts []clientv3.OpOption) (*pb.ResponseHeader, []*pb.RangeResponse, error) {
	if len(gets) == 1 {
		r, err := t.client.Do(t.o.ctx, gets[0].op(opts))
		if err != nil {
			return nil, nil, err
		}
		g := r.Get()
		return g.Header, []*pb.RangeResponse{(*pb.RangeResponse)(g)}, nil
	}
	ops := make([]clientv3.Op, len(gets))
	for i, g := range gets {
		ops[i] = g.op(opts)
	}
	r, err := t.client.Txn(t.o.ctx).Then(ops...).Commit()
	if err != nil {
		return nil, nil, err
	}
	resps := make([]*pb.RangeResponse, len(r.Responses))
	for i, rr := range r.Responses {
		resps[i] = rr.GetResponseRange()
	}
	return r.Header, resps, nil
}

// commit sends the attempt's writes guarded by its compares. retry is set
// when the compares failed; the failure branch then carries fresh values
// of everything read, which the next attempt starts from (t.snap then
// says so).
func (t *stmTxn) commit() (resp *clientv3.TxnResponse, retry bool, err error) {
	if t.doomed {
		t.snap = stmSnap{}
		return nil, true, nil
	}
	cmps := t.cmps()
	validate := t.o.iso == RepeatableReads || (t.o.iso.snapshot() && !t.snap.current())
	if len(t.wops) == 0 && (len(cmps) == 0 || !validate) {
		// Nothing to write, and nothing to check: the attempt read one
		// snapshot that was current when it was read (a linearizable
		// read, or a commit's own response), so a read-only transaction
		// is already serialized at that revision; ReadCommitted checks
		// nothing. A snapshot read serializably may be stale, and reads
		// under RepeatableReads may come from different revisions: those
		// are validated with a compare-only Txn, which writes nothing.
		hdr := t.snap.hdr
		if hdr == nil {
			hdr = &pb.ResponseHeader{}
		}
		return &clientv3.TxnResponse{Header: hdr, Succeeded: true}, false, nil
	}
	if err := t.o.ctx.Err(); err != nil {
		return nil, false, err
	}
	thens := make([]clientv3.Op, len(t.wops))
	for i, w := range t.wops {
		thens[i] = w.op
	}
	var elses []clientv3.Op
	var gets []stmGet
	if len(cmps) > 0 && len(t.rkeys)+len(t.ranges) <= t.o.maxTxnOps {
		gets = t.rereads(t.rkeys, t.ranges)
		elses = make([]clientv3.Op, len(gets))
		for i, g := range gets {
			elses[i] = g.op(nil)
		}
	}
	resp, err = t.client.Txn(t.o.ctx).If(cmps...).Then(thens...).Else(elses...).Commit()
	if err != nil {
		return nil, false, t.commitError(err)
	}
	if resp.Succeeded {
		return resp, false, nil
	}
	t.snap = stmSnap{}
	if len(elses) > 0 {
		resps := make([]*pb.RangeResponse, len(resp.Responses))
		for i, r := range resp.Responses {
			resps[i] = r.GetResponseRange()
		}
		t.carry(t.rkeys, gets, resps)
		t.snap = stmSnap{hdr: resp.Header, from: stmFromCommit}
	}
	return nil, true, nil
}

// cmps builds the commit's compares; see the Isolation constants.
func (t *stmTxn) cmps() []clientv3.Cmp {
	if t.o.iso == ReadCommitted {
		return nil
	}
	cmps := make([]clientv3.Cmp, 0, t.cmpCount())
	for _, k := range t.rkeys {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", t.seen[k]))
	}
	for _, r := range t.ranges {
		for _, kv := range r.kvs {
			if _, ok := t.reads[string(kv.Key)]; !ok {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision))
			}
		}
	}
	if t.o.iso == RepeatableReads {
		return stmDedupCmps(cmps)
	}
	rev := t.rev()
	// Keys inserted into or modified in a range after the snapshot carry
	// a mod revision above it. Deleted keys leave no trace in a range
	// compare (it only sees live keys); the per-key compares above catch
	// them.
	for _, r := range t.ranges {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(r.key), "<", rev+1).WithRange(r.end))
	}
	if t.o.iso == SerializableSnapshot && rev > 0 {
		for _, w := range t.wops {
			if _, ok := t.seen[w.key]; !ok {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(w.key), "<", rev+1))
			}
		}
	}
	return stmDedupCmps(cmps)
}

// stmDedupCmps drops repeated per-key compares: a key that two ranges
// returned, or that a range returned and Get read. Two observations of one
// key are equal, or the attempt is doomed and never commits.
func stmDedupCmps(cmps []clientv3.Cmp) []clientv3.Cmp {
	seen := make(map[string]bool, len(cmps))
	out := cmps[:0]
	for _, c := range cmps {
		if pc := c.GetCompare(); len(pc.RangeEnd) == 0 {
			k := string(pc.Key)
			if seen[k] {
				continue
			}
			seen[k] = true
		}
		out = append(out, c)
	}
	return out
}

// commitError classifies a failed commit. Errors that prove the request
// was not applied (the server rejected it as malformed or unauthorized, or
// the client never had a connection to send it on) are returned as they
// are; everything else may follow an applied commit and is indeterminate.
func (t *stmTxn) commitError(err error) error {
	if errors.Is(err, rpctypes.ErrTooManyOps) {
		// Refused whole, whatever became of the abort context.
		return fmt.Errorf("%w: the server's --max-txn-ops is below WithMaxTxnOps (%d): %w", ErrSTMTooManyOps, t.o.maxTxnOps, err)
	}
	if len(t.wops) == 0 {
		// A compare-only commit writes nothing, whatever happened to it.
		return ctxEnded(t.o.ctx, err)
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		switch ee.Code() {
		case codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated:
			return err
		}
	}
	if s, ok := status.FromError(err); ok && s.Code() == codes.Unavailable {
		// etcd's client retries a mutation only when it was never sent;
		// these are the descriptions it leaves when it gave up on that.
		if d := rpctypes.ErrorDesc(err); d == "there is no address available" || d == "there is no connection available" {
			return err
		}
	}
	// Cut short by the abort context, the cause is the context's error:
	// errors.Is(err, ctx.Err()) holds, and etcd's gRPC status is only text.
	if cerr := ctxEnded(t.o.ctx, err); cerr != err {
		return fmt.Errorf("%w: %w (%v)", ErrSTMIndeterminate, cerr, err)
	}
	return fmt.Errorf("%w: %w", ErrSTMIndeterminate, err)
}

// stmBackoff is the pause before the next attempt after n consecutive
// conflicts: none after the first (the failed commit returned fresh
// values to retry on at once), then full jitter in
// [0, min(maxDelay, base << (n-2))].
func stmBackoff(base, maxDelay time.Duration, n int) time.Duration {
	if n < 2 || base <= 0 {
		return 0
	}
	d := maxDelay
	if s := n - 2; s < 32 && base<<s < maxDelay && base<<s > 0 {
		d = base << s
	}
	return time.Duration(rand.Int64N(int64(d) + 1))
}

func stmSleep(ctx context.Context, d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}

// stmTruncated reports whether a range read with the given limit (0: none)
// returned, or would have returned, more keys than a commit can validate.
func stmTruncated(r *pb.RangeResponse, limit int64) bool {
	return r.More || (limit > 0 && int64(len(r.Kvs)) >= limit)
}

// stmFirst is the key-value a read of one key returned, nil when absent.
func stmFirst(r *pb.RangeResponse) *mvccpb.KeyValue {
	if len(r.Kvs) == 0 {
		return nil
	}
	return r.Kvs[0]
}

func stmModRev(kv *mvccpb.KeyValue) int64 {
	if kv == nil {
		return 0
	}
	return kv.ModRevision
}
