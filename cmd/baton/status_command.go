package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/text/width"

	"github.com/batonhq/baton/internal/layout"
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
		Short: "Show the locks, elections, semaphores, read-write locks, barriers and queues under PREFIX",
		Long: `status lists the coordination state whose name starts with PREFIX (all of
it by default), read from the keys that baton's primitives, etcd's Mutex
and Election, and etcdctl write:

  lock, election  who holds it (host, pid and --note of a baton holder, the
                  value of an election, or the lease of another etcd
                  client), its fencing token, for how long, and its waiters
  semaphore       the permits in use of the limit, the holders, the waiters
  rwmutex         the readers or the writer that hold it, and the waiters
  doublebarrier   the participants in it, and whether it filled
  barrier         held (a Barrier's key exists only while it is held)
  queue           its depth (items), the line of waiting consumers, and
                  the claim records of consumers (claims in progress, or
                  made within the consumer's 10 s lease)

"held for" is known for baton's holders only, and is computed with this
machine's clock. A name or note with a tab, a new line or another
unprintable character is shown quoted, Go style.

When a lock or election named NAME and another live name under NAME/
nest ("a" and "a/b"), status warns on stderr, as lock and elect do: etcd
keeps the queue of NAME under NAME/, so NAME also waits for the holders of
the other.

Some layouts coincide: a lock named jobs/read looks like the readers of
an RWMutex named jobs unless baton wrote it, and any key with no lease
and an empty value looks like a held barrier.`,
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

// Kinds that only status knows of (baton's own commands write kindLock and
// kindElection into their identity).
const (
	kindRWMutex       = "rwmutex"
	kindDoubleBarrier = "doublebarrier"
	kindBarrier       = "barrier"
	kindQueue         = "queue"
)

// statusEntry is one primitive.
type statusEntry struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
	// Token is the holder's fencing token (its key's create revision); for
	// a barrier, the revision it was held at; 0 when nothing holds.
	Token int64 `json:"token"`
	// HeldForSeconds is null when the holder did not say since when.
	HeldForSeconds *float64       `json:"held_for_seconds"`
	Holder         statusMember   `json:"holder"`
	Waiters        []statusMember `json:"waiters"`
	// For a semaphore: its number of permits, how many are held, and
	// every grant (Holder is the oldest). For an RWMutex: the readers, or
	// the writer, that hold it.
	Limit   int64          `json:"limit,omitempty"`
	Used    int64          `json:"used,omitempty"`
	Holders []statusMember `json:"holders,omitempty"`
	// Mode is an RWMutex's: "read" (readers hold it) or "write".
	Mode string `json:"mode,omitempty"`
	// For a double barrier: who is in, and whether it filled (its
	// participants were released from Enter).
	Participants []statusMember `json:"participants,omitempty"`
	Full         bool           `json:"full,omitempty"`
	// For a queue: the items waiting, the consumers waiting in line for
	// one (oldest first), and the consumers' claim records.
	Depth     int            `json:"depth,omitempty"`
	Priority  bool           `json:"priority,omitempty"`
	Consumers []statusMember `json:"consumers,omitempty"`
	Claims    []statusMember `json:"claims,omitempty"`
}

// statusMember is one key of a primitive: a holder, a waiter, a
// participant, a consumer.
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
	// Mode is an RWMutex key's: "read" or "write".
	Mode string `json:"mode,omitempty"`
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
	for _, w := range nestedEntries(entries) {
		fmt.Fprintln(o.io.Err, nestWarning(w[0], w[1]))
	}
	if o.json {
		enc := json.NewEncoder(o.io.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(entries)
	}
	if len(entries) == 0 {
		fmt.Fprintf(o.io.Out, "nothing under %s: no locks, elections, semaphores, read-write locks, barriers or queues\n", cell(o.prefix+o.under))
		return nil
	}
	return writeStatusTable(o.io.Out, entries)
}

