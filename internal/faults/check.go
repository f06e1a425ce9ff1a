//go:build linux

package faults

import (
	"fmt"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

// Anomaly is one violation a checker found.
type Anomaly struct {
	Kind string
	Time int64 // invoke time of the operation it concerns (0: whole history)
	Msg  string
}

// regState is the fenced register: the value last written and its token.
type regState struct {
	Val string
	Tok int64
}

// regIn is a register operation as the model sees it.
type regIn struct {
	Write   bool
	Val     string // written value
	Prev    string // value the writer read under its lock
	Tok     int64  // writer's fencing token
	Unknown bool   // outcome unknown: it may or may not have taken effect
}

// regOut is a read's result.
type regOut struct {
	Val string
	Tok int64
}

// registerModel is the model of a register written under a lock. A write
// is legal only if it carries a token no lower than the last applied one
// (fencing) and replaces the value its writer read under the lock (mutual
// exclusion: no write came between the holder's read and its write). A
// read returns the current value. A write whose outcome is unknown may or
// may not have been applied.
var registerModel = porcupine.NondeterministicModel{
	Init: func() []any { return []any{regState{}} },
	Step: func(state, input, output any) []any {
		st := state.(regState)
		in := input.(regIn)
		if !in.Write {
			out := output.(regOut)
			if out.Val == st.Val && out.Tok == st.Tok {
				return []any{st}
			}
			return nil
		}
		var next []any
		if in.Unknown {
			next = append(next, st)
		}
		if in.Prev == st.Val && in.Tok >= st.Tok {
			next = append(next, regState{Val: in.Val, Tok: in.Tok})
		}
		return next
	},
	Equal: func(a, b any) bool { return a.(regState) == b.(regState) },
	DescribeOperation: func(input, output any) string {
		in := input.(regIn)
		if !in.Write {
			out := output.(regOut)
			return fmt.Sprintf("read -> %q tok %d", out.Val, out.Tok)
		}
		s := fmt.Sprintf("write %q over %q tok %d", in.Val, in.Prev, in.Tok)
		if in.Unknown {
			s += " (unknown)"
		}
		return s
	},
	DescribeState: func(state any) string {
		st := state.(regState)
		return fmt.Sprintf("%q tok %d", st.Val, st.Tok)
	},
}

// linResult is the verdict of the linearizability checker on one history.
type linResult struct {
	Result porcupine.CheckResult
	HTML   string // visualization path, "" when it could not be written
	Ops    int
}

// registerOps turns a register workload's operations into porcupine's
// form. Failed operations took no effect and are left out (a failed read
// returned nothing); unknown writes get a return time after the whole
// history. final, when not nil, is a read by the parent after every worker
// stopped.
func registerOps(all []*Op, final *regOut, finalAt int64) []porcupine.Operation {
	var last int64
	for _, op := range all {
		last = max(last, op.Start, op.End)
	}
	end := max(last, finalAt) + int64(time.Second)
	clients := 0
	var out []porcupine.Operation
	for _, op := range all {
		clients = max(clients, op.Worker+1)
		switch {
		case op.F == "read" && op.Status == recOK:
			out = append(out, porcupine.Operation{ClientId: op.Worker, Input: regIn{}, Call: op.Start,
				Output: regOut{Val: op.Out.Val, Tok: op.Out.Tok}, Return: op.End})
		case op.F == "write" && op.Status == recOK:
			out = append(out, porcupine.Operation{ClientId: op.Worker, Input: regIn{Write: true, Val: op.In.Val, Prev: op.In.Prev, Tok: op.In.Tok},
				Call: op.Start, Output: regOut{}, Return: op.End})
		case op.F == "write" && op.Status == recUnknown:
			out = append(out, porcupine.Operation{ClientId: op.Worker, Input: regIn{Write: true, Val: op.In.Val, Prev: op.In.Prev, Tok: op.In.Tok, Unknown: true},
				Call: op.Start, Output: regOut{}, Return: end})
		}
	}
	if final != nil {
		out = append(out, porcupine.Operation{ClientId: clients, Input: regIn{}, Call: finalAt, Output: *final, Return: finalAt + 1})
	}
	return out
}

// checkLinearizable runs porcupine on a register history and writes its
// visualization to html.
func checkLinearizable(hist []porcupine.Operation, html string, timeout time.Duration) linResult {
	model := registerModel.ToModel()
	res, info := porcupine.CheckOperationsVerbose(model, hist, timeout)
	lr := linResult{Result: res, Ops: len(hist)}
	if err := porcupine.VisualizePath(model, info, html); err == nil {
		lr.HTML = html
	}
	return lr
}

// logEntry is one applied write, read back from the register key's
// revisions (etcd keeps them: nothing compacts during a run).
type logEntry struct {
	Rev  int64
	Val  string
	Tok  int64
	Prev string
}

// checkRegisterLog compares the writes the resource applied with the
// writes the workers made: every acknowledged write is applied exactly
// once, no failed write is applied, every applied write replaces the value
// its writer read and carries a token no lower than any before it.
func checkRegisterLog(all []*Op, log []logEntry) []Anomaly {
	writes := map[string]*Op{}
	for _, op := range all {
		if op.F == "write" {
			writes[op.In.Val] = op
		}
	}
	var an []Anomaly
	at := func(val string) int64 {
		if op := writes[val]; op != nil {
			return op.Start
		}
		return 0
	}
	seen := map[string]int{}
	prev := ""
	var maxTok int64
	var maxVal string
	for _, e := range log {
		seen[e.Val]++
		if seen[e.Val] == 2 {
			an = append(an, Anomaly{"applied-twice", at(e.Val), fmt.Sprintf("write %q applied more than once (rev %d)", e.Val, e.Rev)})
		}
		op := writes[e.Val]
		switch {
		case op == nil:
			an = append(an, Anomaly{"phantom", 0, fmt.Sprintf("rev %d holds %q, which no worker wrote", e.Rev, e.Val)})
		case op.Status == recFail:
			an = append(an, Anomaly{"failed-applied", op.Start, fmt.Sprintf("write %q failed (%s) but was applied at rev %d", e.Val, op.Out.Err, e.Rev)})
		}
		if e.Prev != prev {
			an = append(an, Anomaly{"lost-update", at(e.Val), fmt.Sprintf("write %q (tok %d, rev %d) replaced %q but its writer had read %q: the update in between was lost", e.Val, e.Tok, e.Rev, prev, e.Prev)})
		}
		if e.Tok < maxTok {
			an = append(an, Anomaly{"stale-token", at(e.Val), fmt.Sprintf("write %q with token %d applied at rev %d after %q with token %d", e.Val, e.Tok, e.Rev, maxVal, maxTok)})
		} else {
			maxTok, maxVal = e.Tok, e.Val
		}
		prev = e.Val
	}
	for _, op := range all {
		if op.F == "write" && op.Status == recOK && seen[op.In.Val] == 0 {
			an = append(an, Anomaly{"lost-ack", op.Start, fmt.Sprintf("acknowledged write %q is not in the register's history", op.In.Val)})
		}
	}
	return an
}

// checkLeaders checks that no two campaigns believed they led with the
// same token.
func checkLeaders(events []Record) []Anomaly {
	by := map[int64]map[string]int64{}
	for _, e := range events {
		if e.F != "lead" {
			continue
		}
		if by[e.Tok] == nil {
			by[e.Tok] = map[string]int64{}
		}
		by[e.Tok][e.Val] = e.Time
	}
	var an []Anomaly
	for tok, cs := range by {
		if len(cs) > 1 {
			var names []string
			var first int64
			for c, t := range cs {
				names = append(names, c)
				if first == 0 || t < first {
					first = t
				}
			}
			sort.Strings(names)
			an = append(an, Anomaly{"two-leaders", first, fmt.Sprintf("campaigns %v all believed they led with token %d", names, tok)})
		}
	}
	return an
}

// bankFinal is the bank's state read after the run.
type bankFinal struct {
	Bal     []int64
	Applied map[string]bool // transfer ids whose key exists
}

// checkBank checks the bank: every read and the final state sum to the
// total; every acknowledged transfer applied, no failed one applied, no
// transfer applied that was never invoked; and the final balances are the
// initial ones moved by exactly the applied transfers. It returns how many
// unknown transfers turned out applied and not.
func checkBank(all []*Op, fin bankFinal, accounts int, initial int64) (an []Anomaly, unkApplied, unkNot int) {
	total := initial * int64(accounts)
	want := make([]int64, accounts)
	for i := range want {
		want[i] = initial
	}
	invoked := map[string]bool{}
	for _, op := range all {
		switch op.F {
		case "balances":
			if op.Status != recOK {
				continue
			}
			var sum int64
			for _, b := range op.Out.Bal {
				sum += b
			}
			if sum != total || len(op.Out.Bal) != accounts {
				an = append(an, Anomaly{"sum", op.Start, fmt.Sprintf("read balances %v: %d accounts summing to %d, want %d summing to %d", op.Out.Bal, len(op.Out.Bal), sum, accounts, total)})
			}
		case "transfer":
			id := op.In.TxID
			invoked[id] = true
			applied := fin.Applied[id]
			switch op.Status {
			case recOK:
				if !applied {
					an = append(an, Anomaly{"lost-ack", op.Start, fmt.Sprintf("acknowledged transfer %s is missing", id)})
				}
			case recFail:
				if applied {
					an = append(an, Anomaly{"failed-applied", op.Start, fmt.Sprintf("transfer %s failed (%s) but was applied", id, op.Out.Err)})
				}
			default:
				if applied {
					unkApplied++
				} else {
					unkNot++
				}
			}
			if applied && op.In.From < accounts && op.In.To < accounts {
				want[op.In.From] -= op.In.Amt
				want[op.In.To] += op.In.Amt
			}
		}
	}
	for id := range fin.Applied {
		if !invoked[id] {
			an = append(an, Anomaly{"phantom", 0, fmt.Sprintf("transfer %s applied but never invoked", id)})
		}
	}
	if fmt.Sprint(fin.Bal) != fmt.Sprint(want) {
		an = append(an, Anomaly{"balances", 0, fmt.Sprintf("final balances %v, want %v from the applied transfers", fin.Bal, want)})
	}
	return an, unkApplied, unkNot
}
