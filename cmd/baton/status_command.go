package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/batonhq/baton/concurrency"
)

// statusOptions are the flags and arguments of "baton status".
type statusOptions struct {
	*app
	under string // PREFIX: only names that start with it
	json  bool
}

func newStatusCommand(a *app) *cobra.Command {
	o := &statusOptions{app: a}
	cmd := &cobra.Command{
		Use:   "status [PREFIX]",
		Short: "Show the locks, elections and semaphores under PREFIX: holder, token, held for, waiters",
		Long: `status lists the locks, elections and semaphores whose name starts with
PREFIX (all of them by default): who holds each (host, pid and --note of a
baton holder, the value of an election, or the lease of another etcd
client; for a semaphore, the permits in use), its fencing token, for how
long it has been held, and how many wait behind.

Entries are recognised by their layout, NAME/<lease in hex> on a lease,
which etcd's Mutex, Election, etcdctl and baton all use; "held for" is known
for baton's holders only, and is computed with this machine's clock.`,
		Example: `  baton status
  baton status jobs/
  baton status --json | jq '.[] | select(.waiters | length > 0)'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				o.under = args[0]
			}
			return o.run(cmd.Context())
		},
	}
	cmd.Flags().BoolVar(&o.json, "json", false, "print JSON")
	return cmd
}

// statusEntry is one lock or election.
type statusEntry struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
	// Token is the holder's fencing token (its key's create revision).
	Token int64 `json:"token"`
	// HeldForSeconds is null when the holder did not say since when.
	HeldForSeconds *float64       `json:"held_for_seconds"`
	Holder         statusMember   `json:"holder"`
	Waiters        []statusMember `json:"waiters"`
	// For a semaphore: its number of permits, how many are held, and
	// every grant (Holder is the oldest).
	Limit   int64          `json:"limit,omitempty"`
	Used    int64          `json:"used,omitempty"`
	Holders []statusMember `json:"holders,omitempty"`
}

// statusMember is one key of a queue: the holder or a waiter.
type statusMember struct {
	Key      string    `json:"key"`
	Token    int64     `json:"token"`
	Lease    string    `json:"lease"`
	Identity *identity `json:"identity,omitempty"`
	// Value is the key's value when it is not a baton identity: an
	// election's proposal, say.
	Value string `json:"value,omitempty"`
	// Permits is what a semaphore grant (or request) is for.
	Permits int64 `json:"permits,omitempty"`
}

func (o *statusOptions) run(ctx context.Context) error {
	c, err := o.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	rctx, cancel := context.WithTimeout(ctx, o.dialTimeout)
	defer cancel()
	resp, err := c.Get(rctx, o.under, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("status: read %q: %w", o.prefix+o.under, err)
	}
	entries := o.entries(resp.Kvs, time.Now())
	if o.json {
		enc := json.NewEncoder(o.io.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(entries)
	}
	if len(entries) == 0 {
		fmt.Fprintf(o.io.Out, "no locks, elections or semaphores under %q\n", o.prefix+o.under)
		return nil
	}
	return writeStatusTable(o.io.Out, entries)
}

// queueDir returns the name of the queue kv belongs to, if its key has the
// layout NAME/<hex lease> (or NAME/<hex lease>-<n>, a second handle of one
// baton session) and it is attached to that lease.
func queueDir(kv *mvccpb.KeyValue) (string, bool) {
	if kv.Lease == 0 {
		return "", false
	}
	key := string(kv.Key)
	i := strings.LastIndexByte(key, '/')
	if i <= 0 {
		return "", false
	}
	leaf, lease := key[i+1:], strconv.FormatInt(kv.Lease, 16)
	if leaf != lease {
		n, ok := strings.CutPrefix(leaf, lease+"-")
		if _, err := strconv.Atoi(n); !ok || err != nil {
			return "", false
		}
	}
	return key[:i], true
}

// entries groups kvs into queues, each ordered by create revision: the
// first key holds, the rest wait.
func (o *statusOptions) entries(kvs []*mvccpb.KeyValue, now time.Time) []statusEntry {
	queues := map[string][]*mvccpb.KeyValue{}
	for _, kv := range kvs {
		if dir, ok := queueDir(kv); ok {
			queues[dir] = append(queues[dir], kv)
		}
	}
	entries := make([]statusEntry, 0, len(queues))
	for name, q := range queues {
		sort.Slice(q, func(i, j int) bool { return q[i].CreateRevision < q[j].CreateRevision })
		e := statusEntry{Name: name, Kind: queueKind(q), Token: q[0].CreateRevision, Holder: o.member(q[0]), Waiters: []statusMember{}}
		granted := 1 // a lock or an election has one holder: the oldest key
		if e.Kind == kindSemaphore {
			granted = o.semaphore(&e, q)
		}
		for _, kv := range q[granted:] {
			e.Waiters = append(e.Waiters, o.member(kv))
		}
		if since, ok := heldSince(q[0]); ok {
			secs := now.Sub(since).Seconds()
			e.HeldForSeconds = &secs
		}
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	return entries
}

// queueKind tells a lock from an election and a semaphore: baton says so
// in its values; etcd's Mutex writes empty values, elections hold a
// proposal, and baton's Semaphore writes "permits/limit" in every key.
func queueKind(q []*mvccpb.KeyValue) string {
	for _, kv := range q {
		if id, ok := parseIdentity(kv.Value); ok && id.Kind != "" {
			return id.Kind
		}
	}
	sem := true
	for _, kv := range q {
		if n, _ := semPermits(kv.Value); n == 0 {
			sem = false
			break
		}
	}
	switch {
	case sem:
		return kindSemaphore
	case len(q[0].Value) == 0:
		return kindLock
	}
	return kindElection
}

// semPermits parses a semaphore key's value; 0, 0 when it is not one.
func semPermits(v []byte) (n, limit int64) {
	n, limit, _ = concurrency.ParseSemaphoreValue(v)
	return n, limit
}

// semaphore fills in e from the semaphore queue q and returns how many of
// its keys are granted: the longest run of oldest keys whose permits fit
// within the limit (the queue is first come, first served).
func (o *statusOptions) semaphore(e *statusEntry, q []*mvccpb.KeyValue) int {
	_, e.Limit = semPermits(q[0].Value)
	granted := 0
	for _, kv := range q {
		n, _ := semPermits(kv.Value)
		if e.Used+n > e.Limit {
			break
		}
		e.Used += n
		e.Holders = append(e.Holders, o.member(kv))
		granted++
	}
	return granted
}

func (o *statusOptions) member(kv *mvccpb.KeyValue) statusMember {
	m := statusMember{Key: o.prefix + string(kv.Key), Token: kv.CreateRevision, Lease: strconv.FormatInt(kv.Lease, 16)}
	if id, ok := parseIdentity(kv.Value); ok {
		m.Identity = &id
	} else {
		m.Value = string(kv.Value)
	}
	m.Permits, _ = semPermits(kv.Value)
	return m
}

func writeStatusTable(w io.Writer, entries []statusEntry) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tNAME\tHOLDER\tNOTE\tTOKEN\tHELD FOR\tWAITERS")
	for _, e := range entries {
		holder, note := "lease "+e.Holder.Lease, "-"
		if id := e.Holder.Identity; id != nil {
			holder = id.Host + " pid " + strconv.Itoa(id.PID)
			if id.Note != "" {
				note = id.Note
			}
		} else if e.Holder.Value != "" {
			holder = strconv.Quote(truncate(e.Holder.Value, 32))
		}
		if e.Kind == kindSemaphore {
			holder = fmt.Sprintf("%d/%d permits, %d holders", e.Used, e.Limit, len(e.Holders))
		}
		heldFor := "-"
		if e.HeldForSeconds != nil {
			heldFor = human(time.Duration(*e.HeldForSeconds * float64(time.Second)))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d\n", e.Kind, e.Name, holder, note, e.Token, heldFor, len(e.Waiters))
	}
	return tw.Flush()
}
