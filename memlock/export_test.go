package memlock

import "time"

// Access to the in-process cache for tests of package memlock_test, which
// play "another client" on it.

func MemorySet(c Cache, key, value string, ttl time.Duration) {
	m := c.(*memoryCache)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.items[lockPrefix+key] = memoryItem{value: value, expires: time.Now().Add(ttl)}
}

func MemoryGet(c Cache, key string) (string, bool) {
	m := c.(*memoryCache)
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.current(lockPrefix + key)
}

func MemoryDelete(c Cache, key string) {
	m := c.(*memoryCache)
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.items, lockPrefix+key)
}
