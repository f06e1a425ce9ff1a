//go:build linux

package faults

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/concurrency"
)

// Workloads on baton's Semaphore and Queue.
const (
	wlSemaphore = "semaphore"
	wlQueue     = "queue"
)

// semLimit is the semaphore workload's limit; it runs semWorkers workers,
// so that some always wait.
const (
	semLimit   = 2
	semWorkers = 3
)

// semaphoreLoop acquires one permit, finds its grant key, and enters the
// resource twice through a Txn guarded by the grant key's create revision
// that also reads every grant key at that revision, then releases.
func (w *worker) semaphoreLoop(ctx context.Context) {
	var s *concurrency.Session
	defer func() {
		if s != nil {
			s.Close()
		}
	}()
	dir := w.cfg.lockPfx() + "/"
	for ctx.Err() == nil {
		if s != nil {
			select {
			case <-s.Done():
				s.Close()
				s = nil
			default:
			}
		}
		if s == nil {
			id, err := w.grant(ctx)
			if err == nil {
				s, err = concurrency.NewSession(w.cli, concurrency.WithTTL(w.cfg.TTL), concurrency.WithLease(id))
			}
			if err != nil {
				retryPause(ctx)
				continue
			}
		}
		sm := concurrency.NewSemaphore(s, w.cfg.lockPfx(), semLimit)
		actx, cancel := context.WithTimeout(ctx, 2*opTimeout)
		err := sm.Acquire(actx, 1)
		cancel()
		if err != nil {
			retryPause(ctx)
			continue
		}
		tok := sm.Rev()
		key := w.grantKey(ctx, dir, tok)
		if key != "" {
			w.rec.event(Record{F: "hold", Tok: tok})
			for range 2 {
				w.enter(ctx, dir, key, tok)
				w.think(ctx)
			}
		}
		if !w.release(ctx, s.Done(), func(ctx context.Context) error { return sm.Release(ctx, 1) }) {
			s.Close()
			s = nil
		}
	}
}

// grantKey finds the key of the grant with create revision tok ("" when
// it cannot be read or is gone).
func (w *worker) grantKey(ctx context.Context, dir string, tok int64) string {
	gctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	resp, err := w.cli.Get(gctx, dir, clientv3.WithPrefix())
	if err != nil {
		return ""
	}
	for _, kv := range resp.Kvs {
		if kv.CreateRevision == tok {
			return string(kv.Key)
		}
	}
	return ""
}

// enter is one access to the semaphore-protected resource: accepted only
// while the grant lives, and it returns, at the same revision, the create
// revisions of every grant key.
func (w *worker) enter(ctx context.Context, dir, key string, tok int64) {
	in := Record{F: "enter", Tok: tok}
	id := w.rec.invoke(in)
	ectx, cancel := context.WithTimeout(ctx, opTimeout)
	resp, err := w.cli.Txn(ectx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", tok)).
		Then(clientv3.OpPut(w.cfg.Prefix+"/resource", fmt.Sprint(tok)), clientv3.OpGet(dir, clientv3.WithPrefix())).
		Commit()
	cancel()
	out := in
	switch {
	case err != nil:
		out.Err = err.Error()
		w.rec.complete(id, recUnknown, out)
	case !resp.Succeeded:
		out.Err = "grant gone"
		w.rec.complete(id, recFail, out)
	default:
		for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
			out.Bal = append(out.Bal, kv.CreateRevision)
		}
		w.rec.complete(id, recOK, out)
	}
}

// checkSemaphore checks every accepted access: at the revision the resource
// accepted it, its grant was among the first limit grants in line, so at
// most limit grants were accepted at once.
func checkSemaphore(all []*Op, limit int) []Anomaly {
	var an []Anomaly
	for _, op := range all {
		if op.F != "enter" || op.Status != recOK {
			continue
		}
		revs := append([]int64(nil), op.Out.Bal...)
		sort.Slice(revs, func(i, j int) bool { return revs[i] < revs[j] })
		pos := sort.Search(len(revs), func(i int) bool { return revs[i] >= op.In.Tok })
		if pos >= len(revs) || revs[pos] != op.In.Tok {
			an = append(an, Anomaly{"grant-missing", op.Start, fmt.Sprintf("access with token %d accepted but its grant is not among %v", op.In.Tok, revs)})
		} else if pos >= limit {
			an = append(an, Anomaly{"over-limit", op.Start, fmt.Sprintf("access with token %d accepted while %d older grants were live (%v), limit %d", op.In.Tok, pos, revs, limit)})
		}
	}
	return an
}

