package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/batonhq/baton/concurrency"
)

// progress tells a waiting user who is in the way: the holder of the lock
// (or the leader), for how long it has held, and how long we have waited.
// On a terminal the line is redrawn in place every second; otherwise one
// line is written each time the holder changes, which reads well in logs.
type progress struct {
	io    *IO
	what  string                      // "lock backup"
	own   func(*mvccpb.KeyValue) bool // our own key: when it leads, we are done waiting
	start time.Time

	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex // guards the fields below, written by the loop
	drawn bool       // a live line is on the terminal
	shown bool       // any line was written
}

// startProgress follows the holder of the queue under name (the key with
// the lowest create revision, whatever kind of entry it is) until stop.
func startProgress(a *app, s *concurrency.Session, name, ownKey, what string) *progress {
	own := func(kv *mvccpb.KeyValue) bool { return string(kv.Key) == ownKey }
	return followProgress(a, what, own, concurrency.NewElection(s, name).Events)
}

// followProgress shows the holders that events reports until stop; events
// is called once, and its channel must close when its ctx ends. own tells
// our own key, which is never shown.
func followProgress(a *app, what string, own func(*mvccpb.KeyValue) bool, events func(context.Context) <-chan concurrency.LeaderEvent) *progress {
	ctx, cancel := context.WithCancel(context.Background())
	p := &progress{io: a.io, what: what, own: own, start: time.Now(), cancel: cancel, done: make(chan struct{})}
	go p.loop(ctx, events(ctx))
	return p
}

func (p *progress) loop(ctx context.Context, events <-chan concurrency.LeaderEvent) {
	defer close(p.done)
	var tick <-chan time.Time
	if p.io.ErrIsTerminal {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		tick = t.C
	}
	var holder *mvccpb.KeyValue
	for {
		select {
		case <-ctx.Done():
			for range events { // its source ends with ctx
			}
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			prev := holder
			holder = ev.Leader
			if holder != nil && p.own(holder) {
				holder = nil // our turn: Lock is about to return
			}
			if holder == nil {
				continue
			}
			if p.io.ErrIsTerminal || prev == nil || string(prev.Key) != string(holder.Key) {
				p.show(holder)
			}
		case <-tick:
			if holder != nil {
				p.show(holder)
			}
		}
	}
}

// line is the progress line for holder, as of now.
func (p *progress) line(holder *mvccpb.KeyValue, now time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "baton: waiting for %s: held by %s", p.what, holderOf(holder))
	if since, ok := heldSince(holder); ok {
		fmt.Fprintf(&b, " for %s", human(now.Sub(since)))
	} else if _, ok := parseIdentity(holder.Value); ok {
		b.WriteString(" since just now") // it has not yet recorded the time
	}
	fmt.Fprintf(&b, " (token %d); waited %s", holder.CreateRevision, human(now.Sub(p.start)))
	return b.String()
}

func (p *progress) show(holder *mvccpb.KeyValue) {
	l := p.line(holder, time.Now())
	p.mu.Lock()
	defer p.mu.Unlock()
	p.shown = true
	if p.io.ErrIsTerminal {
		// \r and "erase line" redraw in place.
		fmt.Fprint(p.io.Err, "\r\x1b[K"+l)
		p.drawn = true
		return
	}
	fmt.Fprintln(p.io.Err, l)
}

// stop ends the progress line and reports whether anything was shown.
func (p *progress) stop() (shown bool) {
	p.cancel()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.io.Err, "\r\x1b[K")
		p.drawn = false
	}
	return p.shown
}

// waited is how long we have waited so far.
func (p *progress) waited() time.Duration { return time.Since(p.start) }
