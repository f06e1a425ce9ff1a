// Package layout is the one description of the keys that baton's
// primitives write in etcd. The concurrency package builds its keys with
// it, and the baton command (status, web) reads them back with it, so the
// two cannot drift apart.
//
// Every primitive lives under its name (the prefix the user gave, "deploy"
// for "baton lock deploy"). Below it:
//
//	Mutex, Election, Semaphore   NAME/<lease>          one key per participant
//	RWMutex                      NAME/read/<lease>     a reader
//	                             NAME/write/<lease>    a writer
//	DoubleBarrier                NAME/waiters/<lease>  a participant
//	                             NAME/ready            put when it filled
//	                             NAME/withdrawn        touched when one gave up
//	Barrier                      NAME                  held while it exists
//	Queue                        NAME/<seq>            an item (20 digits)
//	                             NAME/seq              the sequence counter
//	                             NAME/w/<lease16>-<n>  a waiting consumer
//	                             NAME/c/<lease16>-<n>  a consumer's claim record
//	PriorityQueue                NAME/<pr>/<seq>       an item (5 + 20 digits)
//	                             NAME/n/<seq>          the item's arrival key
//
// <lease> is the session's lease ID in lower-case hex, the key etcd's
// package and etcdctl use; a second concurrent handle of one session on the
// same name adds "-<n>" (Claim). <lease16> is the lease zero-padded to 16
// hex digits. Participant keys are attached to that lease; barrier keys,
// queue items and counters are not.
//
// Some of these shapes cannot be told apart by the key alone: a Mutex
// named "jobs/read" has the same keys as the readers of an RWMutex named
// "jobs". Parse settles such cases by the rule written on each Role.
package layout

import (
	"strconv"
	"strings"
)

// Sub-names under a primitive's directory.
const (
	// RWRead and RWWrite hold an RWMutex's readers and writers.
	RWRead  = "read/"
	RWWrite = "write/"
	// DBWaiters, DBReady and DBWithdrawn are a DoubleBarrier's
	// participants, its full flag and its withdrawal marker.
	DBWaiters   = "waiters/"
	DBReady     = "ready"
	DBWithdrawn = "withdrawn"
	// QueueSeq is a queue's sequence counter; QueueWaiters its line of
	// waiting consumers; QueueClaims its consumers' claim records;
	// QueueArrivals a priority queue's arrival keys.
	QueueSeq      = "seq"
	QueueWaiters  = "w/"
	QueueClaims   = "c/"
	QueueArrivals = "n/"
)

// Digits of a queue item's sequence number and of a priority.
const (
	seqDigits      = 20
	priorityDigits = 5
)

// Dir is the directory under which the participants of the primitive name
// queue: name + "/".
func Dir(name string) string { return name + "/" }

// Own is the key of a session's first handle under dir (a Dir): dir +
// the lease in hex. etcd's Mutex and Election and etcdctl use the same key.
func Own(dir string, lease int64) string { return dir + strconv.FormatInt(lease, 16) }

// Claim is the key of the n-th further concurrent handle of one session
// whose first key is base (an Own key): base + "-n". Claim(base, 0) is
// base.
func Claim(base string, n int) string {
	if n == 0 {
		return base
	}
	return base + "-" + strconv.Itoa(n)
}

// parseOwn reports whether leaf is hex(lease) or hex(lease)-<n>.
func parseOwn(leaf string, lease int64) bool {
	if lease == 0 {
		return false
	}
	hex := strconv.FormatInt(lease, 16)
	if leaf == hex {
		return true
	}
	n, ok := strings.CutPrefix(leaf, hex+"-")
	return ok && isDigits(n) && n[0] != '0'
}

// SemaphoreValue is the value of a Semaphore key: "n/limit".
func SemaphoreValue(n, limit int64) string {
	return strconv.FormatInt(n, 10) + "/" + strconv.FormatInt(limit, 10)
}

