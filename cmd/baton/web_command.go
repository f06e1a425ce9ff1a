package main

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// webAssets is the page: no CDN, the machine it runs on may have no
// internet.
//
//go:embed web
var webAssets embed.FS

const defaultWebListen = "127.0.0.1:2390"

// webOptions are the flags and arguments of "baton web".
type webOptions struct {
	*app
	under  string // PREFIX
	listen string
	// keep is how many holders each name's timeline keeps.
	keep int
}

func newWebCommand(a *app) *cobra.Command {
	o := &webOptions{app: a, keep: 20}
	cmd := &cobra.Command{
		Use:   "web [PREFIX]",
		Short: "Serve a live, read-only page of every lock, election, semaphore and queue under PREFIX, and /metrics",
		Long: `web serves a page that shows, live, what "baton status" shows for every
primitive under PREFIX (all by default): locks (holder with host, pid and
note, token, held for, waiters in order), elections (leader, proposal,
token, candidates), semaphores (permits used of the limit, holders,
waiters), read-write locks (readers or writer), queues (depth, waiting
consumers, claim records) and barriers (held or free).

Each name has a timeline of its last holders (handoffs, leader changes)
with how long each held it, drawn from the watch events seen since web
started. The page is read-only and updates over server-sent events
(/events); /state is the same data as JSON.

/metrics, on the same listener, exports that state for Prometheus, in the
manner of kube-state-metrics: series named baton_*, each with the
primitive's name (and kind) as labels:
  baton_holders, baton_waiters                    holders and waiters now
  baton_held_for_seconds                          for how long the holder has held
  baton_handoffs_total, baton_leader_changes_total new holders seen since web started
  baton_semaphore_permits_in_use, baton_semaphore_permits
  baton_queue_depth, baton_queue_consumers_waiting, baton_queue_claims
One series per primitive: the label values are the names in use, so their
number is the number of live names under PREFIX.`,
		Example: `  baton web
  baton web jobs/ --listen 0.0.0.0:2390`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				o.under = args[0]
			}
			return o.run()
		},
	}
	cmd.Flags().StringVar(&o.listen, "listen", defaultWebListen, "serve the page and /metrics on this address")
	return cmd
}

func (o *webOptions) run() error {
	sigs, stopSignals := o.signals()
	defer stopSignals()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := o.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()

	w := newWebState(o.prefix, o.under, o.keep)
	// The first read: an error here (no permission, say) is worth
	// reporting at once rather than on the page.
	rctx, rcancel := context.WithTimeout(ctx, o.dialTimeout)
	resp, err := c.Get(rctx, o.under, clientv3.WithPrefix())
	rcancel()
	if err != nil {
		return fmt.Errorf("web: read %q: %w", o.prefix+o.under, err)
	}
	w.reset(resp.Kvs, resp.Header.Revision, time.Now())

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return withCode(exitConfig, fmt.Errorf("web: --listen %s: %w", o.listen, err))
	}
	srv := &http.Server{Handler: w.handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	watched := make(chan error, 1)
	go func() { watched <- w.follow(ctx, c, resp.Header.Revision, o.log) }()
	fmt.Fprintf(o.io.Out, "baton: serving http://%s/ (metrics at /metrics); Ctrl-C stops\n", ln.Addr())

	select {
	case <-sigs:
		err = nil
	case err = <-served:
		err = fmt.Errorf("web: serve: %w", err)
	case err = <-watched:
		err = fmt.Errorf("web: watch %q: %w", o.prefix+o.under, err)
	}
	cancel()
	w.close()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if serr := srv.Shutdown(sctx); serr != nil && err == nil {
		err = fmt.Errorf("web: shut down: %w", serr)
	}
	if werr := <-watched; werr != nil && !errors.Is(werr, context.Canceled) && err == nil {
		err = werr
	}
	return err
}

// follow keeps w up to date from a watch of the prefix from after rev,
// until ctx ends. A watch that breaks (its member lost its leader, the
// connection dropped) is made again from the last revision seen; one whose
// revisions were compacted away starts over from a fresh read. Both are
// logged to log.
func (w *webState) follow(ctx context.Context, c *clientv3.Client, rev int64, log *slog.Logger) error {
	for {
		wctx, wcancel := context.WithCancel(ctx)
		wch := c.Watch(clientv3.WithRequireLeader(wctx), w.under, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithPrevKV())
		for wr := range wch {
			if err := wr.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					break
				}
				continue // the channel closes after a cancelling error
			}
			if len(wr.Events) > 0 {
				w.apply(wr.Events, time.Now())
				rev = wr.Events[len(wr.Events)-1].Kv.ModRevision
			}
		}
		wcancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Info("watch broken or compacted: reading the prefix again", "prefix", w.under, "rev", rev)
		for {
			gctx, gcancel := context.WithTimeout(ctx, 10*time.Second)
			resp, err := c.Get(gctx, w.under, clientv3.WithPrefix())
			gcancel()
			if err == nil {
				w.resync(resp.Kvs, time.Now())
				rev = resp.Header.Revision
				log.Info("watch re-established", "prefix", w.under, "rev", rev)
				break
			}
			log.Warn("reading the prefix again failed; retrying", "prefix", w.under, "err", err)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
		}
	}
}

func (w *webState) handler() http.Handler {
	mux := http.NewServeMux()
	static, err := fs.Sub(webAssets, "web")
	if err != nil {
		panic(err) // the embedded folder is there: built in
	}
	mux.Handle("GET /", http.FileServerFS(static))
	mux.HandleFunc("GET /state", func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "application/json")
		rw.Write(w.snapshotJSON(time.Now()))
	})
	mux.HandleFunc("GET /events", w.serveEvents)
	reg := prometheus.NewRegistry()
	reg.MustRegister(webCollector{w})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