// nestedEntries lists the pairs {outer, inner} of the names of entries
// where a lock or an election named outer nests with a live inner name
// under outer/: etcd's layout keeps the queue of outer under outer/, so
// outer also waits for the holders of inner, as lock and elect warn.
func nestedEntries(entries []statusEntry) [][2]string {
	var out [][2]string
	seen := map[[2]string]bool{}
	for _, e := range entries {
		if e.Kind != kindLock && e.Kind != kindElection {
			continue
		}
		for _, f := range entries {
			pair := [2]string{e.Name, f.Name}
			if strings.HasPrefix(f.Name, e.Name+"/") && !seen[pair] {
				seen[pair] = true
				out = append(out, pair)
			}
		}
	}
	return out
}

func (o *statusOptions) entries(kvs []*mvccpb.KeyValue, now time.Time) []statusEntry {
	return statusEntries(o.prefix, kvs, now)
}

// family groups keys into primitives: one name can be a lock and, with
// other keys, an RWMutex at once.
type family int

const (
	famQueue   family = iota // lock, election or semaphore: NAME/<lease>
	famRW                    // NAME/read/, NAME/write/
	famDB                    // NAME/waiters/, NAME/ready
	famBarrier               // NAME
	famItems                 // a queue: items, counter, waiters, claims
)

type group struct {
	fam  family
	name string
}

// parts is what status read of one primitive, by role.
type parts map[layout.Role][]*mvccpb.KeyValue

// statusEntries reads the primitives out of kvs (keys without the
// --prefix namespace, which member adds back to each key shown).
func statusEntries(prefix string, kvs []*mvccpb.KeyValue, now time.Time) []statusEntry {
	groups := map[group]parts{}
	for _, kv := range kvs {
		k := layout.Parse(string(kv.Key), kv.Lease, kv.Value)
		switch k.Role {
		case layout.RoleReader, layout.RoleWriter, layout.RoleDBParticipant:
			// baton's lock and elect say what they are: a lock named
			// x/read, not a reader of x.
			if id, ok := parseIdentity(kv.Value); ok && id.Kind != "" {
				k = layout.Key{Name: string(kv.Key[:strings.LastIndexByte(string(kv.Key), '/')]), Role: layout.RoleParticipant}
			}
		}
		var f family
		switch k.Role {
		case layout.RoleNone, layout.RoleQueueArrival:
			continue
		case layout.RoleParticipant:
			f = famQueue
		case layout.RoleReader, layout.RoleWriter:
			f = famRW
		case layout.RoleDBParticipant, layout.RoleDBReady, layout.RoleDBWithdrawn:
			f = famDB
		case layout.RoleBarrier:
			f = famBarrier
		default:
			f = famItems
		}
		g := group{f, k.Name}
		if groups[g] == nil {
			groups[g] = parts{}
		}
		groups[g][k.Role] = append(groups[g][k.Role], kv)
	}
	entries := make([]statusEntry, 0, len(groups))
	for g, p := range groups {
		for _, q := range p {
			sort.Slice(q, func(i, j int) bool { return q[i].CreateRevision < q[j].CreateRevision })
		}
		e := statusEntry{Name: g.name, Waiters: []statusMember{}}
		switch g.fam {
		case famQueue:
			queueEntry(prefix, &e, p[layout.RoleParticipant])
		case famRW:
			rwEntry(prefix, &e, p)
		case famDB:
			if len(p[layout.RoleDBParticipant]) == 0 && len(p[layout.RoleDBReady]) == 0 {
				continue // only the withdrawal marker, which stays between rounds
			}
			e.Kind = kindDoubleBarrier
			for _, kv := range p[layout.RoleDBParticipant] {
				e.Participants = append(e.Participants, member(prefix, kv))
			}
			if r := p[layout.RoleDBReady]; len(r) > 0 {
				e.Full, e.Token = true, r[0].CreateRevision
			}
		case famBarrier:
			e.Kind, e.Token = kindBarrier, p[layout.RoleBarrier][0].CreateRevision
			e.Holder = statusMember{Key: prefix + string(p[layout.RoleBarrier][0].Key), Token: e.Token}
		case famItems:
			items := p[layout.RoleQueueItem]
			if len(items) == 0 && len(p[layout.RoleQueueWaiter]) == 0 && len(p[layout.RoleQueueClaim]) == 0 {
				continue // a counter alone: a queue that was used and is empty, with nobody waiting
			}
			e.Kind, e.Depth = kindQueue, len(items)
			for _, kv := range items {
				if k := layout.Parse(string(kv.Key), 0, kv.Value); k.IsPriority {
					e.Priority = true
				}
			}
			for _, kv := range p[layout.RoleQueueWaiter] {
				e.Consumers = append(e.Consumers, member(prefix, kv))
			}
			for _, kv := range p[layout.RoleQueueClaim] {
				e.Claims = append(e.Claims, member(prefix, kv))
			}
		}
		if since, ok := heldSinceMember(e.Holder); ok {
			secs := now.Sub(since).Seconds()
			e.HeldForSeconds = &secs
		}
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool {
		if entries[i].Name != entries[j].Name {
			return entries[i].Name < entries[j].Name
		}
		return entries[i].Kind < entries[j].Kind
	})
	return entries
}

