package memlock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/batonhq/baton/memlock"
)

func TestTakeRunRelease(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		l := b.locker(t)
		ctx := context.Background()
		errF := errors.New("f's own error")
		err := l.TryWithLock(ctx, "job", "alice", func(fctx context.Context) error {
			v, ok := b.get(t, "job")
			if !ok || !strings.HasPrefix(v, "alice/") {
				t.Errorf("while held the key holds %q (present %v), want alice's value", v, ok)
			}
			if err := l.TryWithLock(ctx, "job", "bob", mustNotRun(t)); !errors.Is(err, memlock.ErrFailedToLock) {
				t.Errorf("bob's TryWithLock while alice holds = %v, want ErrFailedToLock", err)
			}
			return errF
		})
		if err != errF {
			t.Fatalf("TryWithLock = %v, want f's error", err)
		}
		if v, ok := b.get(t, "job"); ok && v != "" {
			t.Fatalf("after release the key holds %q", v)
		}
		ran := false
		if err := l.TryWithLock(ctx, "job", "bob", func(context.Context) error { ran = true; return nil }); err != nil || !ran {
			t.Fatalf("bob after release: err %v, ran %v", err, ran)
		}
	})
}

func TestLostWhenOverwritten(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		h := startHolder(context.Background(), b.locker(t), "job", "alice")
		h.waitHeld(t)
		const intruder = "mallory/0123456789abcdef"
		at := time.Now()
		b.set(t, "job", intruder)
		h.lostWithin(t, at, 2*testRefresh)
		// The release after the loss must leave the new value alone.
		if v, _ := b.get(t, "job"); v != intruder {
			t.Fatalf("after alice's release the key holds %q, want the intruder's value", v)
		}
	})
}

func TestLostWhenDeleted(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		h := startHolder(context.Background(), b.locker(t), "job", "alice")
		h.waitHeld(t)
		at := time.Now()
		b.del(t, "job")
		h.lostWithin(t, at, 2*testRefresh)
	})
}

// luci's memlock released by writing the empty value; it means free.
func TestEmptyValueIsFree(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		b.set(t, "job", "")
		ran := false
		if err := b.locker(t).TryWithLock(context.Background(), "job", "alice", func(context.Context) error { ran = true; return nil }); err != nil || !ran {
			t.Fatalf("TryWithLock on a free value: err %v, ran %v", err, ran)
		}
	})
}

// luci skipped the release when the parent context was already cancelled,
// leaving the lock to linger for its TTL.
func TestReleaseAfterParentCancelled(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		ctx, cancel := context.WithCancelCause(context.Background())
		shutdown := errors.New("shutting down")
		l := b.locker(t)
		h := startHolder(ctx, l, "job", "alice")
		h.waitHeld(t)
		cancel(shutdown)
		if e := h.waitEnded(t); e.cause != shutdown {
			t.Fatalf("f's cause = %v, want the parent's own cause", e.cause)
		}
		h.waitReturn(t)
		if v, ok := b.get(t, "job"); ok && v != "" {
			t.Fatalf("after f returned under a cancelled parent the key holds %q", v)
		}
	})
}

func TestAlreadyCancelledFails(t *testing.T) {
	l, _ := memlock.New(memlock.NewMemory())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := l.TryWithLock(ctx, "job", "alice", mustNotRun(t))
	if !errors.Is(err, memlock.ErrFailedToLock) || !errors.Is(err, context.Canceled) {
		t.Fatalf("TryWithLock with a cancelled ctx = %v, want ErrFailedToLock and context.Canceled", err)
	}
}