// serveEvents streams the state as server-sent events: one "state" event
// now and one after every change, coalesced (a client that reads slowly
// gets the latest state, not every step), with a comment every 15 s to
// keep proxies from closing the stream.
func (w *webState) serveEvents(rw http.ResponseWriter, r *http.Request) {
	flusher, ok := rw.(http.Flusher)
	if !ok {
		http.Error(rw, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	rw.Header().Set("Content-Type", "text/event-stream")
	rw.Header().Set("Cache-Control", "no-store")
	ping := time.NewTicker(15 * time.Second)
	defer ping.Stop()
	for {
		changed, closed := w.changes()
		if _, err := fmt.Fprintf(rw, "event: state\ndata: %s\n\n", w.snapshotJSON(time.Now())); err != nil {
			return
		}
		flusher.Flush()
		for waiting := true; waiting; {
			select {
			case <-r.Context().Done():
				return
			case <-closed:
				return
			case <-changed:
				waiting = false
			case <-ping.C:
				if _, err := fmt.Fprint(rw, ": ping\n\n"); err != nil {
					return
				}
				flusher.Flush()
			}
		}
	}
}

// webCollector exports the state at scrape time, as kube-state-metrics
// does: no series outlives its primitive, and nothing is computed between
// scrapes.
type webCollector struct{ w *webState }

var (
	descHolders     = prometheus.NewDesc("baton_holders", "Keys that hold the primitive now: 1 for a held lock or election, the grants of a semaphore, the readers of an RWMutex, the participants of a double barrier.", []string{"kind", "name"}, nil)
	descWaiters     = prometheus.NewDesc("baton_waiters", "Keys waiting for the primitive now; for a queue, the consumers waiting for an item.", []string{"kind", "name"}, nil)
	descHeldFor     = prometheus.NewDesc("baton_held_for_seconds", "For how long the current holder has held the primitive, when known (a baton holder says when it got it; otherwise since web saw it take over).", []string{"kind", "name"}, nil)
	descHandoffs    = prometheus.NewDesc("baton_handoffs_total", "New holders of a lock, semaphore or RWMutex seen since web started (a lock taken when free counts as one).", []string{"kind", "name"}, nil)
	descLeaders     = prometheus.NewDesc("baton_leader_changes_total", "New leaders of an election seen since web started.", []string{"name"}, nil)
	descPermitsUsed = prometheus.NewDesc("baton_semaphore_permits_in_use", "Permits of the semaphore held now.", []string{"name"}, nil)
	descPermits     = prometheus.NewDesc("baton_semaphore_permits", "The semaphore's limit, as its keys say.", []string{"name"}, nil)
	descDepth       = prometheus.NewDesc("baton_queue_depth", "Items in the queue.", []string{"name"}, nil)
	descConsumers   = prometheus.NewDesc("baton_queue_consumers_waiting", "Consumers waiting in line for an item.", []string{"name"}, nil)
	descClaims      = prometheus.NewDesc("baton_queue_claims", "Claim records of the queue's consumers: claims in progress, or made within the consumer's lease.", []string{"name"}, nil)
	descUp          = prometheus.NewDesc("baton_web_watch_revision", "The etcd revision web's state is at.", nil, nil)
)

func (webCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHolders, descWaiters, descHeldFor, descHandoffs, descLeaders, descPermitsUsed, descPermits, descDepth, descConsumers, descClaims, descUp} {
		ch <- d
	}
}

func (c webCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	snap := c.w.snapshot(now)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descUp, float64(snap.Revision))
	for _, e := range snap.Entries {
		if !e.Free {
			gauge(descHolders, float64(e.holderCount()), e.Kind, e.Name)
			gauge(descWaiters, float64(e.waiterCount()), e.Kind, e.Name)
		} else {
			gauge(descHolders, 0, e.Kind, e.Name)
			gauge(descWaiters, 0, e.Kind, e.Name)
		}
		if e.HeldSince != nil && !e.Free {
			gauge(descHeldFor, now.Sub(time.UnixMilli(*e.HeldSince)).Seconds(), e.Kind, e.Name)
		}
		switch e.Kind {
		case kindElection:
			ch <- prometheus.MustNewConstMetric(descLeaders, prometheus.CounterValue, float64(e.Changes), e.Name)
		case kindLock, kindSemaphore, kindRWMutex:
			ch <- prometheus.MustNewConstMetric(descHandoffs, prometheus.CounterValue, float64(e.Changes), e.Kind, e.Name)
		}
		switch e.Kind {
		case kindSemaphore:
			gauge(descPermitsUsed, float64(e.Used), e.Name)
			gauge(descPermits, float64(e.Limit), e.Name)
		case kindQueue:
			gauge(descDepth, float64(e.Depth), e.Name)
			gauge(descConsumers, float64(len(e.Consumers)), e.Name)
			gauge(descClaims, float64(len(e.Claims)), e.Name)
		}
	}
}

// sortedKVs is the kvs of m in key order.
func sortedKVs(m map[string]*mvccpb.KeyValue) []*mvccpb.KeyValue {
	kvs := make([]*mvccpb.KeyValue, 0, len(m))
	for _, kv := range m {
		kvs = append(kvs, kv)
	}
	sort.Slice(kvs, func(i, j int) bool { return string(kvs[i].Key) < string(kvs[j].Key) })
	return kvs
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("baton: encode %T: %v", v, err)) // plain structs: cannot fail
	}
	return b
}
