package main

// This file holds what "baton web" knows: the keys under the prefix, kept
// up to date from a watch, read as status reads them, plus a timeline of
// holders per primitive.

import (
	"fmt"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// webState is the state of every primitive under a prefix, as web last
// saw it. It is safe for use by several goroutines.
type webState struct {
	prefix, under string
	keep          int

	mu      sync.Mutex
	kvs     map[string]*mvccpb.KeyValue
	rev     int64
	tracks  map[string]*webTrack // by entry ID, "kind name"
	order   []string             // IDs in the order they were first seen
	entries []statusEntry
	changed chan struct{} // closed, and replaced, at every change
	closed  chan struct{}
	started time.Time
}

// webTrack is the history of one primitive since web started.
type webTrack struct {
	kind, name string
	holder     int64     // the holder's token (its key's create revision); 0: free
	since      time.Time // when web saw the holder take over; zero: before web started
	changes    int       // holders that took over since web started
	timeline   []webHold
}

// webHold is one holder on a timeline.
type webHold struct {
	Holder string `json:"holder"`
	Token  int64  `json:"token"`
	// From and To are Unix milliseconds; From is null for a holder that
	// held before web started, To while it holds.
	From *int64 `json:"from"`
	To   *int64 `json:"to"`
}

// webEntry is one primitive on the page: what status shows, plus what the
// page draws.
type webEntry struct {
	statusEntry
	ID string `json:"id"`
	// Free is set for a primitive seen since web started that nobody holds
	// or waits for now.
	Free    bool   `json:"free"`
	Summary string `json:"summary"`
	// HeldSince is Unix milliseconds, null when unknown.
	HeldSince *int64     `json:"held_since"`
	Changes   int        `json:"changes"`
	Fields    []webField `json:"fields"`
	Timeline  []webHold  `json:"timeline"`
}

// webField is one line of a primitive's card: a text or a list.
type webField struct {
	Label string   `json:"label"`
	Text  string   `json:"text,omitempty"`
	Items []string `json:"items"`
}

type webSnapshot struct {
	Prefix   string     `json:"prefix"`
	Under    string     `json:"under"`
	Revision int64      `json:"revision"`
	Now      int64      `json:"now"`
	Started  int64      `json:"started"`
	Entries  []webEntry `json:"entries"`
}

func newWebState(prefix, under string, keep int) *webState {
	return &webState{prefix: prefix, under: under, keep: keep, kvs: map[string]*mvccpb.KeyValue{},
		tracks: map[string]*webTrack{}, changed: make(chan struct{}), closed: make(chan struct{}), started: time.Now()}
}

// reset starts from kvs read at rev: the holders found are those of before
// web started.
func (w *webState) reset(kvs []*mvccpb.KeyValue, rev int64, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.load(kvs)
	w.rev = rev
	w.update(now, true)
}

// resync replaces the keys after a watch broke: changes between are seen
// as one.
func (w *webState) resync(kvs []*mvccpb.KeyValue, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.load(kvs)
	w.update(now, false)
}

func (w *webState) load(kvs []*mvccpb.KeyValue) {
	w.kvs = make(map[string]*mvccpb.KeyValue, len(kvs))
	for _, kv := range kvs {
		w.kvs[string(kv.Key)] = kv
		w.rev = max(w.rev, kv.ModRevision)
	}
}

// apply applies the events of one watch response.
func (w *webState) apply(evs []*clientv3.Event, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ev := range evs {
		if ev.Type == clientv3.EventTypeDelete {
			delete(w.kvs, string(ev.Kv.Key))
		} else {
			w.kvs[string(ev.Kv.Key)] = ev.Kv
		}
		w.rev = max(w.rev, ev.Kv.ModRevision)
	}
	w.update(now, false)
}

// update reads the primitives out of the keys, moves the timelines on and
// tells the listeners. initial marks the holders as older than web.
func (w *webState) update(now time.Time, initial bool) {
	w.entries = statusEntries(w.prefix, sortedKVs(w.kvs), now)
	seen := map[string]bool{}
	for _, e := range w.entries {
		id := e.Kind + " " + e.Name
		seen[id] = true
		t := w.tracks[id]
		if t == nil {
			t = &webTrack{kind: e.Kind, name: e.Name}
			w.tracks[id] = t
			w.order = append(w.order, id)
		}
		w.move(t, holderToken(e), memberDesc(e.Holder), now, initial)
	}
	for id, t := range w.tracks {
		if !seen[id] {
			w.move(t, 0, "", now, initial)
		}
	}
	close(w.changed)
	w.changed = make(chan struct{})
}

// move records that t's holder is now token (0: nobody).
func (w *webState) move(t *webTrack, token int64, who string, now time.Time, initial bool) {
	if token == t.holder {
		return
	}
	ms := now.UnixMilli()
	if n := len(t.timeline); n > 0 && t.timeline[n-1].To == nil {
		t.timeline[n-1].To = &ms
	}
	t.holder, t.since = token, time.Time{}
	if token == 0 {
		return
	}
	h := webHold{Holder: who, Token: token}
	if !initial {
		t.since, h.From = now, &ms
		t.changes++
	}
	t.timeline = append(t.timeline, h)
	if len(t.timeline) > w.keep {
		t.timeline = t.timeline[len(t.timeline)-w.keep:]
	}
}

// holderToken is what tells one holder of e from the next: the token of
// its oldest holder, for a barrier its key's, for a double barrier the
// round's (its ready key's). A queue has no holder.
func holderToken(e statusEntry) int64 {
	switch e.Kind {
	case kindQueue:
		return 0
	case kindBarrier, kindDoubleBarrier:
		return e.Token
	}
	return e.Holder.Token
}

// changes returns a channel closed at the next change, and one closed when
// web stops.
func (w *webState) changes() (changed, closed <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed, w.closed
}

// close ends every event stream.
func (w *webState) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	select {
	case <-w.closed:
	default:
		close(w.closed)
	}
}

