// Package faults is baton's Jepsen-style fault suite: a real 3-member etcd
// cluster whose members and clients are separate OS processes, faults
// injected into it, histories of every client operation, and checkers that
// judge them.
//
// # Harness
//
// The test binary re-executes itself in two roles, chosen in TestMain by
// the BATON_FAULTS_ROLE environment variable: "member" runs one etcd member
// (package embedded) until SIGTERM, "worker" runs one workload's client
// loop. Each member's client and peer ports sit behind an etcd proxy
// (go.etcd.io/etcd/pkg/v3/proxy) in the test process, and the members
// advertise the proxies, so that clients and peers reach a member only
// through them. Member logs go to files in the run's folder.
//
// Workers write every operation to a history file of JSON lines: an
// invoke record before the request is sent, and an ok, fail or unknown
// record, fsynced, when it completes. fail means it certainly took no
// effect (a guard that did not hold, an STM error before the commit);
// unknown means the request may have been applied (a timeout or a lost
// connection after sending, or a worker killed mid-request).
//
// # Faults
//
// Each fault is recorded with its start and end:
//   - kill: kill -9 a member, restart it on its data dir;
//   - pause-leader, pause-follower: SIGSTOP the raft leader (found by
//     Status) or a follower, then SIGCONT;
//   - partition: blackhole one member's client and peer proxies both ways,
//     then heal. Connections that member dialed to the others' proxies
//     still carry what the others send it, so it is cut off from being
//     heard rather than from hearing;
//   - client-delay: 40 ms ± 30 ms on every client proxy, each way;
//   - client-drop: blackhole every client proxy for 1.5 s;
//   - worker-pause: SIGSTOP a worker the moment its history says it holds
//     the lock (or permit) and read the register, keep it stopped for at
//     least its 2 s session TTL plus a second and until another worker
//     completed an operation, then SIGCONT it. A bank or queue worker is
//     paused for 3 s wherever it is;
//   - cache-restart, cache-pause (memlock workloads only): kill and restart
//     the memcached or redis-server empty, or SIGSTOP it for 4 s; and a
//     memlock holder paused inside f for its TTL plus a second.
//
// The proxy's blackhole drops the bytes in flight on open connections
// rather than stalling them, so a connection that outlives it has lost
// whole requests or answers (and gRPC may reset it with PROTOCOL_ERROR):
// message loss, harsher than packet loss under TCP.
//
// # Workloads and what is checked
//
//   - mutex: workers on 2 s sessions Lock a baton Mutex, read a register
//     key, and write a new unique value through Mutex.Guard with the token
//     Mutex.Rev stored alongside, then Unlock.
//   - election: the same, as the leader of a baton Election, through
//     Election.Guard, one to three rounds per leadership.
//
// A holder whose write's answer was lost ends its hold (Unlock, Resign)
// before it writes again. Fencing orders holders, not one holder's own
// requests: a write held up by a paused or cut-off member can land after
// the same leader's next write, with a token that is still valid, and
// overwrite it (the suite saw this before the election workers resigned
// on an unknown outcome). Once the hold has ended, the late write fails
// its guard.
//   - bank: STM transfers between accounts, each writing a unique transfer
//     id key, and reads of all balances.
//   - semaphore: three workers on a Semaphore of limit 2 access a resource
//     through a Txn guarded by their grant key's create revision (the token
//     Semaphore.Rev) that also reads every grant key at that revision.
//   - queue: workers enqueue unique items and dequeue them; the parent
//     drains what is left after the run.
//   - memlock-memcached, memlock-redis (when both servers are on PATH):
//     workers take a memlock (TTL 3 s, refresh 500 ms) with TryWithLock and
//     hold it in f for 1.2 s, stopping as soon as f's context ends.
//
// A register written under a lock is checked two ways. Its history goes to
// porcupine with a model of a fenced register: a write is legal only if its
// token is no lower than the last applied one and it replaces the value its
// writer read under the lock; unknown writes may or may not have applied.
// And the resource's own log, every revision of the register key read back
// after the run, is compared with the writes: every acknowledged write
// applied exactly once, no failed write applied, no write from nowhere,
// every applied write replaced what its writer read (else "lost-update")
// with a token no lower than before (else "stale-token"). For the
// election, no two campaigns may believe they lead with one token.
//
// The bank checks that every read and the final state sum to the total,
// that acknowledged transfers applied and failed ones did not, and that the
// final balances are exactly the initial ones moved by the applied
// transfers; transfers with an unknown outcome (ErrSTMIndeterminate) are
// resolved by reading their id keys.
//
// The semaphore checks that every accepted access found its grant among
// the first limit grants in line at that revision: at most limit grants
// were accepted at once. The queue checks that no item is delivered twice
// or from nowhere, and that every acknowledged item is delivered, except at
// most one per Dequeue that returned ErrClaimUnknown.
//
// memlock is best effort: its holders can overlap. The suite reports the
// overlaps and checks each one is of a kind the memlock package doc names
// (a server restart dropped the lock, a paused server, a holder paused past
// its TTL), and that the old holder's f saw its context end within the
// bound the doc implies: the next refresh (refresh interval + timeout)
// after the new holder got in, or at once when a paused holder resumes.
// Unexplained overlaps and late cancellations are failures.
//
// # Controls
//
// Two workloads prove the checkers bite: control-baton and control-etcd
// write the register with a plain Put after Lock (tried again on an error,
// as a client that trusts its lock does), with baton's Mutex and with
// etcd's client/v3/concurrency Mutex. A lock alone is not a fence: the
// worker paused past its TTL resumes after another took the lock and
// overwrites its update. When the resumed worker's write does not land
// (its connection broke), the pause is repeated (also when nobody took the lock over while it slept), up to five times. Both are expected to show lost-update and
// stale-token anomalies and a non-linearizable history; the suite reports
// that as the expected non-guarantee, and fails if a control shows nothing
// (the faults were too weak).
//
// # Running
//
// TestFaultsShort runs one round of every fault (about a minute) in go
// test ./.... TestFaultsLong runs for -faults.duration (see make faults);
// -faults.seed reproduces a run's choices and -faults.dir chooses the
// folder of its report: report.txt (workload × fault: operations,
// outcomes, anomalies, recovery), faults.jsonl, one porcupine visualization
// per register workload, the histories and the member logs. An operation
// counts under the latest fault that started before it (up to the next
// one); recovery is the time from a fault's start to the first operation
// started after it that succeeded and made progress (a write, transfer,
// access, enqueue, dequeue or hold; reads do not count). Without memcached
// and redis-server on PATH the memlock workloads are left out, unless CI is
// set, where that is a failure.
//
// The suite runs on Linux only (it reads /proc and uses Pdeathsig).
package faults
