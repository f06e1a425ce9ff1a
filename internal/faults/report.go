//go:build linux

package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// WorkloadResult is what the checkers found in one workload's history.
type WorkloadResult struct {
	Name      string
	Control   bool
	Ops       []*Op
	Anomalies []Anomaly
	Lin       *linResult // register workloads only
	Note      string     // e.g. how unknown transfers resolved
}

// Bad reports whether the checkers found anything wrong.
func (w *WorkloadResult) Bad() bool {
	return len(w.Anomalies) > 0 || w.Lin != nil && w.Lin.Result == porcupine.Illegal
}

// Result is a run's report.
type Result struct {
	Dir       string
	Seed      uint64
	Elapsed   time.Duration
	Faults    []Fault
	Workloads []*WorkloadResult
	Table     string
}

// Failures lists what makes the run fail: anomalies in a workload that
// must have none, and controls that showed none (the faults were too weak
// to prove the checker bites).
func (res *Result) Failures() []string {
	var out []string
	for _, w := range res.Workloads {
		switch {
		case w.Control && !w.Bad():
			out = append(out, fmt.Sprintf("control %s showed no anomaly: the faults were too weak to prove the checkers bite", w.Name))
		case !w.Control && w.Bad():
			for i, a := range w.Anomalies {
				if i == 10 {
					out = append(out, fmt.Sprintf("%s: ... %d more", w.Name, len(w.Anomalies)-10))
					break
				}
				out = append(out, fmt.Sprintf("%s: %s: %s", w.Name, a.Kind, a.Msg))
			}
			if w.Lin != nil && w.Lin.Result == porcupine.Illegal {
				out = append(out, fmt.Sprintf("%s: history is not linearizable; see %s", w.Name, w.Lin.HTML))
			}
		}
	}
	return out
}

// check reads every history and the final state, and runs the checkers.
func (r *run) check(ctx context.Context, finalAt int64) (*Result, error) {
	res := &Result{Seed: r.opt.Seed, Faults: append([]Fault(nil), r.faults...)}
	sort.Slice(res.Faults, func(i, j int) bool { return res.Faults[i].Start < res.Faults[j].Start })
	for _, wl := range r.opt.Workloads {
		wr := &WorkloadResult{Name: wl, Control: isControl(wl)}
		var events []Record
		for _, w := range r.workers[wl] {
			recs, err := readHistory(w.cfg.History)
			if err != nil {
				return nil, err
			}
			o, ev := ops(recs)
			wr.Ops = append(wr.Ops, o...)
			events = append(events, ev...)
		}
		if isRegister(wl) {
			log, err := r.registerLog(ctx, r.prefix(wl)+"/register")
			if err != nil {
				return nil, err
			}
			wr.Anomalies = append(wr.Anomalies, checkRegisterLog(wr.Ops, log)...)
			var final *regOut
			if n := len(log); n > 0 {
				final = &regOut{Val: log[n-1].Val, Tok: log[n-1].Tok}
			} else {
				final = &regOut{}
			}
			hist := registerOps(wr.Ops, final, finalAt)
			lr := checkLinearizable(hist, filepath.Join(r.dir, wl+".html"), 2*time.Minute)
			wr.Lin = &lr
			if wl == wlElection {
				wr.Anomalies = append(wr.Anomalies, checkLeaders(events)...)
			}
		} else if isMemlock(wl) {
			an, note := checkMemlock(wl, wr.Ops, r.faults, events)
			wr.Anomalies = append(wr.Anomalies, an...)
			wr.Note = note
		} else if wl == wlSemaphore {
			wr.Anomalies = append(wr.Anomalies, checkSemaphore(wr.Ops, semLimit)...)
		} else if wl == wlQueue {
			drained, err := r.drainQueue(ctx)
			if err != nil {
				return nil, err
			}
			an, note := checkQueue(wr.Ops, drained)
			wr.Anomalies = append(wr.Anomalies, an...)
			wr.Note = note
		} else {
			fin, err := r.bankState(ctx)
			if err != nil {
				return nil, err
			}
			an, ua, un := checkBank(wr.Ops, fin, bankAccounts, bankInitial)
			wr.Anomalies = append(wr.Anomalies, an...)
			wr.Note = fmt.Sprintf("unknown transfers resolved by reading their id keys: %d applied, %d not", ua, un)
		}
		res.Workloads = append(res.Workloads, wr)
	}
	res.Table = res.table()
	return res, nil
}

