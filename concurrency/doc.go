// Package concurrency implements distributed coordination on etcd v3:
// sessions, mutexes, leader election and software transactional memory, with
// the same API as go.etcd.io/etcd/client/v3/concurrency, so that code written
// for etcd's package moves here by changing one import path.
//
// # Sessions
//
// A Session is a lease that a goroutine keeps alive. Every key a primitive
// writes is attached to its session's lease, so it disappears when the
// session ends: Close revokes the lease at once; a dead process stops the
// keep-alives and the lease expires after its TTL (default 60 s). Orphan
// stops the keep-alives only: Done closes at once, as in etcd's package,
// but the lease and what waits or holds on it live on until the server
// expires it.
//
// The session is the participant. Every Mutex (or Election) made on one
// Session and prefix uses the same key, pfx/hex(lease), as in etcd's
// package: a second handle on a session that holds the lock holds it, one
// on a session that leads proclaims its value and leads, one on a session
// that waits waits in the same place, and Unlock or Resign on any handle
// ends it for all of them. A failed Lock or Campaign on one handle never
// deletes the key while another handle of the session still uses it. For
// exclusion among goroutines that share a session (etcd #11360), make the
// handles WithExclusive: each gets a key of its own. Mixing the two kinds
// on one session and prefix would queue a session behind itself, and is
// refused with ErrWaitsOnItself.
//
// # Locks and elections
//
// Mutex and Election queue their participants as keys under pfx + "/",
// ordered by create revision; the oldest holds the lock or leads. This is
// the layout of etcd's package, etcdctl lock and etcdctl elect, so baton and
// those tools exclude each other on the same prefix, and a fleet can move
// from one to the other a process at a time.
//
// A waiter watches only the participant just ahead of it, so a release
// wakes one waiter, not all of them. Its watch starts at the current
// revision, where etcd's starts at an older one and can wait up to 100 ms
// for the server's resync loop; this makes a handoff cost one write plus
// one watch event. A waiter also watches its own key, and returns
// ErrSessionExpired as soon as its session's lease ends (not when the
// session is orphaned: the lease lives on, and the waiter with it).
//
// # Guarantees
//
//   - Mutual exclusion among participants that reach the same etcd cluster,
//     as long as each holder's session is alive.
//   - FIFO: waiters acquire in the order their keys were created.
//   - Every acquisition has a fencing token, Rev of its Mutex, RWMutex,
//     Election or Semaphore: the create revision of the holder's key.
//     Tokens are unique and strictly increase from one holder to the next;
//     Rev is -1 when nothing is held.
//   - Lock, TryLock and Campaign either succeed or leave no key behind.
//     Unlock and Resign delete only the key of the acquisition they end.
//   - WithLock, WithRLock, WithWLock, WithLeadership and WithPermits cancel
//     the context they pass with cause ErrLockLost, ErrLeadershipLost or
//     ErrPermitsLost as soon as a watch shows the holder's key gone or the
//     session ends.
//   - Guard (of a Mutex, an RWMutex, an Election or a Semaphore's youngest
//     grant) commits operations in one transaction only while the lock,
//     leadership or grant is still held, and fails with an error otherwise.
//
// # What a lock cannot promise
//
// A lease is not a fence. A holder that pauses (a GC pause, a stopped VM, a
// partition) for longer than its TTL loses its lock without knowing it, and
// a new holder acts in the meantime; no client-side check closes that
// window, because the pause can fall between the check and the action.
// Jepsen found exactly this in etcd's locks. Two remedies:
//
//   - Writes to etcd itself: make them with Guard (or a transaction that
//     includes IsOwner), which etcd applies only if the holder's key still
//     has the holder's create revision.
//   - Writes to anything else: pass the fencing token with every request
//     and have the resource remember the highest token it has seen and
//     reject lower ones. A resource that cannot do this cannot be protected
//     by any lock service.
//
// The loss signal of WithLock is prompt but not instantaneous: f learns of
// the loss one watch event later. When the network is the problem, no event
// comes; the holder then goes by its keep-alives instead: once none has
// been answered for the session's trust window (WithLeaseTrust: the whole
// TTL by default, 2/3 of it in baton lock and baton elect), the hold's
// context ends with ErrLeaseUnconfirmed, while the server still keeps the
// lease, so a holder cut off from the cluster stops before anyone else can
// be handed the lock. That margin is a timing assumption (clocks that run
// at the same rate, a holder that stops promptly when told), so treat the
// signal as "stop now", and the token as the guard.
//
// etcd refreshes every lease to its full TTL when its raft leader changes,
// so the lock of a dead client can outlive its TTL during elections.
//
// # A leader elector in client-go's shape
//
// LeaderElector runs callbacks as it gains and loses leadership of an
// Election, with the names of client-go's leaderelection (Run, IsLeader,
// GetLeader, Check, OnStartedLeading, OnStoppedLeading, OnNewLeader,
// ReleaseOnCancel), so that controllers move over field by field. Unlike
// client-go's, it fences: each term has a token (Leadership.Rev) and a
// Guard that etcd applies only while the term's key exists. Run campaigns
// again after every loss, never runs two terms at once, calls
// OnStoppedLeading once per term and never for a node that did not lead,
// and with ReleaseOnCancel resigns only after OnStartedLeading returned.
//
// A leader steps down by itself when its keep-alives go unanswered for
// RenewDeadline: by default 2/3 of the TTL (client-go's 10 s of 15 s), the
// session's lease trust (WithLeaseTrust), but at least TTL/3 + 1.5 s so
// that a keep-alive cycle and a raft election fit in it. The leader's ctx
// is then cancelled up to a third of the TTL before the server can expire
// the lease and elect another. On a 3-member cluster with a 5 s TTL and
// the leader's connection cut, its ctx ended 3.3 s after the cut and the
// new leader's OnStartedLeading came 1.8 to 2.1 s later. The step-down is a
// signal, not a fence: a callback that ignores its ctx goes on acting,
// which Check reports, and only Guard or the token stop its writes.
//
// # Barriers, semaphores, read-write locks and queues
//
// Every waiting call takes ctx and has a Try form. Waiters watch from the
// current revision, so they see changes without etcd's 100 ms catch-up
// delay, and only the waiters that may proceed wake up (a Semaphore release
// wakes at most two). A watch that ends (compaction after a reconnect, a
// member without a leader, a closed client) is an error, never a success.
//
//   - Barrier holds processes until one releases it. It is the exact key
//     given, not a prefix, and not leased, so a held barrier outlives its
//     holder. Wait returns nil only once it has seen the key absent or
//     deleted.
//   - DoubleBarrier lets count participants start together and finish
//     together. Participants are leased keys: one whose session ends before
//     the barrier fills stops counting; one whose session ends after it
//     filled counts as having left. A participant beyond count gets
//     ErrTooManyParticipants and leaves nothing behind.
//   - Semaphore is a weighted, strictly FIFO counting semaphore. Permits
//     come back by themselves when the holder's session ends; clients that
//     disagree on the limit get ErrLimitMismatch; each grant's create
//     revision is its fencing token (Rev).
//   - RWMutex shares among readers and excludes writers; a waiting writer
//     blocks later readers. A waiter whose session ends never takes the
//     lock.
//   - Queue and PriorityQueue deliver each item to exactly one consumer. A
//     Dequeue whose ctx ends never drops an item. When the answer to a
//     claim is lost in a member crash, a claim record written with it
//     tells whether the item was taken: it is returned, or left for
//     others. Only if the cluster stays out of reach for 10 s, or the
//     record expires with the consumer's lease, is the outcome unknown
//     (ErrClaimUnknown), and the item may be lost. Items are not leased:
//     an item taken by a consumer that then dies is gone.
//     Waiting consumers stand in line on short leases of their own: an
//     arriving item wakes the consumer it is for, not all of them; a
//     consumer that dies while waiting holds the line up until its lease
//     ends (10 s, or more if the raft leader changes meanwhile, #9395).
//
// As with Mutex, permits and locks are leases, not fences: pass Rev to the
// protected resource.
//
// # Software transactional memory
//
// NewSTM runs apply against an STM, a view of the keyspace, and commits its
// writes in one transaction guarded by compares on what it read. If another
// writer got in between, the commit fails, writes nothing, and apply runs
// again on fresh data. The API is etcd's; the STM also implements RangeSTM
// (GetPrefix, GetRange). The isolation levels are etcd's four, and the
// contract of each (where its reads come from, what its commit compares,
// which anomalies it allows, what a read-only transaction costs) is written
// once, on the Isolation constants: see [SerializableSnapshot] (the default,
// strict serializable), [Serializable], [RepeatableReads] and
// [ReadCommitted]. A commit holds at most --max-txn-ops compares, which
// bounds the size of range reads: see RangeSTM and ErrSTMTooManyOps.
//
// The first retry after a conflict is immediate; later ones pause with
// jitter (WithRetryBackoff). WithMaxAttempts bounds the attempts, unlimited
// by default as in etcd. A commit whose outcome is unknown (the connection
// dropped after the request left) returns ErrSTMIndeterminate and is never
// retried, since a retry could apply it twice (etcd #14890, #18424). A panic
// in apply reaches the caller in its own goroutine, with nothing written.
//
// # Clients and faults
//
// The package works on any *clientv3.Client, but what a fault costs
// depends on the client. On one made by clientv3.New, a member that stops
// answering without closing its connections (a SIGSTOPped or frozen
// process, a network that drops packets) keeps its share of the balancer:
// the requests and watches put on it hang for as long as the fault lasts,
// as they do under etcd's own package. NewClient returns a client that
// probes every member on a connection of its own and, when one stays
// silent for a second while another answers, closes the client's
// connections to it, so that its requests fail over and its watches resume
// elsewhere (WithSilenceLimit). It also closes a connection on which the
// member refuses every request (RST_STREAM PROTOCOL_ERROR, after bytes
// lost inside the stream put the two ends' header compression out of
// step), which gRPC would otherwise keep. baton's command and fault suite
// use it.
//
// On any client, the requests that the package can safely send twice
// (joining a queue, leaving it, the releases of Mutex, RWMutex, Election
// and Semaphore, Close's revoke, a session's grant, every read at a
// revision) are sent again when an
// attempt gets no answer within its time (1 s at first, then longer) or
// fails on a member that went away: reads until the caller's context ends,
// the others for up to 5 s. So a call does not wait out a request that a
// dead leader lost, which etcd's server reports only after its request
// timeout (7 s by default). A key found gone after a release attempt whose
// answer was lost counts as released, not lost. Guard and
// the STM send user operations once: their outcome after such a failure
// is unknown, and reported so.
//
// Measured on a 3-member cluster of member processes, side by side with
// etcd's package: see the README's "Recovery" table and
// internal/faults/recovery.go.
//
// # Metrics and logs
//
// Nothing is recorded or logged unless asked: WithMetrics and WithLogger
// on a Session reach every Mutex, Election, RWMutex and Semaphore made on
// it; WithQueueMetrics, WithQueueLogger, WithSTMMetrics and WithSTMLogger
// do the same for queues and transactions. One metrics.Metrics value, built
// once from a prometheus.Registerer, serves them all (and memlock). Logs
// are changes of state only: keep-alives unanswered and back, a session
// expired, a lock or leadership lost and its cause, a leader change seen, a
// watch re-established, an outcome that stayed unknown. See ExampleWithMetrics.
//
// # Not held and lost
//
// Each type has one error for a call that needs a hold it does not have
// ("not held"), and one for a hold that ended under its holder, its
// session ended or its key deleted ("lost"). Guard and HoldContext return
// them; the release returns "lost" when the hold had already ended; and
// WithLock and its kin cancel their context with "lost" as its cause.
//
//	type           not held                 lost
//	Mutex          ErrLockReleased          ErrLockLost
//	RWMutex        ErrLockReleased (1)      ErrLockLost
//	Election       ErrElectionNotLeader     ErrLeadershipLost (2)
//	Semaphore      ErrPermitsNotHeld        ErrPermitsLost
//	DoubleBarrier  ErrBarrierNotEntered     ErrBarrierLost (3)
//
// (1) RUnlock and Unlock return ErrNotRLocked and ErrNotLocked, which
// match ErrLockReleased. (2) Guard and Proclaim after a loss return an
// error that matches both ErrLeadershipLost and ErrElectionNotLeader;
// Resign when not leading is a no-op, as in etcd. (3) It matches
// ErrSessionExpired, the error of a wait whose own key goes (Lock,
// Campaign, Acquire, Enter). ErrLocked, ErrSessionExpired,
// ErrLockReleased, ErrElectionNotLeader and ErrElectionNoLeader have the
// names and texts of etcd's package.
//
// # Differences from etcd's package
//
//   - Invalid options and arguments are errors (ErrInvalidTTL,
//     ErrEmptyPrefix, ErrNilSession), not warnings or panics.
//   - Mutex and Election are safe for use by several goroutines. Handles on
//     one session share its place, as in etcd; WithExclusive gives a handle
//     a key of its own (etcd #11360), and mixing the kinds on one session
//     and prefix is ErrWaitsOnItself rather than a wait on itself.
//   - The option types (SessionOption, MutexOption) are baton's own, so an
//     etcd API that takes etcd's (leasing.NewKV(cli, pfx,
//     concurrency.WithTTL(1))) needs etcd's package's option there.
//   - Unlock returns ErrLockLost, and Resign ErrLeadershipLost, when the
//     lock or leadership had already ended.
//   - Observe keeps its channel open across compactions and member
//     failures; Events also reports when nobody leads.
package concurrency