// queueEntry fills in a lock, an election or a semaphore from its keys,
// oldest first: the first key holds (for a semaphore, the oldest keys
// whose permits fit), the rest wait.
func queueEntry(prefix string, e *statusEntry, q []*mvccpb.KeyValue) {
	e.Kind, e.Token, e.Holder = queueKind(q), q[0].CreateRevision, member(prefix, q[0])
	granted := 1 // a lock or an election has one holder: the oldest key
	if e.Kind == kindSemaphore {
		_, e.Limit = semPermits(q[0].Value)
		granted = layout.SemaphoreGranted(q, func(kv *mvccpb.KeyValue) int64 { n, _ := semPermits(kv.Value); return n }, e.Limit)
		for _, kv := range q[:granted] {
			m := member(prefix, kv)
			e.Used += m.Permits
			e.Holders = append(e.Holders, m)
		}
	}
	for _, kv := range q[granted:] {
		e.Waiters = append(e.Waiters, member(prefix, kv))
	}
}

// rwEntry fills in an RWMutex: its readers and writers queue together by
// create revision.
func rwEntry(prefix string, e *statusEntry, p parts) {
	q := append(append([]*mvccpb.KeyValue{}, p[layout.RoleReader]...), p[layout.RoleWriter]...)
	sort.Slice(q, func(i, j int) bool { return q[i].CreateRevision < q[j].CreateRevision })
	writer := func(kv *mvccpb.KeyValue) bool {
		return layout.Parse(string(kv.Key), kv.Lease, kv.Value).Role == layout.RoleWriter
	}
	granted := layout.RWGranted(q, writer)
	e.Kind, e.Token, e.Mode = kindRWMutex, q[0].CreateRevision, "read"
	if writer(q[0]) {
		e.Mode = "write"
	}
	for i, kv := range q {
		m := member(prefix, kv)
		m.Mode = "read"
		if writer(kv) {
			m.Mode = "write"
		}
		if i < granted {
			e.Holders = append(e.Holders, m)
			// The youngest holder's key is the newest fencing token.
			e.Token = max(e.Token, kv.CreateRevision)
		} else {
			e.Waiters = append(e.Waiters, m)
		}
	}
	e.Holder = e.Holders[0]
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
	n, limit, _ = layout.ParseSemaphoreValue(v)
	return n, limit
}

func member(prefix string, kv *mvccpb.KeyValue) statusMember {
	m := statusMember{Key: prefix + string(kv.Key), Token: kv.CreateRevision}
	if kv.Lease != 0 {
		m.Lease = strconv.FormatInt(kv.Lease, 16)
	}
	if id, ok := parseIdentity(kv.Value); ok {
		m.Identity = &id
	} else {
		m.Value = string(kv.Value)
	}
	m.Permits, _ = semPermits(kv.Value)
	return m
}