// queueLoop enqueues unique items and dequeues, half and half.
func (w *worker) queueLoop(ctx context.Context) {
	q := concurrency.NewQueue(w.cli, w.cfg.Prefix+"/q")
	for ctx.Err() == nil {
		if w.rnd.IntN(2) == 0 {
			w.seq++
			in := Record{F: "enqueue", Val: fmt.Sprintf("w%d-%d", w.cfg.Worker, w.seq)}
			id := w.rec.invoke(in)
			qctx, cancel := context.WithTimeout(ctx, opTimeout)
			err := q.Enqueue(qctx, in.Val)
			cancel()
			out := in
			if err != nil {
				// Enqueue's error does not say whether the put landed.
				out.Err = err.Error()
				w.rec.complete(id, recUnknown, out)
				retryPause(ctx)
			} else {
				w.rec.complete(id, recOK, out)
			}
			continue
		}
		id := w.rec.invoke(Record{F: "dequeue"})
		qctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		v, err := q.Dequeue(qctx)
		cancel()
		switch {
		case err == nil:
			w.rec.complete(id, recOK, Record{F: "dequeue", Val: v})
		case errors.Is(err, concurrency.ErrClaimUnknown):
			w.rec.complete(id, recUnknown, Record{F: "dequeue", Err: err.Error()})
		default:
			// Dequeue never takes an item it does not return.
			w.rec.complete(id, recFail, Record{F: "dequeue", Err: err.Error()})
			if qctx.Err() == nil {
				retryPause(ctx)
			}
		}
	}
}

// checkQueue checks deliveries (dequeues, then the parent's drain after
// the run): no item delivered twice, none that was never enqueued, and
// every acknowledged item delivered, except as many as there were dequeues
// with an unknown outcome (each may have taken one).
func checkQueue(all []*Op, drained []string) (an []Anomaly, note string) {
	enq := map[string]*Op{}
	unknownDeq := 0
	for _, op := range all {
		switch {
		case op.F == "enqueue":
			enq[op.In.Val] = op
		case op.F == "dequeue" && op.Status == recUnknown:
			unknownDeq++
		}
	}
	delivered := map[string]int{}
	deliver := func(v string, at int64) {
		delivered[v]++
		switch {
		case delivered[v] == 2:
			an = append(an, Anomaly{"duplicate", at, fmt.Sprintf("item %q delivered twice", v)})
		case enq[v] == nil:
			an = append(an, Anomaly{"phantom", at, fmt.Sprintf("item %q delivered but never enqueued", v)})
		}
	}
	for _, op := range all {
		if op.F == "dequeue" && op.Status == recOK {
			deliver(op.Out.Val, op.Start)
		}
	}
	for _, v := range drained {
		deliver(v, 0)
	}
	var missing []*Op
	for _, op := range all {
		if op.F == "enqueue" && op.Status == recOK && delivered[op.In.Val] == 0 {
			missing = append(missing, op)
		}
	}
	if len(missing) > unknownDeq {
		for _, op := range missing {
			an = append(an, Anomaly{"lost", op.Start, fmt.Sprintf("acknowledged item %q never delivered (%d missing, %d dequeues of unknown outcome)", op.In.Val, len(missing), unknownDeq)})
		}
	}
	note = fmt.Sprintf("%d drained after the run; %d acknowledged items undelivered, %d dequeues of unknown outcome", len(drained), len(missing), unknownDeq)
	return an, note
}

// drainQueue takes every item left in the workload's queue.
func (r *run) drainQueue(ctx context.Context) ([]string, error) {
	q := concurrency.NewQueue(r.cli, r.prefix(wlQueue)+"/q")
	var out []string
	for {
		dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		v, err := q.TryDequeue(dctx)
		cancel()
		if errors.Is(err, concurrency.ErrQueueEmpty) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("faults: drain queue: %w", err)
		}
		out = append(out, v)
	}
}