// ParseSemaphoreValue parses a SemaphoreValue. ok is false, with zeros,
// for any other value, and for n or limit <= 0.
func ParseSemaphoreValue(v []byte) (n, limit int64, ok bool) {
	a, b, found := strings.Cut(string(v), "/")
	if !found {
		return 0, 0, false
	}
	n, err1 := strconv.ParseInt(a, 10, 64)
	limit, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || n <= 0 || limit <= 0 {
		return 0, 0, false
	}
	return n, limit, true
}

// SemaphoreGranted is how many of the oldest requests of a semaphore queue
// hold their permits: the longest run, in create-revision order, whose
// permits (permits(q[i])) fit within limit. The queue is first come, first
// served: a request that would fit waits behind one that does not.
func SemaphoreGranted[T any](q []T, permits func(T) int64, limit int64) int {
	var sum int64
	for i, e := range q {
		sum += permits(e)
		if sum > limit {
			return i
		}
	}
	return len(q)
}

// RWGranted is how many of the oldest keys of an RWMutex queue, in
// create-revision order, hold the lock: the first key if it is a writer,
// else every reader ahead of the first writer.
func RWGranted[T any](q []T, writer func(T) bool) int {
	if len(q) == 0 {
		return 0
	}
	if writer(q[0]) {
		return 1
	}
	for i, e := range q {
		if writer(e) {
			return i
		}
	}
	return len(q)
}

// QueueItem is the key of the item with sequence seq of the FIFO queue
// whose Dir is dir.
func QueueItem(dir string, seq int64) string {
	return dir + pad(strconv.FormatInt(seq, 10), seqDigits)
}

// PriorityItem is the key of the item with priority pr and sequence seq of
// the priority queue whose Dir is dir.
func PriorityItem(dir string, pr uint16, seq int64) string {
	return dir + pad(strconv.FormatUint(uint64(pr), 10), priorityDigits) + "/" + pad(strconv.FormatInt(seq, 10), seqDigits)
}

// ArrivalKey is the key that announces the item with sequence seq of the
// priority queue whose Dir is dir.
func ArrivalKey(dir string, seq int64) string {
	return QueueItem(dir+QueueArrivals, seq)
}

// ParseQueueItem parses rest, an item key without its queue's Dir, and
// returns its sequence number; ok is false for anything else in the item
// range. priority selects the PriorityItem shape.
func ParseQueueItem(rest string, priority bool) (seq int64, pr uint16, ok bool) {
	if priority {
		if len(rest) != priorityDigits+1+seqDigits || rest[priorityDigits] != '/' || !isDigits(rest[:priorityDigits]) {
			return 0, 0, false
		}
		p, err := strconv.ParseUint(rest[:priorityDigits], 10, 16)
		if err != nil {
			return 0, 0, false
		}
		pr, rest = uint16(p), rest[priorityDigits+1:]
	}
	if len(rest) != seqDigits || !isDigits(rest) {
		return 0, 0, false
	}
	seq, err := strconv.ParseInt(rest, 10, 64)
	return seq, pr, err == nil
}

// QueueWaiter is the key of a waiting consumer of the queue whose Dir is
// dir: the consumer handle's lease and its n-th wait.
func QueueWaiter(dir string, lease, n int64) string {
	return dir + QueueWaiters + lease16(lease) + "-" + strconv.FormatInt(n, 10)
}

// QueueClaimRecord is the key of claim slot slot of a consumer of the
// queue whose Dir is dir. It holds the ID of the slot's latest claim and
// lives on the consumer's lease: it tells a consumer whose answer was lost
// whether its claim took effect.
func QueueClaimRecord(dir string, lease int64, slot int) string {
	return dir + QueueClaims + lease16(lease) + "-" + strconv.Itoa(slot)
}

// parseLease16 reports whether leaf is <lease16>-<n> for lease.
func parseLease16(leaf string, lease int64) bool {
	if lease == 0 {
		return false
	}
	n, ok := strings.CutPrefix(leaf, lease16(lease)+"-")
	return ok && isDigits(n)
}

func lease16(lease int64) string { return pad(strconv.FormatInt(lease, 16), 16) }

func pad(s string, n int) string {
	if len(s) >= n {
		return s
	}
	return strings.Repeat("0", n-len(s)) + s
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
