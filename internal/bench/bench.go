// Package bench is baton's side-by-side benchmark: every workload runs with
// baton and with a peer (etcd's own concurrency package, etcd's recipes,
// bsm/redislock) against the same server in the same run, and reports both
// figures and their ratio. "baton bench" prints its table.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Row is one line of the table.
type Row struct {
	Suite    string  `json:"suite"`
	Workload string  `json:"workload"`
	Unit     string  `json:"unit"`
	Baton    float64 `json:"baton"`
	// Peer is the peer's figure; PeerName says who the peer is. A floor row
	// (a raw Put, say) has no peer and Peer is 0.
	Peer     float64 `json:"peer,omitempty"`
	PeerName string  `json:"peer_name,omitempty"`
	// HigherIsBetter tells how to read the ratio: ops/s are better high,
	// latencies better low.
	HigherIsBetter bool   `json:"higher_is_better"`
	Note           string `json:"note,omitempty"`
}

// Ratio is how many times better baton is than the peer: > 1 means baton
// wins. It is NaN for a row without a peer.
func (r Row) Ratio() float64 {
	if r.Peer == 0 || r.Baton == 0 {
		return math.NaN()
	}
	if r.HigherIsBetter {
		return r.Baton / r.Peer
	}
	return r.Peer / r.Baton
}

// Options tune a run.
type Options struct {
	// Quick shortens every workload for a smoke check (under a minute in
	// all).
	Quick bool
	// Only, when not empty, runs only the suites with these names.
	Only []string
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// Suite is a group of workloads that share a setup.
type Suite struct {
	Name string
	Run  func(ctx context.Context, o Options) ([]Row, error)
}

// Suites lists every suite in the order the table shows them.
func Suites() []Suite {
	return []Suite{
		{Name: "core", Run: runCore},
		{Name: "stm", Run: runSTM},
		{Name: "memlock", Run: runMemlock},
		{Name: "recipes", Run: runRecipes},
	}
}

// Run runs the selected suites and returns their rows.
func Run(ctx context.Context, o Options) ([]Row, error) {
	var rows []Row
	for _, s := range Suites() {
		if len(o.Only) > 0 && !contains(o.Only, s.Name) {
			continue
		}
		o.logf("suite %s", s.Name)
		r, err := s.Run(ctx, o)
		if err != nil {
			return rows, fmt.Errorf("bench: suite %s: %w", s.Name, err)
		}
		for i := range r {
			r[i].Suite = s.Name
		}
		rows = append(rows, r...)
	}
	return rows, nil
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func (o Options) logf(format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", args...)
	}
}

// WriteTable prints rows as an aligned text table.
func WriteTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "suite\tworkload\tunit\tbaton\tpeer\tpeer value\tratio")
	for _, r := range rows {
		peer, ratio := "-", "-"
		if r.Peer != 0 {
			peer = fmtNum(r.Peer)
			ratio = fmt.Sprintf("%.2fx", r.Ratio())
		}
		name := r.PeerName
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Suite, r.Workload, r.Unit, fmtNum(r.Baton), name, peer, ratio)
	}
	return tw.Flush()
}

// WriteJSON prints rows as one JSON array, with the ratio added.
func WriteJSON(w io.Writer, rows []Row) error {
	type out struct {
		Row
		Ratio *float64 `json:"ratio,omitempty"`
	}
	os := make([]out, len(rows))
	for i, r := range rows {
		os[i].Row = r
		if q := r.Ratio(); !math.IsNaN(q) {
			os[i].Ratio = &q
		}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(os)
}

func fmtNum(f float64) string {
	switch {
	case f >= 100:
		return fmt.Sprintf("%.0f", f)
	case f >= 10:
		return fmt.Sprintf("%.1f", f)
	default:
		return fmt.Sprintf("%.3f", f)
	}
}

// Percentile returns the p-th percentile (0..100) of ds in milliseconds.
func Percentile(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return math.NaN()
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	i = max(0, min(i, len(s)-1))
	return float64(s[i]) / float64(time.Millisecond)
}

// label joins parts of a workload name.
func label(parts ...string) string { return strings.Join(parts, " ") }