// heldSinceMember is heldSince for a member already parsed.
func heldSinceMember(m statusMember) (time.Time, bool) {
	if m.Identity == nil || m.Identity.Acquired.IsZero() {
		return time.Time{}, false
	}
	return m.Identity.Acquired, true
}

// holderText is the HOLDER and NOTE columns of e.
func holderText(e statusEntry) (holder, note string) {
	holder, note = memberText(e.Holder), "-"
	if id := e.Holder.Identity; id != nil && id.Note != "" {
		note = id.Note
	}
	switch e.Kind {
	case kindSemaphore:
		holder = fmt.Sprintf("%d/%d permits, %s", e.Used, e.Limit, plural(len(e.Holders), "holder"))
	case kindRWMutex:
		if e.Mode == "read" {
			holder = fmt.Sprintf("%d readers", len(e.Holders))
			if len(e.Holders) == 1 {
				holder = "1 reader: " + memberText(e.Holder)
			}
		} else {
			holder = "writer " + memberText(e.Holder)
		}
	case kindDoubleBarrier:
		holder = fmt.Sprintf("%d in, filling", len(e.Participants))
		if e.Full {
			holder = fmt.Sprintf("%d in, full", len(e.Participants))
		}
	case kindBarrier:
		holder = "held"
	case kindQueue:
		holder = fmt.Sprintf("%d items, %d claims", e.Depth, len(e.Claims))
	}
	return holder, note
}

// memberText describes who m is for the table.
func memberText(m statusMember) string {
	switch {
	case m.Identity != nil:
		return cell(m.Identity.Host) + " pid " + strconv.Itoa(m.Identity.PID)
	case m.Value != "":
		return strconv.Quote(truncate(m.Value, 32))
	case m.Lease != "":
		return "lease " + m.Lease
	}
	return "-"
}

func writeStatusTable(w io.Writer, entries []statusEntry) error {
	rows := [][]string{{"KIND", "NAME", "HOLDER", "NOTE", "TOKEN", "HELD FOR", "WAITERS"}}
	for _, e := range entries {
		holder, note := holderText(e)
		heldFor := "-"
		if e.HeldForSeconds != nil {
			heldFor = human(time.Duration(*e.HeldForSeconds * float64(time.Second)))
		}
		token := "-"
		if e.Token != 0 {
			token = strconv.FormatInt(e.Token, 10)
		}
		waiters := len(e.Waiters)
		if e.Kind == kindQueue {
			waiters = len(e.Consumers)
		}
		// holder is made of cells already (memberText).
		rows = append(rows, []string{e.Kind, cell(e.Name), holder, cell(note), token, heldFor, strconv.Itoa(waiters)})
	}
	return writeTable(w, rows)
}

// writeTable writes rows as columns two spaces apart, padded by display
// width: a wide character (CJK, say) takes two columns of a terminal, a
// combining mark none. Cells must come through cell first.
func writeTable(w io.Writer, rows [][]string) error {
	widths := []int{}
	for _, r := range rows {
		for i, c := range r {
			if i == len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], displayWidth(c))
		}
	}
	var b strings.Builder
	for _, r := range rows {
		for i, c := range r {
			b.WriteString(c)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-displayWidth(c)+2))
			}
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// cell makes s safe for one cell of a table: a string with a new line, a
// tab, another control or format character, or invalid UTF-8 is shown
// quoted and escaped (Go syntax), so that it cannot break the rows or the
// columns; one that starts with a quote is quoted too, so that it cannot
// pass for such an escape.
func cell(s string) string {
	if s == "" {
		return `""`
	}
	if !utf8.ValidString(s) || strings.HasPrefix(s, `"`) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.Is(unicode.Cf, r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// displayWidth is how many terminal columns s takes.
func displayWidth(s string) int {
	n := 0
	for _, r := range s {
		switch {
		case unicode.In(r, unicode.Mn, unicode.Me, unicode.Cf):
		case width.LookupRune(r).Kind() == width.EastAsianWide || width.LookupRune(r).Kind() == width.EastAsianFullwidth:
			n += 2
		default:
			n++
		}
	}
	return n
}

// plural is "1 holder", "2 holders".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
