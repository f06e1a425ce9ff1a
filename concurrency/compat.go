package concurrency

// Old names of the waiting engine's parts (key.go), for the primitives not
// moved onto it yet.

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func watchKey(ctx context.Context, c *clientv3.Client, key string) (*keyWatch, error) {
	return newWatch(ctx, c, key)
}

func recipeWatch(ctx context.Context, c *clientv3.Client, key string, opts ...clientv3.OpOption) (*keyWatch, error) {
	return newWatch(ctx, c, key, opts...)
}

func recipeWatchErr(ctx context.Context, c *clientv3.Client, wr clientv3.WatchResponse, ok bool) error {
	return watchErr(ctx, c, wr, ok)
}

func recipeGetAt(ctx context.Context, c *clientv3.Client, at int64, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, int64, error) {
	return getAt(ctx, c, at, key, opts...)
}

func watchPair(ctx context.Context, c *clientv3.Client, own *keyWatch, ownKey string, other *keyWatch, otherKey string) (*keyWatch, *keyWatch, error) {
	p := pair{own: own, other: other}
	_, err := p.watch(ctx, c, ownKey, otherKey)
	return p.own, p.other, err
}

func waitEvent(ctx context.Context, s *Session, own, pred *keyWatch, ownRev, predRev int64) (int64, error) {
	p := pair{own: own, other: pred}
	next, _, err := p.wait(ctx, s, ownRev, gone(predRev))
	return next, err
}
