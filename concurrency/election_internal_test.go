package concurrency

import (
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func put(key string, create, mod int64) *clientv3.Event {
	return &clientv3.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(key), CreateRevision: create, ModRevision: mod}}
}

func del(key string, mod int64) *clientv3.Event {
	return &clientv3.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: mod}}
}

// etcd #18163: a batch of events (a watcher catching up delivers several
// revisions at once) in which the first PUT is not the leader. etcd's
// Observe reported "a" here, a candidate that was already gone.
func TestLeaderOfBatch(t *testing.T) {
	cases := []struct {
		name  string
		start map[string]*mvccpb.KeyValue
		batch []*clientv3.Event
		want  string
	}{
		{"first PUT left in the same batch", nil,
			[]*clientv3.Event{put("e/a", 10, 10), put("e/b", 11, 11), del("e/a", 12)}, "e/b"},
		{"modification before a creation", map[string]*mvccpb.KeyValue{"e/z": {Key: []byte("e/z"), CreateRevision: 3, ModRevision: 3}},
			[]*clientv3.Event{put("e/a", 10, 10), put("e/z", 3, 11)}, "e/z"},
		{"leader leaves, two arrive in one txn", map[string]*mvccpb.KeyValue{"e/x": {Key: []byte("e/x"), CreateRevision: 3, ModRevision: 3}},
			[]*clientv3.Event{put("e/m", 9, 9), del("e/x", 9), put("e/b", 9, 9)}, "e/b"},
		{"everyone leaves", nil,
			[]*clientv3.Event{put("e/a", 10, 10), del("e/a", 11)}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kvs := map[string]*mvccpb.KeyValue{}
			for k, v := range tc.start {
				kvs[k] = v
			}
			applyEvents(kvs, tc.batch)
			got := ""
			if l := leaderOf(kvs); l != nil {
				got = string(l.Key)
			}
			if got != tc.want {
				t.Fatalf("leader %q, want %q", got, tc.want)
			}
		})
	}
}
