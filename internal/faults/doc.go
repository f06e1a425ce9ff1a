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
//     the lock and read the register, keep it stopped past its 2 s session
//     TTL until another worker wrote, then SIGCONT it.
//
// # Workloads and what is checked
//
//   - mutex: workers on 2 s sessions Lock a baton Mutex, read a register
//     key, and write a new unique value through Mutex.Guard with the token
//     Mutex.Rev stored alongside, then Unlock.
//   - election: the same, as the leader of a baton Election, through
//     Election.Guard.
//   - bank: STM transfers between accounts, each writing a unique transfer
//     id key, and reads of all balances.
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
// # Controls
//
// Two workloads prove the checkers bite: control-baton and control-etcd
// write the register with a plain Put after Lock, with baton's Mutex and
// with etcd's client/v3/concurrency Mutex. A lock alone is not a fence:
// the worker paused past its TTL resumes after another took the lock and
// overwrites its update. Both are expected to show lost-update and
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
// per register workload, the histories and the member logs.
//
// The suite runs on Linux only (it reads /proc and uses Pdeathsig).
package faults