func TestNestedReentry(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		l := b.locker(t, memlock.WithFencing())
		err := l.TryWithLock(context.Background(), "job", "alice", func(ctx context.Context) error {
			outer, _ := memlock.Token(ctx)
			var before int64
			if b.writes != nil {
				before = b.writes.Count()
			}
			innerRan := false
			err := l.TryWithLock(ctx, "job", "alice", func(ictx context.Context) error {
				innerRan = true
				if inner, _ := memlock.Token(ictx); inner != outer {
					t.Errorf("nested token %d, want the outer lock's %d", inner, outer)
				}
				return nil
			})
			if err != nil || !innerRan {
				t.Errorf("nested TryWithLock by the holder: err %v, ran %v", err, innerRan)
			}
			if b.writes != nil {
				if n := b.writes.Count() - before; n != 0 {
					t.Errorf("nested TryWithLock sent %d requests, want none", n)
				}
			}
			if err := l.TryWithLock(ctx, "job", "bob", mustNotRun(t)); !errors.Is(err, memlock.ErrFailedToLock) {
				t.Errorf("nested TryWithLock by another clientID = %v, want ErrFailedToLock", err)
			}
			if v, _ := b.get(t, "job"); !strings.HasPrefix(v, "alice/") {
				t.Errorf("after the nested call the key holds %q, want alice's lock kept", v)
			}
			if ctx.Err() != nil {
				t.Errorf("outer context ended: %v", context.Cause(ctx))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// A second, not nested, TryWithLock by the same clientID takes the lock over
// (a restarted worker need not wait for the TTL); the first holding learns
// at its next refresh that it lost the lock.
func TestTakeoverBySameClientID(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		l := b.locker(t)
		first := startHolder(context.Background(), l, "job", "alice")
		first.waitHeld(t)
		at := time.Now()
		err := l.TryWithLock(context.Background(), "job", "alice", func(ctx context.Context) error {
			first.lostWithin(t, at, 2*testRefresh)
			// The first holding's release came after ours began: it
			// must not have removed our lock.
			if _, ok := b.get(t, "job"); !ok {
				t.Error("the first holding's release removed the lock that took it over")
			}
			return nil
		})
		if err != nil {
			t.Fatalf("takeover by the same clientID: %v", err)
		}
	})
}

func TestFencingTokensIncrease(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		l := b.locker(t, memlock.WithFencing())
		var last int64
		for i := range 3 {
			err := l.TryWithLock(context.Background(), "job", "alice", func(ctx context.Context) error {
				tok, ok := memlock.Token(ctx)
				if !ok || tok <= last {
					t.Errorf("take %d: token %d (present %v), want > %d", i, tok, ok, last)
				}
				last = tok
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		err := b.locker(t).TryWithLock(context.Background(), "job", "alice", func(ctx context.Context) error {
			if tok, ok := memlock.Token(ctx); ok {
				t.Errorf("without WithFencing Token = %d, true", tok)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

func TestBadInputSendsNothing(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		l := b.locker(t)
		ctx := context.Background()
		var before int64
		if b.writes != nil {
			before = b.writes.Count()
		}
		if err := l.TryWithLock(ctx, "job", "", mustNotRun(t)); err != memlock.ErrEmptyClientID {
			t.Errorf("empty clientID: %v, want ErrEmptyClientID", err)
		}
		if err := l.TryWithLock(ctx, "", "alice", mustNotRun(t)); !errors.Is(err, memlock.ErrInvalidKey) {
			t.Errorf("empty key: %v, want ErrInvalidKey", err)
		}
		if b.writes != nil {
			if n := b.writes.Count() - before; n != 0 {
				t.Errorf("bad input sent %d requests", n)
			}
		}
	})
}

func TestMemcachedKeyRules(t *testing.T) {
	b := memcachedBackend(t)
	ctx := context.Background()
	max := strings.Repeat("k", 250-len("memlock:"))
	ok := func(context.Context) error { return nil }
	if err := b.locker(t).TryWithLock(ctx, max, "alice", ok); err != nil {
		t.Fatalf("key of the longest length: %v", err)
	}
	before := b.writes.Count()
	for _, key := range []string{max + "k", "two words", "tab\there", "nl\n", "del\x7f", "nul\x00"} {
		if err := b.locker(t).TryWithLock(ctx, key, "alice", mustNotRun(t)); !errors.Is(err, memlock.ErrInvalidKey) {
			t.Errorf("key %q: %v, want ErrInvalidKey", key, err)
		}
	}
	// With fencing the counter's key, longer, must fit too.
	if err := b.locker(t, memlock.WithFencing()).TryWithLock(ctx, max, "alice", mustNotRun(t)); !errors.Is(err, memlock.ErrInvalidKey) {
		t.Errorf("fencing with a key too long for the counter: %v, want ErrInvalidKey", err)
	}
	if n := b.writes.Count() - before; n != 0 {
		t.Errorf("invalid keys sent %d requests", n)
	}
}

func TestUseContext(t *testing.T) {
	ok := func(context.Context) error { return nil }
	if err := memlock.TryWithLock(context.Background(), "job", "alice", mustNotRun(t)); err != memlock.ErrNoCache {
		t.Errorf("no cache in context: %v, want ErrNoCache", err)
	}
	withCache := memlock.Use(context.Background(), memlock.NewMemory())
	if err := memlock.TryWithLock(memlock.Use(withCache, nil), "job", "alice", mustNotRun(t)); err != memlock.ErrNoCache {
		t.Errorf("Use with nil over a cache: %v, want ErrNoCache", err)
	}
	ctx := memlock.Use(context.Background(), memlock.NewMemory())
	if err := memlock.TryWithLock(ctx, "job", "", mustNotRun(t)); err != memlock.ErrEmptyClientID {
		t.Errorf("empty clientID: %v", err)
	}
	err := memlock.TryWithLock(ctx, "job", "alice", func(fctx context.Context) error {
		if err := memlock.TryWithLock(ctx, "job", "bob", mustNotRun(t)); !errors.Is(err, memlock.ErrFailedToLock) {
			t.Errorf("second holder: %v, want ErrFailedToLock", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := memlock.TryWithLock(ctx, "job", "bob", ok); err != nil {
		t.Fatalf("after release: %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := memlock.New(nil); err != memlock.ErrNilCache {
		t.Errorf("New(nil) = %v", err)
	}
	if _, err := memlock.New(memlock.NewMemcache(nil)); err != memlock.ErrNilCache {
		t.Errorf("New(NewMemcache(nil)) = %v", err)
	}
	if _, err := memlock.New(memlock.NewRedis(nil)); err != memlock.ErrNilCache {
		t.Errorf("New(NewRedis(nil)) = %v", err)
	}
	mc := memlock.NewMemcache(memcacheClientNowhere())
	for _, tc := range []struct {
		name  string
		cache memlock.Cache
		opts  []memlock.Option
	}{
		{"zero TTL", memlock.NewMemory(), []memlock.Option{memlock.WithTTL(0)}},
		{"negative refresh", memlock.NewMemory(), []memlock.Option{memlock.WithRefreshInterval(-time.Second)}},
		{"zero timeout", memlock.NewMemory(), []memlock.Option{memlock.WithTimeout(0)}},
		{"timeout over refresh", memlock.NewMemory(), []memlock.Option{memlock.WithTimeout(2 * time.Second)}},
		{"two refreshes per TTL", memlock.NewMemory(), []memlock.Option{memlock.WithTTL(2 * time.Second)}},
		// 3 s on memcached is sure for 2 s only.
		{"memcached whole seconds", mc, []memlock.Option{memlock.WithTTL(3 * time.Second)}},
		{"memcached over 30 days", mc, []memlock.Option{memlock.WithTTL(31 * 24 * time.Hour)}},
	} {
		if _, err := memlock.New(tc.cache, tc.opts...); !errors.Is(err, memlock.ErrInvalidOption) {
			t.Errorf("%s: New = %v, want ErrInvalidOption", tc.name, err)
		}
	}
	if _, err := memlock.New(memlock.NewMemory(), memlock.WithTTL(3*time.Second)); err != nil {
		t.Errorf("three refreshes per TTL: %v", err)
	}
	if _, err := memlock.New(mc, memlock.WithTTL(4*time.Second)); err != nil {
		t.Errorf("memcached, TTL 4 s: %v", err)
	}
	if _, err := memlock.New(mc); err != nil {
		t.Errorf("memcached with the defaults: %v", err)
	}
}
