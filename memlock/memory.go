package memlock

import (
	"context"
	"fmt"
	"sync"
	"time"
)

type memoryCache struct {
	mu     sync.Mutex
	items  map[string]memoryItem
	fences map[string]int64
}

type memoryItem struct {
	value   string
	expires time.Time
}

// NewMemory returns a Cache in this process's memory, for tests and for
// programs that run as one process. It behaves as the other caches do
// (expiry, re-entry, fencing) and never loses a lock by itself.
func NewMemory() Cache {
	return &memoryCache{items: map[string]memoryItem{}, fences: map[string]int64{}}
}

func (m *memoryCache) backend() string { return "memory" }

func (m *memoryCache) lifetime(ttl time.Duration) time.Duration { return ttl }

func (m *memoryCache) checkKey(key string, _ bool) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	return nil
}

// current returns the live value of key, removing it if it has expired.
// m.mu must be held.
func (m *memoryCache) current(key string) (string, bool) {
	it, ok := m.items[key]
	if ok && !time.Now().Before(it.expires) {
		delete(m.items, key)
		ok = false
	}
	return it.value, ok
}

func (m *memoryCache) take(ctx context.Context, h *hold) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.current(h.key); ok && !h.mayTake(v) {
		return false, nil
	}
	m.items[h.key] = memoryItem{value: h.value, expires: time.Now().Add(h.ttl)}
	return true, nil
}

func (m *memoryCache) extend(ctx context.Context, h *hold) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch v, ok := m.current(h.key); {
	case !ok:
		return errGone
	case v != h.value:
		return errChanged
	}
	m.items[h.key] = memoryItem{value: h.value, expires: time.Now().Add(h.ttl)}
	return nil
}

func (m *memoryCache) release(ctx context.Context, h *hold) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.current(h.key); ok && v == h.value {
		delete(m.items, h.key)
	}
	return nil
}

func (m *memoryCache) fence(ctx context.Context, h *hold) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := h.fenceKey()
	m.fences[k]++
	return m.fences[k], nil
}