func (w *webState) snapshotJSON(now time.Time) []byte { return mustJSON(w.snapshot(now)) }

// snapshot is the state for the page and /metrics: the primitives in the
// order they were first seen.
func (w *webState) snapshot(now time.Time) webSnapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := webSnapshot{Prefix: w.prefix, Under: w.under, Revision: w.rev, Now: now.UnixMilli(), Started: w.started.UnixMilli(), Entries: []webEntry{}}
	live := map[string]statusEntry{}
	for _, e := range w.entries {
		live[e.Kind+" "+e.Name] = e
	}
	for _, id := range w.order {
		t := w.tracks[id]
		e, ok := live[id]
		we := webEntry{ID: id, Changes: t.changes, Timeline: append([]webHold{}, t.timeline...)}
		if !ok {
			e = statusEntry{Kind: t.kind, Name: t.name, Waiters: []statusMember{}}
			we.Free, we.Summary = true, "free"
		} else {
			we.Summary, _ = holderText(e)
			if e.Kind == kindLock || e.Kind == kindElection {
				we.Summary = memberDesc(e.Holder)
			}
			we.Fields = webFields(e)
			if since, ok := heldSinceMember(e.Holder); ok {
				ms := since.UnixMilli()
				we.HeldSince = &ms
			} else if !t.since.IsZero() {
				ms := t.since.UnixMilli()
				we.HeldSince = &ms
			}
		}
		we.statusEntry = e
		s.Entries = append(s.Entries, we)
	}
	return s
}

func (e webEntry) holderCount() int {
	switch e.Kind {
	case kindSemaphore, kindRWMutex:
		return len(e.Holders)
	case kindDoubleBarrier:
		return len(e.Participants)
	case kindQueue:
		return len(e.Claims)
	}
	return 1
}

func (e webEntry) waiterCount() int {
	if e.Kind == kindQueue {
		return len(e.Consumers)
	}
	return len(e.Waiters)
}

// memberDesc describes m for the page: "web1 pid 4242 (nightly backup)",
// an election's proposal, or the lease of another etcd client. The page
// shows it as text, so nothing needs escaping.
func memberDesc(m statusMember) string {
	switch {
	case m.Identity != nil:
		return m.Identity.who()
	case m.Value != "" && m.Permits == 0: // a semaphore's value is its permits, shown apart
		return strconv.Quote(truncate(m.Value, 64))
	case m.Lease != "":
		return "lease " + m.Lease
	}
	return "-"
}

func memberDescs(ms []statusMember, extra func(statusMember) string) []string {
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		s := memberDesc(m)
		if extra != nil {
			s += extra(m)
		}
		out = append(out, s+" · token "+strconv.FormatInt(m.Token, 10))
	}
	return out
}

// webFields are the lines of e's card.
func webFields(e statusEntry) []webField {
	token := webField{Label: "token", Text: strconv.FormatInt(e.Token, 10)}
	permits := func(m statusMember) string { return fmt.Sprintf(" (%d permits)", m.Permits) }
	mode := func(m statusMember) string { return " (" + m.Mode + ")" }
	switch e.Kind {
	case kindLock:
		return []webField{{Label: "holder", Text: memberDesc(e.Holder)}, token, {Label: "waiters", Items: memberDescs(e.Waiters, nil)}}
	case kindElection:
		f := []webField{{Label: "leader", Text: memberDesc(e.Holder)}}
		if e.Holder.Identity == nil && e.Holder.Value != "" {
			f = append(f, webField{Label: "proposal", Text: e.Holder.Value})
		}
		return append(f, token, webField{Label: "candidates", Items: memberDescs(e.Waiters, nil)})
	case kindSemaphore:
		return []webField{{Label: "permits", Text: fmt.Sprintf("%d/%d used", e.Used, e.Limit)}, token,
			{Label: "holders", Items: memberDescs(e.Holders, permits)}, {Label: "waiters", Items: memberDescs(e.Waiters, permits)}}
	case kindRWMutex:
		label := "readers"
		if e.Mode == "write" {
			label = "writer"
		}
		return []webField{{Label: label, Items: memberDescs(e.Holders, nil)}, token, {Label: "waiters", Items: memberDescs(e.Waiters, mode)}}
	case kindDoubleBarrier:
		state := "filling"
		if e.Full {
			state = "full"
		}
		return []webField{{Label: "state", Text: state}, {Label: "participants", Items: memberDescs(e.Participants, nil)}}
	case kindBarrier:
		return []webField{{Label: "state", Text: "held"}, {Label: "held at revision", Text: strconv.FormatInt(e.Token, 10)}}
	case kindQueue:
		return []webField{{Label: "depth", Text: strconv.Itoa(e.Depth) + " items"},
			{Label: "waiting consumers", Items: memberDescs(e.Consumers, nil)}, {Label: "claims", Items: memberDescs(e.Claims, nil)}}
	}
	return nil
}
