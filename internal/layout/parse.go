package layout

import "strings"

// Role is what a key is to the primitive it belongs to.
type Role int

// The roles, by the shape of the key. Where two shapes coincide, the rule
// given is how Parse decides.
const (
	// RoleNone: not a key of any primitive (data, or a shape Parse does not
	// know).
	RoleNone Role = iota
	// RoleParticipant: NAME/<lease>[-n] on that lease: the holder or a waiter
	// of a Mutex, Election or Semaphore (the value tells them apart).
	RoleParticipant
	// RoleReader and RoleWriter: NAME/read/<lease>[-n] and NAME/write/<lease>[-n]
	// on that lease. A Mutex named "x/read" has the same keys; Parse calls
	// them an RWMutex's, and the caller may look at the value (etcd's and
	// baton's RWMutex write an empty one).
	RoleReader
	RoleWriter
	// RoleDBParticipant: NAME/waiters/<lease>[-n] on that lease, one entrant
	// of a DoubleBarrier (a Mutex named "x/waiters" looks the same).
	RoleDBParticipant
	// RoleDBReady and RoleDBWithdrawn: NAME/ready and NAME/withdrawn, on no lease.
	RoleDBReady
	RoleDBWithdrawn
	// RoleBarrier: any other key on no lease with an empty value. That is all
	// a held Barrier leaves, so any empty leaseless key looks like one.
	RoleBarrier
	// RoleQueueItem: NAME/<20 digits>, or a priority queue's NAME/<5
	// digits>/<20 digits>, on no lease.
	RoleQueueItem
	// RoleQueueCounter: NAME/seq on no lease with a number for its value.
	RoleQueueCounter
	// RoleQueueWaiter: NAME/w/<lease16>-<n> on that lease. The second handle
	// of a session on a Mutex named "x/w" looks the same when its lease
	// has 16 hex digits; the caller may look at the value (a waiter's is
	// empty).
	RoleQueueWaiter
	// RoleQueueClaim: NAME/c/<lease16>-<n> on that lease.
	RoleQueueClaim
	// RoleQueueArrival: NAME/n/<20 digits> on no lease, a priority queue's
	// arrival key.
	RoleQueueArrival
)

var roleNames = [...]string{"none", "participant", "reader", "writer", "double-barrier participant", "double-barrier ready", "double-barrier withdrawn", "barrier", "queue item", "queue counter", "queue waiter", "queue claim", "queue arrival"}

func (r Role) String() string {
	if r < 0 || int(r) >= len(roleNames) {
		return "Role(?)"
	}
	return roleNames[r]
}

// Key is a key read back: the primitive it belongs to (Name, without the
// trailing "/") and its Role there.
type Key struct {
	Name string
	Role Role
	// Priority is a priority queue item's priority; Priority reports
	// whether the item is one.
	Priority   uint16
	IsPriority bool
}

// Parse tells what the key is, from its name, the lease it is attached
// to (0: none) and its value.
func Parse(key string, lease int64, value []byte) Key {
	i := strings.LastIndexByte(key, '/')
	if i < 0 {
		if lease == 0 && len(value) == 0 && key != "" {
			return Key{Name: key, Role: RoleBarrier}
		}
		return Key{}
	}
	dir, leaf := key[:i], key[i+1:]
	parent, sub := splitLast(dir)
	if lease != 0 {
		switch {
		case sub == strings.TrimSuffix(QueueWaiters, "/") && parent != "" && parseLease16(leaf, lease) && len(value) == 0:
			return Key{Name: parent, Role: RoleQueueWaiter}
		case sub == strings.TrimSuffix(QueueClaims, "/") && parent != "" && parseLease16(leaf, lease) && isDigits(string(value)):
			return Key{Name: parent, Role: RoleQueueClaim}
		case !parseOwn(leaf, lease) || dir == "":
			return Key{}
		case parent != "" && sub+"/" == RWRead:
			return Key{Name: parent, Role: RoleReader}
		case parent != "" && sub+"/" == RWWrite:
			return Key{Name: parent, Role: RoleWriter}
		case parent != "" && sub+"/" == DBWaiters:
			return Key{Name: parent, Role: RoleDBParticipant}
		}
		return Key{Name: dir, Role: RoleParticipant}
	}
	if dir != "" {
		if _, pr, ok := ParseQueueItem(sub+"/"+leaf, true); ok && parent != "" {
			return Key{Name: parent, Role: RoleQueueItem, Priority: pr, IsPriority: true}
		}
		if _, _, ok := ParseQueueItem(leaf, false); ok {
			if parent != "" && sub+"/" == QueueArrivals {
				return Key{Name: parent, Role: RoleQueueArrival}
			}
			return Key{Name: dir, Role: RoleQueueItem}
		}
		switch {
		case leaf == QueueSeq && isDigits(string(value)):
			return Key{Name: dir, Role: RoleQueueCounter}
		case leaf == DBReady && len(value) == 0:
			return Key{Name: dir, Role: RoleDBReady}
		case leaf == DBWithdrawn && len(value) == 0:
			return Key{Name: dir, Role: RoleDBWithdrawn}
		}
	}
	if len(value) == 0 {
		return Key{Name: key, Role: RoleBarrier}
	}
	return Key{}
}

// splitLast splits "a/b/c" into "a/b" and "c", and "c" into "" and "c".
func splitLast(s string) (string, string) {
	i := strings.LastIndexByte(s, '/')
	if i < 0 {
		return "", s
	}
	return s[:i], s[i+1:]
}