// registerLog reads every revision of the register key, oldest first.
func (r *run) registerLog(ctx context.Context, key string) ([]logEntry, error) {
	var out []logEntry
	var opts []clientv3.OpOption
	for {
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := r.cli.Get(gctx, key, opts...)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("faults: read %s: %w", key, err)
		}
		if len(resp.Kvs) == 0 {
			break
		}
		kv := resp.Kvs[0]
		val, tok, prev := parseReg(string(kv.Value))
		out = append(out, logEntry{Rev: kv.ModRevision, Val: val, Tok: tok, Prev: prev})
		if kv.Version == 1 {
			break
		}
		opts = []clientv3.OpOption{clientv3.WithRev(kv.ModRevision - 1)}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

func (r *run) bankState(ctx context.Context) (bankFinal, error) {
	fin := bankFinal{Applied: map[string]bool{}}
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	pfx := r.prefix(wlBank)
	resp, err := r.cli.Get(gctx, pfx+"/acct/", clientv3.WithPrefix())
	if err != nil {
		return fin, fmt.Errorf("faults: read balances: %w", err)
	}
	for _, kv := range resp.Kvs {
		var v int64
		fmt.Sscan(string(kv.Value), &v)
		fin.Bal = append(fin.Bal, v)
	}
	resp, err = r.cli.Get(gctx, pfx+"/tx/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return fin, fmt.Errorf("faults: read transfer ids: %w", err)
	}
	for _, kv := range resp.Kvs {
		fin.Applied[strings.TrimPrefix(string(kv.Key), pfx+"/tx/")] = true
	}
	return fin, nil
}

// window returns the kind of the fault an operation started under: the
// latest fault that started at or before it, among the cluster faults and
// the worker pauses of the operation's own workload ("none" before the
// first).
func window(faults []Fault, wl string, t int64) int {
	best := -1
	for i, f := range faults {
		if !f.applies(wl) {
			continue
		}
		if f.Start <= t && (best < 0 || f.Start >= faults[best].Start) {
			best = i
		}
	}
	return best
}

type row struct {
	ops, ok, fail, unknown, anomalies int
	recovery                          []time.Duration
}

// table renders workload × fault: operations started under each fault
// kind (up to the next fault), their outcomes, the anomalies attributed to
// them, and recovery, the time from the fault's start to the first
// operation started after it that succeeded.
func (res *Result) table() string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tfault\tops\tok\tfail\tunknown\tanomalies\trecovery p50\trecovery max\t")
	for _, w := range res.Workloads {
		rows := map[string]*row{}
		get := func(k string) *row {
			if rows[k] == nil {
				rows[k] = &row{}
			}
			return rows[k]
		}
		kindOf := func(t int64) string {
			if i := window(res.Faults, w.Name, t); i >= 0 {
				return res.Faults[i].Kind
			}
			return "none"
		}
		for _, op := range w.Ops {
			rw := get(kindOf(op.Start))
			rw.ops++
			switch op.Status {
			case recOK:
				rw.ok++
			case recFail:
				rw.fail++
			default:
				rw.unknown++
			}
		}
		whole := 0
		for _, a := range w.Anomalies {
			if a.Time == 0 {
				whole++
				continue
			}
			get(kindOf(a.Time)).anomalies++
		}
		for _, f := range res.Faults {
			if !f.applies(w.Name) {
				continue
			}
			var first int64
			for _, op := range w.Ops {
				if op.Status == recOK && op.Start >= f.Start && progressOp(op.F) && (first == 0 || op.End < first) {
					first = op.End
				}
			}
			rw := get(f.Kind)
			if first > 0 {
				rw.recovery = append(rw.recovery, time.Duration(first-f.Start))
			}
		}
		for _, k := range tableKinds {
			rw := rows[k]
			if rw == nil {
				continue
			}
			p50, mx := "-", "-"
			if n := len(rw.recovery); n > 0 {
				sort.Slice(rw.recovery, func(i, j int) bool { return rw.recovery[i] < rw.recovery[j] })
				p50 = rw.recovery[(n-1)/2].Round(time.Millisecond).String()
				mx = rw.recovery[n-1].Round(time.Millisecond).String()
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t\n", w.Name, k, rw.ops, rw.ok, rw.fail, rw.unknown, rw.anomalies, p50, mx)
		}
		if whole > 0 {
			fmt.Fprintf(tw, "%s\t(whole run)\t\t\t\t\t%d\t\t\t\n", w.Name, whole)
		}
	}
	tw.Flush()
	b.WriteString("\n")
	for _, w := range res.Workloads {
		verdict := "ok"
		if w.Bad() {
			verdict = "ANOMALIES"
			if w.Control {
				verdict = "anomalies (expected: control)"
			}
		} else if w.Control {
			verdict = "NO ANOMALY (control expected one)"
		}
		fmt.Fprintf(&b, "%s: %s", w.Name, verdict)
		if w.Lin != nil {
			fmt.Fprintf(&b, "; linearizable: %s (%d ops, %s)", linName(w.Lin.Result), w.Lin.Ops, w.Lin.HTML)
		}
		kinds := map[string]int{}
		for _, a := range w.Anomalies {
			kinds[a.Kind]++
		}
		if len(kinds) > 0 {
			var ks []string
			for k, n := range kinds {
				ks = append(ks, fmt.Sprintf("%s×%d", k, n))
			}
			sort.Strings(ks)
			fmt.Fprintf(&b, "; %s", strings.Join(ks, ", "))
		}
		if w.Note != "" {
			fmt.Fprintf(&b, "; %s", w.Note)
		}
		b.WriteString("\n")
	}
	return b.String()
}

func linName(r porcupine.CheckResult) string {
	switch r {
	case porcupine.Ok:
		return "yes"
	case porcupine.Illegal:
		return "NO"
	}
	return "unknown (checker timed out)"
}

// write stores the report: report.txt (the table, the faults, every
// anomaly) and faults.jsonl.
func (res *Result) write() error {
	var b strings.Builder
	fmt.Fprintf(&b, "baton fault suite: seed %d, %v\n\n", res.Seed, res.Elapsed.Round(time.Second))
	b.WriteString(res.Table)
	b.WriteString("\nfaults:\n")
	var start int64
	if len(res.Faults) > 0 {
		start = res.Faults[0].Start
	}
	for _, f := range res.Faults {
		fmt.Fprintf(&b, "  +%-8v %-15s %-22s %v %s\n", time.Duration(f.Start-start).Round(time.Millisecond), f.Kind, f.Target, time.Duration(f.End-f.Start).Round(time.Millisecond), f.Note)
	}
	for _, w := range res.Workloads {
		if len(w.Anomalies) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s anomalies:\n", w.Name)
		for _, a := range w.Anomalies {
			fmt.Fprintf(&b, "  %s: %s\n", a.Kind, a.Msg)
		}
	}
	if err := os.WriteFile(filepath.Join(res.Dir, "report.txt"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(res.Dir, "faults.jsonl"))
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, fl := range res.Faults {
		enc.Encode(fl)
	}
	return f.Close()
}

// progressOp reports whether an operation of kind f, when it succeeds,
// shows a workload making progress (reads do not).
func progressOp(f string) bool {
	switch f {
	case "write", "transfer", "enter", "enqueue", "dequeue", "hold":
		return true
	}
	return false
}
